"""Fleet scale: 100k series through the embedded broker and the service, on this machine.

    python bench/fleet_scale.py [--series 100000] [--features 8] [--window 32] [--steps 4]
                                [--half-steps 2] [--batch 8192] [--out bench/results/fleet_scale.md]

The service runs as users run it, in its own process (``python -m stream_vae run``), and is
watched from outside through its metrics endpoint and the group's committed offsets. The fleet
is 1,000 generated machines (no faults) repeated under 100 ids each; the model learns the past
of 50 of them (10 epochs), and the stream is the future of all, so most windows look normal to
it, as in a real fleet. Messages are the contract's JSON, values keyed by feature.

1. backlog: every series' first W - 1 points (buffers filling) and then --steps points (one
   window each, stride 1) are produced before the service starts; it then consumes as fast as
   it can. Windows/s is measured from its ``windows_scored`` counter, polled every 0.5 s, from
   the first window scored to the last of the backlog; the records before the first window are
   the warm-up.
2. core: the same model + scorer without Kafka (``Detector.infer`` + ``Scorer.update`` on
   batches of --batch windows), in this process, before the service starts and after the
   backlog, while the service idles; the median of both is the core rate of the ratio.
3. half load: --half-steps more points per series at half the saturated rate, sent in chunks of
   200; latency is a chunk acknowledged by the broker -> the group's committed offsets (summed
   over partitions, polled every 50 ms) pass it; commit lag is the largest number of records
   sent and not committed.
RSS is the service's ``process_resident_memory_bytes``: at the first window (every series
held), at the end of the backlog, and at the end. Public tools only (time, urllib, the
prometheus text parser).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.config import Settings, load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.runtime.live import DetectorOptions, LiveModel, build_scorer
from stream_vae.service.kafka import ensure_topics
from stream_vae.service.replay import replay
from stream_vae.storage.artifact import Artifact
from stream_vae.storage.files import save_artifact
from stream_vae.storage.tabular import Table
from stream_vae.training.build import train_artifact
from stream_vae.training.fit import make_windows

ROOT = Path(__file__).resolve().parent.parent
BASE_SERIES = 1000  # distinct series generated; the fleet repeats them, each under its own id
TRAIN_SERIES, TRAIN_STEPS = 50, 400  # the model learns the past of the first 50


def core_rate(art: Artifact, settings: Settings, x: np.ndarray, seconds: float = 1.0) -> float:
    """Model + scorer windows/s on batches of the windows ``x`` (n, W, d) (median of 3)."""
    live = LiveModel(art, DetectorOptions.from_settings(settings.service))
    n = len(x)
    keys = [f"s{i}" for i in range(n)]
    ts = np.arange(n, dtype=np.float64)
    det, scorer = live.detector, build_scorer(art, settings.alerts)
    scorer.update(keys, ts, det.infer(x))  # warm-up
    rates = []
    for _ in range(3):
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            scorer.update(keys, ts, det.infer(x))
            calls += 1
        rates.append(calls * n / (time.perf_counter() - t0))
    return statistics.median(rates)


class Metrics:
    """The service's /metrics, parsed: the values the bench follows."""

    def __init__(self, url: str) -> None:
        self.url = url

    def read(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url, timeout=5) as r:
            text = r.read().decode()
        out = {"windows": 0.0, "records": 0.0, "lag": 0.0, "rss": 0.0}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "stream_vae_windows_scored_total":
                    out["windows"] += s.value
                elif s.name == "stream_vae_records_in_total":
                    out["records"] += s.value
                elif s.name == "stream_vae_consumer_lag":
                    out["lag"] += s.value
                elif s.name == "process_resident_memory_bytes":
                    out["rss"] = s.value
        return out


def step_batch(base: np.ndarray, n_series: int, step: int, t0: float) -> RecordBatch:
    """Every series' point at ``step``: series i repeats base series i % BASE_SERIES."""
    ids = tuple(f"m{i:06d}" for i in range(n_series))
    values = base[np.arange(n_series) % len(base), step]  # (n, d)
    return RecordBatch(ids, np.full(n_series, t0 + 60.0 * step), values.astype(np.float32))


def step_batches(base: np.ndarray, n_series: int, steps: range, t0: float) -> RecordBatch:
    """Several steps, step after step (each step: every series)."""
    parts = [step_batch(base, n_series, s, t0) for s in steps]
    return RecordBatch(
        tuple(k for p in parts for k in p.series_ids),
        np.concatenate([p.ts for p in parts]),
        np.concatenate([p.values for p in parts]),
    )


async def poll_committed(
    settings: Settings, partitions: int, polls: list[tuple[float, int]], done: asyncio.Event
) -> None:
    """Append (time, the group's committed offsets summed over partitions) every 50 ms until
    ``done``, through one consumer; a poll is stamped when its answer came (a commit it sees
    happened by then)."""
    k = settings.kafka
    c = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False
    )
    await c.start()
    try:
        tps = [TopicPartition(k.input_topics[0], p) for p in range(partitions)]
        while not done.is_set():
            total = sum([await c.committed(tp) or 0 for tp in tps])
            polls.append((time.perf_counter(), total))
            await asyncio.sleep(0.05)
    finally:
        await c.stop()


def start_service(model: Path, settings: Settings, log: Path, args: Any) -> subprocess.Popen[bytes]:
    k = settings.kafka
    env = {key: v for key, v in os.environ.items() if not key.startswith("STREAM_VAE_")}
    env.update(
        {
            "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "STREAM_VAE_KAFKA__GROUP_ID": k.group_id,
            "STREAM_VAE_KAFKA__INPUT_TOPICS": _json.dumps(list(k.input_topics)).decode(),
            "STREAM_VAE_KAFKA__ALERT_TOPIC": k.alert_topic,
            "STREAM_VAE_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
            "STREAM_VAE_SERVICE__DEVICE": "cpu",
            "STREAM_VAE_SERVICE__METRICS_PORT": "0",
            "STREAM_VAE_SERVICE__MAX_BATCH_RECORDS": str(args.batch),
            "STREAM_VAE_SERVICE__MAX_SERIES": str(args.series),
            "STREAM_VAE_SERVICE__TORCH_THREADS": str(args.threads),
            "STREAM_VAE_LOG__LEVEL": "INFO",
        }
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stream_vae", "run", "--model", str(model)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def metrics_url(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while (m := re.search(rb"metrics on (http://[\d.]+:\d+/metrics)", log.read_bytes())) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.2)
    return m.group(1).decode()


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> dict[str, Any]:
    d, w = args.features, args.window
    n_steps = w - 1 + args.steps + args.half_steps
    # one fleet, no faults: the model learns the past of some of its machines, and the stream
    # is the future of all of them, so that the windows look normal to it (as most do in a
    # real fleet: the alert path is not what is measured)
    fleet = generate_fleet(BASE_SERIES, d, TRAIN_STEPS + n_steps, seed=0, n_anomalies_per_series=0)
    past, future = fleet.split(TRAIN_STEPS)
    base = future.values  # (BASE_SERIES, steps, d)
    tag = uuid.uuid4().hex[:6]
    settings = load_settings(
        env={},
        window={"size": w},
        train={"epochs": 10, "torch_threads": args.threads},
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"scale-{tag}",
            "input_topics": [f"scale-{tag}"],
            "topic_partitions": args.partitions,
        },
        service={"device": "cpu", "torch_threads": args.threads, "max_batch_records": args.batch},
    )
    ids = past.series_ids[:TRAIN_SERIES]
    train = RecordBatch(
        ids * TRAIN_STEPS,  # step after step
        np.repeat(past.ts, TRAIN_SERIES),
        past.values[:TRAIN_SERIES].transpose(1, 0, 2).reshape(-1, d),
    )
    art = train_artifact(train, fleet.feature_names, settings, device="cpu", progress=False)
    model = save_artifact(art, tmp / "model")
    k = settings.kafka
    topic = k.input_topics[0]
    await ensure_topics(k, [topic, k.alert_topic, k.dead_letter_topic])
    t0 = float(future.ts[0])
    names = fleet.feature_names
    x = make_windows(step_batches(base, BASE_SERIES, range(n_steps), t0), w).values
    x = np.resize(x, (args.batch, w, d))  # the core's batches: real windows of the stream
    n_backlog = args.series * (w - 1 + args.steps)
    sent_at = time.perf_counter()
    for step in range(w - 1 + args.steps):
        batch = step_batch(base, args.series, step, t0)
        await replay(Table(batch, names), k, topic, create_topic=False, chunk=5000)
    produce_s = time.perf_counter() - sent_at
    print(f"backlog of {n_backlog:,} records produced in {produce_s:.0f} s", flush=True)

    cores = [core_rate(art, settings, x)]
    print(f"core: {cores[0]:,.0f} windows/s", flush=True)
    log = tmp / "service.log"
    proc = start_service(model, settings, log, args)
    try:
        metrics = Metrics(metrics_url(proc, log))
        samples: list[tuple[float, dict[str, float]]] = []
        while True:
            m = metrics.read()
            samples.append((time.perf_counter(), m))
            if m["records"] >= n_backlog:
                break
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:])
            await asyncio.sleep(0.5)
        scored = [(t, m) for t, m in samples if m["windows"] > 0]
        (ta, ma), (tb, mb) = scored[0], scored[-1]
        sat = (mb["windows"] - ma["windows"]) / (tb - ta)
        rss_first, rss_backlog = ma["rss"], mb["rss"]
        print(f"service at saturation: {sat:,.0f} windows/s", flush=True)
        await asyncio.sleep(2.0)  # let the last commit land
        cores.append(core_rate(art, settings, x))
        core = statistics.median(cores)

        # half load: paced, in chunks; latency from the committed offsets
        rate = 0.5 * sat
        acked: list[tuple[float, int]] = []
        base_sent = n_backlog
        polls: list[tuple[float, int]] = []
        done = asyncio.Event()

        poller = asyncio.create_task(poll_committed(settings, args.partitions, polls, done))
        rss_half = []
        for step in range(w - 1 + args.steps, n_steps):
            batch = step_batch(base, args.series, step, t0)
            offset = base_sent

            def on_sent(n: int, offset: int = offset) -> None:
                acked.append((time.perf_counter(), offset + n))

            await replay(
                Table(batch, names), k, topic, rate=rate, create_topic=False, chunk=200,
                on_sent=on_sent,
            )  # fmt: skip
            base_sent += len(batch)
            rss_half.append(metrics.read()["rss"])
        deadline = time.monotonic() + 120
        while (not polls or polls[-1][1] < base_sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        done.set()
        await poller
        end = metrics.read()
    finally:
        proc.terminate()
        proc.wait(30)
    pt = np.array([p[0] for p in polls])
    pc = np.array([p[1] for p in polls])
    lat, lag = [], 0
    for t_ack, n in acked:
        i = int(np.searchsorted(pc, n))  # the first poll that saw it committed
        if i < len(pc):
            lat.append(max(pt[i] - t_ack, 0.0))
        j = int(np.searchsorted(pt, t_ack))
        if j < len(pc):
            lag = max(lag, n - int(pc[j]))
    lat_a = np.array(lat)
    return {
        "core": core,
        "cores": cores,
        "sat": sat,
        "rate": rate,
        "p50": float(np.percentile(lat_a, 50)) if len(lat_a) else float("nan"),
        "p99": float(np.percentile(lat_a, 99)) if len(lat_a) else float("nan"),
        "lag": lag,
        "rss": (rss_first, rss_backlog, max(rss_half or [0.0]), end["rss"]),
        "windows": mb["windows"] - ma["windows"],
        "produce_s": produce_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=100_000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="points per series scored at saturation")
    p.add_argument("--half-steps", type=int, default=2, help="points per series at half load")
    p.add_argument("--batch", type=int, default=8192, help="service.max_batch_records")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        r = asyncio.run(run(args, broker.bootstrap_servers, Path(tmp)))
    mb = [x / 2**20 for x in r["rss"]]
    lines = [
        f"{args.series:,} series x {args.features} features, W = {args.window}, stride 1, "
        f"{args.partitions} partitions, batches of {args.batch}, {args.threads} torch threads; "
        "the broker, the producer and the service share the machine.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| core (model + scorer), windows/s (before, after) | {r['core']:,.0f} "
        f"({', '.join(f'{c:,.0f}' for c in r['cores'])}) |",
        f"| service at saturation, windows/s ({r['windows']:,.0f} windows) | {r['sat']:,.0f} "
        f"({r['sat'] / r['core']:.0%} of core) |",
        f"| half load, records/s | {r['rate']:,.0f} |",
        f"| commit latency p50 / p99 at half load, ms | {r['p50'] * 1e3:.0f} / "
        f"{r['p99'] * 1e3:.0f} |",
        f"| commit lag at half load, most records behind | {r['lag']:,} |",
        f"| service RSS, MiB: first window / end of backlog / half load (max) / end | "
        f"{mb[0]:,.0f} / {mb[1]:,.0f} / {mb[2]:,.0f} / {mb[3]:,.0f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

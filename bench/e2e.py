"""End-to-end throughput and latency through a real Kafka-compatible broker, next to the bare
core in the same run.

    python bench/e2e.py [--series 1000] [--features 8] [--window 64] [--steps 200]

1. core: Detector.infer + Scorer.update on batches of windows (the service's work without
   Kafka), windows/s;
2. saturation: the records of --series x --steps are produced to a topic first, then the service
   consumes them as fast as it can; windows/s over the phase where windows are scored;
   1 and 2 alternate --repeats times (this machine's speed drifts; both see the same drift) and
   the medians are reported;
3. half load: a producer sends at half the saturated rate for --seconds; per-record latency is
   Kafka append time → the record's batch published, acknowledged and committed; p50/p99.
   ``--breakdown`` splits it into three stages: append → the batch fetched and decoded, fetched →
   its step begins (the batch before it still being scored), the step itself (windows, forward
   pass, scores, then its tail: publish, acks, commit).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import uuid
from typing import Any

import numpy as np
import torch

from stream_vae.broker import EmbeddedBroker
from stream_vae.config import load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.runtime.live import build_scorer
from stream_vae.service import Service, SourceBatch
from stream_vae.service.kafka import ensure_topics
from stream_vae.service.replay import replay
from stream_vae.service.source import KafkaSource
from stream_vae.storage.tabular import Table
from stream_vae.training.build import train_artifact


def _core_rate(service: Service, n: int, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    live = service.live
    w, d = live.artifact.vae_config.window, live.artifact.vae_config.n_features
    x = rng.normal(size=(n, w, d)).astype(np.float32)
    keys = [f"s{i}" for i in range(n)]
    ts = np.arange(n, dtype=np.float64)
    # the service's detector; a scorer of its own (the service's keeps its series' state)
    det, scorer = live.detector, build_scorer(live.artifact, service.settings.alerts)
    scorer.update(keys, ts, det.infer(x))  # warm-up
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            scorer.update(keys, ts, det.infer(x))
            calls += 1
        rates.append(calls * n / (time.perf_counter() - t0))
    return statistics.median(rates)


async def _produce(settings, topic: str, batch: RecordBatch, names, rate: float | None) -> None:
    # paced sends go out in small groups, as a fleet of sensors would send them
    table = Table(batch, tuple(names))
    await replay(
        table,
        settings.kafka,
        topic,
        rate=rate,
        create_topic=False,
        chunk=2000 if rate is None else 50,
    )


class _Stages:
    """``--breakdown``: when each batch was fetched and when its step began, by wrapping the
    source's ``next_batch`` and the service's ``_step`` (a bench's view, not the service's)."""

    def __init__(self, service: Service) -> None:
        self.fetched: dict[int, float] = {}
        self.started: dict[int, float] = {}
        self.rows: list[tuple[np.ndarray, float, float, float]] = []
        next_batch, step = KafkaSource.next_batch, service._step

        async def timed_next_batch(source: KafkaSource) -> SourceBatch:
            batch = await next_batch(source)
            self.fetched[id(batch)] = time.time()
            return batch

        async def timed_step(consumer: Any, batch: SourceBatch) -> None:
            self.started[id(batch)] = time.time()
            await step(consumer, batch)

        KafkaSource.next_batch = timed_next_batch  # type: ignore[method-assign]
        service._step = timed_step  # type: ignore[method-assign]

    def observe(self, batch: SourceBatch, done: float) -> None:
        key = id(batch)
        self.rows.append((batch.append_ts, self.fetched[key], self.started[key], done))

    def report(self) -> dict[str, tuple[float, float]]:
        append = np.concatenate([a for a, *_ in self.rows])
        fetched, started, done = (
            np.concatenate([np.full(len(r[0]), r[i]) for r in self.rows]) for i in (1, 2, 3)
        )
        stages = {
            "append → fetched and decoded": fetched - append,
            "fetched → its step begins": started - fetched,
            "the step (windows, forward pass, scores, publish, commit)": done - started,
        }
        out = {k: (float(np.median(v)), float(np.percentile(v, 99))) for k, v in stages.items()}
        out["records per batch (median, batches)"] = (
            float(np.median([len(a) for a, *_ in self.rows])),
            float(len(self.rows)),
        )
        return out


async def _run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    fleet = generate_fleet(
        args.series,
        args.features,
        args.repeats * args.steps + args.half_steps,
        seed=0,
        n_anomalies_per_series=0,
    )
    train = generate_fleet(20, args.features, 400, seed=1, n_anomalies_per_series=0)
    tag = uuid.uuid4().hex[:6]
    settings = load_settings(
        env={},
        window={"size": args.window},
        train={"epochs": 1, "torch_threads": args.threads},
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"bench-{tag}",
            "input_topics": [f"bench-{tag}"],
            "topic_partitions": 4,
            "session_timeout_ms": 6000,
        },
        service={
            "metrics_port": None,
            "device": "cpu",
            "torch_threads": args.threads,
            "max_batch_records": args.batch,
            "max_wait_ms": args.max_wait_ms,
        },
    )
    s, t, v, _ = train.interleaved()
    art = train_artifact(
        RecordBatch(tuple(s), t, v), fleet.feature_names, settings, device="cpu", progress=False
    )
    topic = settings.kafka.input_topics[0]
    await ensure_topics(
        settings.kafka, [topic, settings.kafka.alert_topic, settings.kafka.dead_letter_topic]
    )
    parts = []
    rest = fleet
    for _ in range(args.repeats):
        sat, rest = rest.split(args.steps)
        parts.append(sat)
    half = rest

    def batch_of(f: object) -> RecordBatch:
        s, t, v, _ = f.interleaved()  # type: ignore[attr-defined]
        return RecordBatch(tuple(s), t, v)

    half_batch = batch_of(half)
    gc.freeze()  # as `stream-vae run` does before its service starts
    service = Service(settings, art)
    stages = _Stages(service) if args.breakdown else None
    samples: list[tuple[float, int]] = []
    latencies: list[np.ndarray] = []
    measuring = [False]

    def observe(batch: SourceBatch, done: float) -> None:
        samples.append((done, service.accounting()["windows"]))
        if measuring[0] and len(batch.append_ts):
            latencies.append(done - batch.append_ts)
            if stages is not None:
                stages.observe(batch, done)

    service.batch_observers.append(observe)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    cores, sats, consumed, sat_windows = [], [], 0, 0
    for part in parts:
        cores.append(_core_rate(service, args.batch, repeats=3))
        sat_batch = batch_of(part)
        await _produce(settings, topic, sat_batch, fleet.feature_names, None)  # backlog first
        consumed += len(sat_batch)
        samples.clear()
        while service.accounting()["consumed"] < consumed:
            await asyncio.sleep(0.05)
        # saturated rate: from the first scored window to the last of this backlog
        scored = [(t, w) for t, w in samples if w > samples[0][1]]
        (t0, w0), (t1, w1) = scored[0], scored[-1]
        sats.append((w1 - w0) / (t1 - t0))
        sat_windows += w1 - w0
    core, sat_rate = statistics.median(cores), statistics.median(sats)
    # half load: one window per record in steady state, so records/s = windows/s
    measuring[0] = True
    rate = 0.5 * sat_rate
    await _produce(settings, topic, half_batch, fleet.feature_names, rate)
    while service.accounting()["consumed"] < consumed + len(half_batch):
        await asyncio.sleep(0.05)
    stop.set()
    await task
    lat = np.concatenate(latencies)
    return {
        "core": core,
        "sat": sat_rate,
        "rate": rate,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "n_lat": float(len(lat)),
        "sat_windows": float(sat_windows),
        "ratios": [s / c for s, c in zip(sats, cores, strict=True)],
        "stages": stages.report() if stages is not None else {},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="steps per series, saturation phase")
    p.add_argument("--half-steps", type=int, default=60, help="steps per series, half load")
    p.add_argument("--batch", type=int, default=2048, help="service.max_batch_records")
    p.add_argument("--max-wait-ms", type=int, default=50, help="service.max_wait_ms")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="core/saturation pairs")
    p.add_argument("--breakdown", action="store_true", help="half-load latency by stage")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with EmbeddedBroker() as broker:
        r = asyncio.run(_run(args, broker.bootstrap_servers))
    print(
        f"{args.series} series x {args.features} features, W={args.window}, "
        f"batches of {args.batch} (max wait {args.max_wait_ms} ms), {args.threads} torch threads"
    )
    print("| measure | value |\n|---|---:|")
    print(f"| core (model + scorer), windows/s | {r['core']:,.0f} |")
    print(
        f"| service at saturation, windows/s ({r['sat_windows']:,.0f} windows) | "
        f"{r['sat']:,.0f} ({r['sat'] / r['core']:.0%} of core) |"
    )
    print(f"| each pair's ratio, service / core | {', '.join(f'{x:.0%}' for x in r['ratios'])} |")
    print(f"| half load, records/s | {r['rate']:,.0f} |")
    print(
        f"| latency p50 / p99 at half load, ms ({r['n_lat']:,.0f} records) | "
        f"{r['p50'] * 1000:.0f} / {r['p99'] * 1000:.0f} |"
    )
    for stage, (a, b) in r["stages"].items():
        if stage.startswith("records"):
            print(f"| half load: {stage} | {a:,.0f} ({b:,.0f} batches) |")
        else:
            print(f"| half load: {stage}, p50 / p99 ms | {a * 1000:.0f} / {b * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

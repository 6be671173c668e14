"""The fault suite, long form: a long stream through replicas of ``stream-vae run`` while faults
are injected on a seeded random schedule, then checked against a run without faults.

    python bench/chaos.py [--minutes 30] [--seed 0] [--rate 100] [--replicas 2] [--out report.json]

Set-up: S3 (moto's server, a child process) holding the durable storage of an embedded Tansu
broker; a small model trained on a generated fleet; its test stream repeated, each copy later in
time, produced at ``--rate`` records/s in chunks every ``chunk_s``; ``--replicas`` service
processes in one consumer group, restarted like an orchestrator would if one exits unexpectedly.

Faults, one every ``gap_s`` (10-20 s), drawn from the seed:

- ``join``: a replica joins, and leaves (SIGTERM) 10-20 s later: two rebalances;
- ``kill``: SIGKILL of a random replica, restarted 1-3 s later: its partitions are taken over
  from the committed offsets, and what it had processed since is processed again;
- ``broker``: the broker stops and, 1-3 s later, starts again on the same port and storage;
- ``poison``: one bad record of each kind (:data:`POISON`), each with its expected dead-letter
  reason; the finite absurd value is not dead-lettered but scored, under a series of its own.

Not here: a retrain worker killed (tests/test_retrain.py has its own test). A promoted retrain
changes ``model_version`` and so every later ``alert_id``, which breaks the exact comparison.

Checks, at the end (the producer stopped, the group caught up, the replicas stopped):

1. alerts: every ``(alert_id, event)`` that :class:`LiveModel` raises on the same stream,
   uninterrupted, arrived at least once; none arrived that it does not raise (duplicates are
   counted: at-least-once repeats them with the same ``alert_id``);
2. accounting: the group's committed offset is each input partition's log end (from the
   producer's acks: the embedded broker answers ListOffsets off by a batch); every replica's
   ``/accounting`` (its final one, or the last polled before a SIGKILL) has consumed = scored +
   buffered + late + dead_letters; every poison record was dead-lettered, by its source
   offset, with its reason, and nothing else was;
3. memory: each replica process's RSS in the last third of the stream stays within
   :data:`RSS_GROWTH` × (its largest RSS in the first third) + :data:`RSS_SLACK_MIB` (a
   process that did not live through both thirds, killed or started within the stream, has
   nothing to compare);
4. the broker: every acked input record is read back from the log at its offset with its
   bytes (a record an acked write lost across a broker restart is the broker's failure, not
   the service's, and would show up as alerts of windows the stream never held).

The exit status is 1 if a check failed (the working directory, with every replica's log, is
then kept). ``tests/faults/test_chaos.py`` runs :func:`run` for under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.cli.main import main as cli
from stream_vae.config import KafkaSettings
from stream_vae.core.records import RecordBatch, encode
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.service.kafka import ensure_topics, make_producer
from stream_vae.storage.files import load_artifact
from stream_vae.storage.tabular import read_table

__all__ = ["FAULTS", "POISON", "run"]

log = logging.getLogger("chaos")

FAULTS = ("join", "kill", "broker", "poison")
# Kind of bad record → the dead-letter reason it must get (None: valid, scored, not dead-lettered).
POISON: dict[str, str | None] = {
    "bad_json": "bad_json",
    "missing_field": "missing_field",
    "wrong_arity": "wrong_arity",
    "unknown_feature": "unknown_feature",
    "bad_timestamp": "bad_timestamp",
    "nan_value": "nan_value",
    "oversized": "oversized",
    "implausible_timestamp": "implausible_timestamp",
    "absurd_value": None,
}
# A replica's steady RSS is flat: its state is bounded by the fleet (a few kB per series), and
# its buffers by the batch and fetch limits. The margin absorbs what moves without a leak: glibc
# arenas of the inference thread, a 1 MiB poison record and its dead letter, a replay burst
# after a takeover, torch's allocator caching a larger batch. A leak of ~1 kB per record (keeping
# records, alerts or offsets) outgrows it within the 30-minute form at 100 records/s.
RSS_GROWTH = 1.5
RSS_SLACK_MIB = 50.0
_BUCKET = "tansu"
# Tansu on S3 lists a partition's objects (one per produced batch) to serve a fetch, and
# answers empty when that takes longer than the fetch's max wait; moto lists ~0.1 ms per object.
# Hence chunked produce (few objects), a long fetch wait, and rare replay-start checkpoints
# (each takeover reads the state topic's objects one fetch at a time).
_SERVICE_ENV = {
    "STREAM_VAE_SERVICE__MAX_WAIT_MS": "1000",
    "STREAM_VAE_SERVICE__CHECKPOINT_INTERVAL_S": "30",
    "STREAM_VAE_SERVICE__TORCH_THREADS": "1",  # several replicas share the machine's cores
    "STREAM_VAE_SERVICE__DEVICE": "cpu",
    "STREAM_VAE_SERVICE__METRICS_PORT": "0",  # a free port, printed in the log
    "STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS": "6000",  # a SIGKILLed member is noticed in 6 s
}
_POLL_S = 2.0  # /accounting and RSS, per replica
_FETCH_WAIT_MS = 2000  # the harness's own consumers (see _SERVICE_ENV)
_TINY_TOML = """
[window]
size = 16
[model]
hidden = 16
latent = 4
[train]
epochs = 4
batch_size = 64
lr = 0.005
[scoring]
target_fpr = 0.01
"""


# -- set-up ----------------------------------------------------------------------------------
@contextlib.contextmanager
def s3_server(workdir: Path, timeout_s: float = 60.0) -> Iterator[dict[str, str]]:
    """moto's S3 in a child process (its listing is CPU-bound: off this process's GIL) with one
    bucket; yields the environment Tansu needs to store there."""
    for _ in range(3):  # a free port can be taken before moto binds it
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        endpoint = f"http://127.0.0.1:{port}"
        with (workdir / "moto.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                # Tansu reads one page of a listing: make it every object
                env={**os.environ, "MOTO_S3_DEFAULT_MAX_KEYS": "10000000"},
            )
        try:
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    put = urllib.request.Request(f"{endpoint}/{_BUCKET}", method="PUT")
                    urllib.request.urlopen(put, timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                continue
            yield {
                "AWS_ACCESS_KEY_ID": "chaos",
                "AWS_SECRET_ACCESS_KEY": "chaos",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT": endpoint,
                "AWS_ALLOW_HTTP": "true",
            }
            return
        finally:
            proc.kill()
            proc.wait(timeout=10)
    raise RuntimeError(f"moto's S3 server did not start: {(workdir / 'moto.log').read_text()}")


def make_model(workdir: Path, n_series: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """A small model trained through the CLI on a generated fleet; returns (model, test.csv)."""
    cfg = workdir / "tiny.toml"
    cfg.write_text(_TINY_TOML)
    data, model = workdir / "data", workdir / "model"
    gen = ["generate", "--out", str(data), "--series", str(n_series), "--features", "3"]
    if cli([*gen, "--steps", "500", "--seed", str(seed)]) != 0:
        raise RuntimeError("generate failed")
    train = ["--config", str(cfg), "train", "--data", str(data / "train.csv")]
    if cli([*train, "--out", str(model), "--no-progress", "--device", "cpu"]) != 0:
        raise RuntimeError("train failed")
    return model, data / "test.csv"


def long_stream(batch: RecordBatch, n: int) -> RecordBatch:
    """``n`` records: ``batch`` over and over, each copy later by the span of the batch plus
    one step (every series stays in time order)."""
    step = float(np.diff(np.unique(batch.ts)).min())
    span = float(batch.ts.max() - batch.ts.min()) + step
    reps = -(-n // len(batch))
    ts = np.concatenate([batch.ts + rep * span for rep in range(reps)])[:n]  # (n,)
    values = np.tile(batch.values, (reps, 1))[:n]  # (n, d)
    return RecordBatch((batch.series_ids * reps)[:n], ts, values)


@dataclass(frozen=True, slots=True)
class Poison:
    kind: str
    key: bytes | None
    value: bytes


def poison_burst(n: int, names: Sequence[str], ts: float) -> list[Poison]:
    """One record of each :data:`POISON` kind, under series ``poison-<n>`` (not in the fleet);
    ``ts`` is a recent stream time (an old one is fine too: a new series has no past)."""
    sid = f"poison-{n}"
    ok = dict.fromkeys(names, 1.0)
    d = len(names)

    def body(**fields: Any) -> bytes:
        return _json.dumps({"series_id": sid, "ts": ts, "values": ok, **fields})

    values: dict[str, tuple[bytes | None, bytes]] = {
        "bad_json": (sid.encode(), b"{not json"),
        "missing_field": (None, _json.dumps({"ts": ts, "values": ok})),
        "wrong_arity": (sid.encode(), body(values=[1.0] * (d + 1))),
        "unknown_feature": (sid.encode(), body(values={**ok, "volts": 2.0})),
        "bad_timestamp": (sid.encode(), body(ts="soon")),
        "nan_value": (sid.encode(), body(values=[0.0] * d).replace(b"[0.0", b"[NaN", 1)),
        "oversized": (sid.encode(), body(values=[1.0] * 300_000)),  # ~1.2 MB > 1 MiB
        "implausible_timestamp": (sid.encode(), body(ts=1e300)),
        "absurd_value": (sid.encode(), body(values=[1e20] * d)),
    }
    return [Poison(kind, *values[kind]) for kind in POISON]


# -- producing -------------------------------------------------------------------------------
class Sender:
    """Sends records and retries what failed until each landed at least once; a chunk is acked
    whole before the next, so each partition keeps the send order (a retried record that did
    land is a duplicate: late, and changing nothing). The log end offsets come from the acks."""

    def __init__(self, k: KafkaSettings) -> None:
        # one batch per partition per chunk: a chunk fails or lands per partition as a whole
        self._producer = make_producer(k, max_batch_size=1 << 20)
        self.log_end: Counter[tuple[str, int]] = Counter()
        self.n_resent = 0
        # (topic, partition, offset) → the bytes acked there: the log is read back at the end, to
        # tell records the broker lost (an acked write not kept across a restart) from the service's
        self.acked: dict[tuple[str, int, int], bytes] = {}

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(
        self,
        topic: str,
        items: Sequence[tuple[bytes | None, bytes]],
        partition: int | None = None,
        *,
        stream: bool = True,
    ) -> list[tuple[int, int]]:
        """``(key, value)`` items → the (partition, offset) each first landed at. ``stream``
        False: a harness marker, not counted in the log ends nor checked in the read-back."""
        placed: dict[int, tuple[int, int]] = {}
        while len(placed) < len(items):
            todo = [i for i in range(len(items)) if i not in placed]
            futures: dict[int, asyncio.Future[Any]] = {}
            try:
                for i in todo:
                    key, value = items[i]
                    futures[i] = await self._producer.send(
                        topic, value, key=key, partition=partition
                    )
                await asyncio.wait(futures.values(), timeout=90)
            except KafkaError as exc:
                log.info("send failed (%s); retrying", exc)
            for i, fut in futures.items():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    md = fut.result()
                    placed[i] = (md.partition, md.offset)
                    if stream:
                        tp = (topic, md.partition)
                        self.log_end[tp] = max(self.log_end[tp], md.offset + 1)
                        self.acked[(topic, md.partition, md.offset)] = items[i][1]
                else:  # a late success lands as a duplicate before the retry
                    fut.add_done_callback(_retrieve)
            if len(placed) < len(items):
                self.n_resent += len(items) - len(placed)
                await asyncio.sleep(0.5)
        return [placed[i] for i in range(len(items))]


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # seen: no "exception was never retrieved" at exit


@dataclass
class Produced:
    """What the producer sent: the fleet records (a prefix of the stream) and the poison."""

    n_fleet: int = 0
    last_ts: float = 0.0
    out_of_order: int = 0  # a fleet record that landed before an earlier one of its series
    poison: list[tuple[Poison, int, int]] = field(default_factory=list)  # (record, part, offset)
    _last: dict[str, int] = field(default_factory=dict)


async def produce(c: Chaos, stream: RecordBatch, plan: Plan) -> None:
    """The stream at ``plan.rate`` records/s for the run's duration, a chunk every
    ``plan.chunk_s``."""
    out, rate, chunk_s, topic = c.produced, plan.rate, plan.chunk_s, c.k.input_topics[0]
    loop = asyncio.get_running_loop()
    t0, n_chunks = loop.time(), 0
    while n_chunks * chunk_s < plan.duration_s:
        n_chunks += 1
        due = min(len(stream), int(n_chunks * chunk_s * rate))
        part = stream.slice(out.n_fleet, due)
        items = [(r.series_id.encode(), encode(r, c.names)) for r in part.records()]
        placed = await c.sender.send(topic, items)
        for sid, (_, offset) in zip(part.series_ids, placed, strict=True):
            if offset <= out._last.get(sid, -1):
                out.out_of_order += 1
            out._last[sid] = offset
        out.n_fleet = due
        if due:
            out.last_ts = float(stream.ts[due - 1])
        # behind (a broker restart), the next chunks go at once
        await asyncio.sleep(max(0.0, t0 + n_chunks * chunk_s - loop.time()))


# -- replicas --------------------------------------------------------------------------------
@dataclass
class Replica:
    """One service process; a slot is a place the orchestrator keeps filled."""

    slot: int
    popen: subprocess.Popen[bytes]
    log: Path
    url: str | None = None
    accounting: dict[str, int] | None = None  # the last polled
    final: dict[str, int] | None = None  # printed at a clean stop
    end: str = ""  # "sigterm", "sigkill", "crashed"
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s into the stream, MiB)


class Replicas:
    """Starts, kills and stops service processes; restarts one that exits unexpectedly."""

    def __init__(self, model: Path, env: dict[str, str], workdir: Path) -> None:
        self.model, self.env, self.workdir = model, env, workdir
        self.all: list[Replica] = []
        self.live: dict[int, Replica] = {}
        self.wanted: set[int] = set()  # slots kept running
        self.n_restarts = 0  # unexpected exits restarted
        self.t_stream = 0.0  # monotonic time the stream started (RSS samples are relative)

    def spawn(self, slot: int) -> Replica:
        log_path = self.workdir / f"replica{slot}-{sum(r.slot == slot for r in self.all)}.log"
        cmd = [sys.executable, "-m", "stream_vae", "-v", "run", "--model", str(self.model)]
        with log_path.open("wb") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        r = Replica(slot, popen, log_path)
        self.all.append(r)
        self.live[slot] = r
        self.wanted.add(slot)
        return r

    def kill(self, slot: int) -> None:
        self.wanted.discard(slot)
        r = self.live.pop(slot)
        r.end = "sigkill"
        r.popen.kill()
        r.popen.wait(timeout=30)

    async def stop(self, slot: int, timeout_s: float = 60.0) -> None:
        """SIGTERM: the replica drains, commits, leaves the group and prints its accounting."""
        self.wanted.discard(slot)
        r = self.live.pop(slot)
        r.end = "sigterm"
        r.popen.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(r.popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("replica %d did not stop within %.0f s; killing it", slot, timeout_s)
            r.popen.kill()
            await asyncio.to_thread(r.popen.wait, 30)
        m = re.search(r"^stopped: (.*)$", r.log.read_text(errors="replace"), re.M)
        if m:
            r.final = {k: int(v) for k, v in (kv.rsplit(" ", 1) for kv in m[1].split(", "))}

    async def watch(self) -> None:
        """Restart a wanted replica that exited by itself (an orchestrator's job)."""
        while True:
            for slot in sorted(self.wanted):
                r = self.live.get(slot)
                if r is not None and r.popen.poll() is not None:
                    r.end = "crashed"
                    self.n_restarts += 1
                    log.warning(
                        "replica %s exited (%s); restarting", r.log.name, r.popen.returncode
                    )
                    self.spawn(slot)
            await asyncio.sleep(0.5)

    async def poll(self) -> None:
        """Every replica's /accounting and RSS (sampled once it serves: not while importing)."""
        while True:
            for r in list(self.live.values()):
                got = await asyncio.to_thread(_accounting, r)
                if got is not None:
                    r.accounting = got
                    with contextlib.suppress(OSError, ValueError):
                        r.rss.append((time.monotonic() - self.t_stream, _rss_mib(r.popen.pid)))
            await asyncio.sleep(_POLL_S)

    def close(self) -> None:
        for r in self.live.values():
            r.popen.kill()
        for r in self.live.values():
            r.popen.wait(timeout=30)
        self.live.clear()


def _accounting(r: Replica) -> dict[str, int] | None:
    if r.url is None:
        m = re.search(rb"metrics on (http://[\d.]+:\d+)/", r.log.read_bytes())
        if m is None:
            return None
        r.url = m[1].decode() + "/accounting"
    try:
        with urllib.request.urlopen(r.url, timeout=2) as resp:
            out: dict[str, int] = _json.loads(resp.read())
            return out
    except (OSError, ValueError):
        return None


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    if m is None:
        raise ValueError(f"no VmRSS for pid {pid}")
    return int(m[1]) / 1024


# -- the run ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    """What one run does (see :func:`run`)."""

    minutes: float
    seed: int
    rate: float  # records/s
    replicas: int
    partitions: int
    kinds: tuple[str, ...] | None  # the faults in this order (cycled); None: drawn
    gap_s: tuple[float, float]  # between two faults
    stay_s: tuple[float, float]  # a joiner's stay
    chunk_s: float  # the producer's period (one stored batch per partition and chunk)

    @property
    def duration_s(self) -> float:
        return self.minutes * 60


@dataclass
class Chaos:
    """Everything one run holds while it runs."""

    k: KafkaSettings
    broker: EmbeddedBroker
    sender: Sender
    replicas: Replicas
    names: tuple[str, ...]
    produced: Produced = field(default_factory=Produced)
    faults: Counter[str] = field(default_factory=Counter)
    fault_log: list[str] = field(default_factory=list)
    pending: set[asyncio.Task[None]] = field(default_factory=set)  # joiners' leaves
    leave_now: asyncio.Event = field(default_factory=asyncio.Event)  # the stream ended
    n_slots: int = 0


async def inject(c: Chaos, kind: str, rng: random.Random, stay_s: tuple[float, float]) -> None:
    """Apply one fault; a joiner's leave runs on in the background (``c.pending``)."""
    reps, t = c.replicas, time.monotonic() - c.replicas.t_stream
    c.faults[kind] += 1
    if kind == "join":
        slot, c.n_slots = c.n_slots, c.n_slots + 1
        stay = rng.uniform(*stay_s)
        reps.spawn(slot)
        c.fault_log.append(f"{t:7.1f}s join: replica {slot}, leaving after {stay:.1f} s")

        async def leave() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.leave_now.wait(), stay)
            while slot not in reps.live:  # killed meanwhile: back in a few seconds
                await asyncio.sleep(0.5)
            await reps.stop(slot)

        task = asyncio.create_task(leave())
        c.pending.add(task)
        task.add_done_callback(c.pending.discard)
    elif kind == "kill":
        if not reps.live:  # all down (the orchestrator restarts them): nothing to kill
            c.fault_log.append(f"{t:7.1f}s kill: no replica running")
            return
        slot, down = rng.choice(sorted(reps.live)), rng.uniform(1, 3)
        c.fault_log.append(f"{t:7.1f}s kill: replica {slot}, restarted after {down:.1f} s")
        reps.kill(slot)
        await asyncio.sleep(down)
        reps.spawn(slot)
    elif kind == "broker":
        down = rng.uniform(1, 3)
        c.fault_log.append(f"{t:7.1f}s broker: stopped, restarted after {down:.1f} s")
        await asyncio.to_thread(c.broker.stop)
        await asyncio.sleep(down)
        await asyncio.to_thread(c.broker.restart)
    elif kind == "poison":
        n = c.faults["poison"]
        burst = poison_burst(n, c.names, c.produced.last_ts)
        c.fault_log.append(f"{t:7.1f}s poison: {len(burst)} records (series poison-{n})")
        for p in burst:  # one by one: each its own batch, so each is placed exactly
            ((part, offset),) = await c.sender.send(c.k.input_topics[0], [(p.key, p.value)])
            c.produced.poison.append((p, part, offset))
    else:
        raise ValueError(f"unknown fault {kind!r}: one of {FAULTS}")


async def schedule(c: Chaos, plan: Plan, until: float) -> None:
    """A fault every ``plan.gap_s`` until the monotonic time ``until``: ``plan.kinds`` in order
    (cycled), or drawn from :data:`FAULTS`; every draw comes from one generator seeded with
    ``plan.seed``, in the order the faults happen."""
    rng = random.Random(plan.seed)
    i = 0
    while True:
        await asyncio.sleep(rng.uniform(*plan.gap_s))
        if time.monotonic() >= until:
            return
        kind = plan.kinds[i % len(plan.kinds)] if plan.kinds else rng.choice(FAULTS)
        i += 1
        await inject(c, kind, rng, plan.stay_s)


async def committed(k: KafkaSettings, partitions: int, timeout_s: float) -> dict[int, int]:
    """The group's committed offset of each input partition (0 if none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            return {
                p: await consumer.committed(TopicPartition(k.input_topics[0], p)) or 0
                for p in range(partitions)
            }
    finally:
        await consumer.stop()


async def wait_caught_up(c: Chaos, partitions: int, timeout_s: float) -> dict[int, int]:
    """Wait until the committed offsets reach the log ends; returns the last read."""
    topic = c.k.input_topics[0]
    want = {p: c.sender.log_end[(topic, p)] for p in range(partitions)}
    deadline = time.monotonic() + timeout_s
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(KafkaError, TimeoutError, OSError):
            got = await committed(c.k, partitions, 20)
            if got == want:
                break
        await asyncio.sleep(1.0)
    return got


async def read_topic(c: Chaos, topic: str, partitions: int) -> list[ConsumerRecord[Any, Any]]:
    """Every record of ``topic``: read up to a marker written to each partition now (end
    offsets are not to be trusted on this broker)."""
    marks = {
        p: (await c.sender.send(topic, [(b"chaos-marker", b"{}")], partition=p, stream=False))[0][1]
        for p in range(partitions)
    }
    consumer = AIOKafkaConsumer(
        bootstrap_servers=c.k.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=_FETCH_WAIT_MS,
    )
    await consumer.start()
    out: list[ConsumerRecord[Any, Any]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(300):
            left = set(tps)
            while left:
                for tp, msgs in (await consumer.getmany(*left, timeout_ms=1000)).items():
                    out.extend(m for m in msgs if m.offset < marks[tp.partition])
                    if msgs[-1].offset >= marks[tp.partition]:
                        left.discard(tp)
    finally:
        await consumer.stop()
    return out


def _report_replicas(c: Chaos, duration_s: float) -> tuple[dict[str, Any], list[str]]:
    failures: list[str] = []
    acc: Counter[str] = Counter()
    ends: Counter[str] = Counter(r.end or "running" for r in c.replicas.all)
    for r in c.replicas.all:
        seen = r.final or r.accounting
        if seen is None:
            continue
        acc.update({k: v for k, v in seen.items() if k != "alerts"})
        if seen["unaccounted"]:
            failures.append(f"{r.log.name}: accounting {seen}")
    # per process: a restarted replica starts afresh, so a slot's processes are not one series
    rss: dict[str, dict[str, float]] = {}
    for r in c.replicas.all:
        if not r.rss:
            continue
        first = [m for t, m in r.rss if 0 <= t < duration_s / 3]
        last = [m for t, m in r.rss if 2 * duration_s / 3 <= t <= duration_s]
        row = {"first": r.rss[0][1], "last": r.rss[-1][1], "max": max(m for _, m in r.rss)}
        if first and last:
            row |= {"first_third_max": max(first), "last_third_max": max(last)}
            if max(last) > RSS_GROWTH * max(first) + RSS_SLACK_MIB:
                failures.append(f"{r.log.stem}: RSS grew {max(first):.0f} → {max(last):.0f}")
        rss[r.log.stem] = {k: round(v, 1) for k, v in row.items()}
    return {"accounting": dict(acc), "processes": dict(ends), "rss_mib": rss}, failures


def _check_input_log(c: Chaos, kept: list[ConsumerRecord[Any, Any]]) -> dict[str, int]:
    """Every acked input record is in the log, at its offset, with its bytes."""
    topic = c.k.input_topics[0]
    at = {(m.partition, m.offset): m.value for m in kept}
    wanted = {(p, o): v for (t, p, o), v in c.sender.acked.items() if t == topic}
    missing = sum(1 for key in wanted if key not in at)
    changed = sum(1 for key, v in wanted.items() if key in at and at[key] != v)
    return {"acked": len(wanted), "read_back": len(at), "missing": missing, "changed": changed}


def _check_alerts(
    got: list[ConsumerRecord[Any, Any]], expected: set[tuple[str, str]]
) -> tuple[dict[str, Any], list[str]]:
    events = [_json.loads(m.value) for m in got]
    fleet = [
        (str(a["alert_id"]), str(a["event"]))
        for a in events
        if not str(a["series_id"]).startswith("poison-")
    ]
    seen = set(fleet)
    lost, invented = expected - seen, seen - expected
    out = {
        "expected": len(expected),
        "received": len(fleet),
        "duplicated": len(fleet) - len(seen),
        "lost": len(lost),
        "invented": len(invented),
        "poison_series": len(events) - len(fleet),
        "lost_examples": sorted(lost)[:5],
        "invented_examples": sorted(invented)[:5],
    }
    failures = [f"{len(lost)} alert events lost"] if lost else []
    failures += [f"{len(invented)} alert events invented"] if invented else []
    return out, failures


def _check_dead_letters(
    got: list[ConsumerRecord[Any, Any]], c: Chaos
) -> tuple[dict[str, Any], list[str]]:
    """Each poison record dead-lettered (once or more) with its reason, found by its source
    offset; the absurd value not; nothing else."""
    poison_at = {(part, offset): p for p, part, offset in c.produced.poison}
    reasons: Counter[str] = Counter()
    found: dict[tuple[int, int], set[str]] = {}
    n_copies, unexpected = 0, []
    for m in got:
        h = {k: v.decode() for k, v in m.headers}
        reasons[h["reason"]] += 1
        at = (int(h["source_partition"]), int(h["source_offset"]))
        if h["source_topic"] == c.k.input_topics[0] and at in poison_at:
            found.setdefault(at, set()).add(h["reason"])
        elif any(m.key == p.key and p.value.startswith(m.value) for p in poison_at.values()):
            n_copies += 1  # a retried send that had landed: at an offset no ack reported
        else:
            unexpected.append(f"{h['source_topic']}/{at[0]}/{at[1]}: {h['reason']}")
    failures = [f"dead-lettered, not poison: {u}" for u in unexpected[:5]]
    for at, p in poison_at.items():
        want, have = POISON[p.kind], found.get(at, set())
        if have != ({want} if want else set()):
            failures.append(f"{p.kind} at {at}: dead-lettered as {sorted(have)}, not {want}")
    out = {
        "received": len(got),
        "by_reason": dict(sorted(reasons.items())),
        "poison_records": len(poison_at),
        "poison_copies": n_copies,
        "unexpected": len(unexpected),
    }
    return out, failures


def run(
    minutes: float,
    seed: int,
    workdir: Path,
    rate: float = 100.0,
    *,
    replicas: int = 2,
    partitions: int = 3,
    kinds: Sequence[str] | None = None,
    gap_s: tuple[float, float] = (10.0, 20.0),
    stay_s: tuple[float, float] = (10.0, 20.0),
    chunk_s: float = 2.0,
    model: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """Run the stream for ``minutes`` under faults and return the report (``report["ok"]``).

    ``kinds`` fixes the order of the faults (cycled); ``None`` draws each from :data:`FAULTS`.
    ``model`` is ``(model_dir, test_csv)`` to stream; ``None`` trains one in ``workdir``.
    """
    kinds = None if kinds is None else tuple(kinds)
    plan = Plan(minutes, seed, rate, replicas, partitions, kinds, gap_s, stay_s, chunk_s)
    t_start = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, test_csv = model or make_model(workdir, seed=seed)
    artifact = load_artifact(model_dir)
    table = read_table(test_csv, feature_names=artifact.feature_names)
    stream = long_stream(table.batch, int(minutes * 60 * rate) + 1)
    with contextlib.ExitStack() as stack:
        s3_env = stack.enter_context(s3_server(workdir))
        broker = EmbeddedBroker(
            storage_engine=f"s3://{_BUCKET}/", env=s3_env, log_path=workdir / "tansu.log"
        )
        stack.enter_context(broker)
        k = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            group_id="chaos",
            input_topics=("telemetry",),
            alert_topic="alerts",
            dead_letter_topic="dead-letters",
            topic_partitions=partitions,
        )
        env = {key: v for key, v in os.environ.items() if not key.startswith("STREAM_VAE_")}
        env |= _SERVICE_ENV | {
            "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "STREAM_VAE_KAFKA__GROUP_ID": k.group_id,
            "STREAM_VAE_KAFKA__INPUT_TOPICS": _json.dumps(list(k.input_topics)).decode(),
            "STREAM_VAE_KAFKA__ALERT_TOPIC": k.alert_topic,
            "STREAM_VAE_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
        }
        reps = Replicas(model_dir, env, workdir)
        stack.callback(reps.close)

        async def chaos() -> tuple[Chaos, dict[str, Any]]:
            # aiokafka clients belong to the running loop
            c = Chaos(k, broker, Sender(k), reps, artifact.feature_names, n_slots=replicas)
            return c, await _main(c, stream, plan)

        c, report = asyncio.run(chaos())
        report["stored_batches"] = _count_batches(s3_env["AWS_ENDPOINT"])
    expected = {
        (a.alert_id, a.event)
        for s in LiveModel(artifact, DetectorOptions(device="cpu")).stream(
            stream.slice(0, c.produced.n_fleet), 500
        )
        for a in s.alerts
    }
    alerts, failures = _check_alerts(report.pop("_alerts"), expected)
    dead, more = _check_dead_letters(report.pop("_dead"), c)
    failures = report.pop("_failures") + failures + more
    report |= {"alerts": alerts, "dead_letters": dead, "failures": failures}
    report |= {"ok": not failures, "wall_s": round(time.monotonic() - t_start, 1)}
    params = {"minutes": minutes, "seed": seed, "rate": rate, "replicas": replicas}
    return params | {"partitions": partitions} | report


async def _main(c: Chaos, stream: RecordBatch, plan: Plan) -> dict[str, Any]:
    k, reps, partitions = c.k, c.replicas, plan.partitions
    await ensure_topics(
        k, [*k.input_topics, k.alert_topic, k.dead_letter_topic, k.model_events_topic]
    )
    await c.sender.start()
    for slot in range(plan.replicas):
        reps.spawn(slot)
    background = [asyncio.create_task(reps.watch()), asyncio.create_task(reps.poll())]
    try:
        async with asyncio.timeout(300):  # replicas import torch and load the model
            while any(r.accounting is None for r in reps.live.values()):
                await asyncio.sleep(0.5)
        reps.t_stream = time.monotonic()
        faults = asyncio.create_task(schedule(c, plan, until=reps.t_stream + plan.duration_s))
        await produce(c, stream, plan)
        await faults
        c.leave_now.set()  # the joiners still in leave now
        await asyncio.gather(*c.pending)
        final = await wait_caught_up(c, partitions, timeout_s=max(180.0, plan.duration_s / 4))
        for task in background:
            task.cancel()
        for slot in sorted(reps.live):
            await reps.stop(slot)
        alerts = await read_topic(c, k.alert_topic, partitions)
        dead = await read_topic(c, k.dead_letter_topic, partitions)
        kept = await read_topic(c, k.input_topics[0], partitions)
    finally:
        for task in [*background, *c.pending]:
            task.cancel()
        await asyncio.gather(*background, *c.pending, return_exceptions=True)
        await c.sender.stop()
    log_end = {p: c.sender.log_end[(k.input_topics[0], p)] for p in range(partitions)}
    replicas, failures = _report_replicas(c, plan.duration_s)
    input_log = _check_input_log(c, kept)
    if input_log["missing"] or input_log["changed"]:
        failures.append(
            f"broker: {input_log['missing']} acked input records missing from the log, "
            f"{input_log['changed']} changed (the service cannot score what the log lost)"
        )
    if final != log_end:
        failures.insert(0, f"committed offsets {final} != log end offsets {log_end}")
    if c.produced.out_of_order:
        failures.append(f"harness: {c.produced.out_of_order} records landed out of order")
    return {
        "records": {
            "fleet": c.produced.n_fleet,
            "poison": len(c.produced.poison),
            "resent": c.sender.n_resent,
            "out_of_order": c.produced.out_of_order,
            "log_end": log_end,
            "committed": final,
            "input_log": input_log,
        },
        "faults": dict(sorted(c.faults.items())),
        "fault_log": c.fault_log,
        "replica_restarts": reps.n_restarts,
        **replicas,
        "_alerts": alerts,
        "_dead": dead,
        "_failures": failures,
    }


def _count_batches(endpoint: str) -> dict[str, int]:
    """Record batches stored per topic (one S3 object each; what a fetch lists, per
    partition, grows with them: see _SERVICE_ENV)."""
    try:
        with urllib.request.urlopen(f"{endpoint}/{_BUCKET}?list-type=2", timeout=60) as r:
            body: bytes = r.read()
    except OSError as exc:
        log.warning("cannot list the bucket: %s", exc)
        return {}
    topics = re.findall(rb"<Key>[^<]*/topics/([^/<]+)/partitions/\d+/records/", body)
    return dict(sorted(Counter(t.decode() for t in topics).items()))


def summary(report: dict[str, Any]) -> str:
    a, d, r = report["alerts"], report["dead_letters"], report["records"]
    acc = report["accounting"]
    rss = ", ".join(
        f"{name}: {v['first']:.0f}→{v['last']:.0f} (max {v['max']:.0f})"
        for name, v in report["rss_mib"].items()
    )
    lines = [
        f"chaos {'OK' if report['ok'] else 'FAILED'} in {report['wall_s']:.0f} s",
        f"records: {r['fleet']} fleet + {r['poison']} poison, {r['resent']} resent; "
        f"log end {r['log_end']}, committed {r['committed']}; input log read back: "
        f"{r['input_log']}",
        f"faults: {report['faults']}; unexpected replica restarts {report['replica_restarts']};"
        f" processes {report['processes']}",
        f"alerts: expected {a['expected']}, received {a['received']} "
        f"({a['duplicated']} duplicates), lost {a['lost']}, invented {a['invented']}",
        f"dead letters: {d['received']} {d['by_reason']}, unexpected {d['unexpected']}",
        "accounting (summed over processes): "
        + ", ".join(f"{k} {acc.get(k, 0)}" for k in ("consumed", "replayed", "dropped_stale")),
        f"RSS MiB per replica process: {rss}",
        f"record batches stored (S3 objects) per topic: {report['stored_batches']}",
        *(f"FAILED: {f}" for f in report["failures"]),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the stream")
    p.add_argument("--seed", type=int, default=0, help="the fault schedule and the fleet")
    p.add_argument("--rate", type=float, default=100.0, help="records/s")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the report here as JSON")
    p.add_argument("--workdir", type=Path, help="logs and model (default: a temporary one)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    # the harness's clients log every failed connection while the broker is down, on purpose
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stream-vae-chaos-"))
    report = run(
        args.minutes,
        args.seed,
        workdir,
        args.rate,
        replicas=args.replicas,
        partitions=args.partitions,
    )
    print(summary(report))
    if args.out is not None:
        args.out.write_bytes(_json.dumps(report))
        print(f"report: {args.out}")
    if report["ok"] and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not report["ok"]:
        print(f"logs kept in {workdir}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

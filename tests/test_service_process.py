"""`stream-vae run` as a real process: SIGTERM drains and commits, and a restart rebuilds the
state without repeating an alert; SIGKILL loses no alert."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.config import KafkaSettings
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.service.kafka import ensure_topics
from stream_vae.service.replay import replay
from stream_vae.storage.tabular import Table, read_table

from .conftest import TinyModel

PARTITIONS = 2


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def _env(k: KafkaSettings, **extra: str) -> dict[str, str]:
    env = {key: v for key, v in os.environ.items() if not key.startswith("STREAM_VAE_")}
    env.update(
        {
            "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "STREAM_VAE_KAFKA__GROUP_ID": k.group_id,
            "STREAM_VAE_KAFKA__INPUT_TOPICS": _json.dumps(list(k.input_topics)).decode(),
            "STREAM_VAE_KAFKA__ALERT_TOPIC": k.alert_topic,
            "STREAM_VAE_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
            "STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS": "4000",
            "STREAM_VAE_SERVICE__DEVICE": "cpu",
            "STREAM_VAE_SERVICE__METRICS_PORT": "0",  # a free port, printed in the log
            **extra,
        }
    )
    return env


def _start(model: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "stream_vae", "-v", "run", "--model", str(model)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _committed(k: KafkaSettings) -> int:
    c = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False
    )
    await c.start()
    try:
        tps = [TopicPartition(k.input_topics[0], p) for p in range(PARTITIONS)]
        return sum([await c.committed(tp) or 0 for tp in tps])
    finally:
        await c.stop()


def _wait_committed(
    k: KafkaSettings,
    proc: subprocess.Popen[bytes],
    log: Path,
    *,
    at_least: int = 1,
    steady_s: float = 0.0,
    timeout_s: float = 60,
) -> int:
    """Wait until the group committed at least ``at_least`` offsets and the total has not moved
    for ``steady_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = asyncio.run(_committed(k))
        assert proc.poll() is None, log.read_text()[-3000:]
        if n != last:
            last, since = n, time.monotonic()
        if n >= at_least and time.monotonic() - since >= steady_s:
            return n
        time.sleep(0.25)
    raise AssertionError(f"only {last} offsets committed: {log.read_text()[-3000:]}")


def _accounting(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> dict[str, int]:
    """The running service's ``/accounting`` (its metrics port is read from its log)."""
    deadline = time.monotonic() + timeout_s
    while (m := re.search(rb"metrics on http://([\d.]+):(\d+)/", log.read_bytes())) is None:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    url = f"http://{m[1].decode()}:{m[2].decode()}/accounting"
    with urllib.request.urlopen(url, timeout=5) as r:
        out: dict[str, int] = _json.loads(r.read())
        return out


def _wait_consumed(
    proc: subprocess.Popen[bytes], log: Path, at_least: int, timeout_s: float = 60
) -> int:
    """Wait until this run of the service has consumed ``at_least`` records."""
    deadline = time.monotonic() + timeout_s
    while (n := _accounting(proc, log)["consumed"]) < at_least:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return n


async def _alerts(k: KafkaSettings) -> list[dict[str, object]]:
    c = AIOKafkaConsumer(bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False)
    await c.start()
    try:
        tps = [
            TopicPartition(k.alert_topic, p) for p in c.partitions_for_topic(k.alert_topic) or ()
        ]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out: list[dict[str, object]] = []
        quiet = 0
        while quiet < 5:  # read until the topic has been quiet for a second
            got = await c.getmany(timeout_ms=200)
            quiet = 0 if got else quiet + 1
            out.extend(_json.loads(m.value) for msgs in got.values() for m in msgs)
        return out
    finally:
        await c.stop()


def _setup(
    broker: EmbeddedBroker, tiny: TinyModel, rows: slice = slice(None)
) -> tuple[KafkaSettings, int]:
    """Fresh topics, with the test file's ``rows`` produced to the input topic."""
    tag = uuid.uuid4().hex[:8]
    k = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=f"g-{tag}",
        input_topics=(f"in-{tag}",),
        alert_topic=f"alerts-{tag}",
        dead_letter_topic=f"dlq-{tag}",
        topic_partitions=PARTITIONS,
    )
    asyncio.run(ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic]))
    return k, _produce(k, tiny, rows)


def _produce(k: KafkaSettings, tiny: TinyModel, rows: slice) -> int:
    table = read_table(tiny.test_csv)
    start, stop, _ = rows.indices(len(table.batch))
    part = Table(table.batch.slice(start, stop), table.feature_names)
    return asyncio.run(replay(part, k, k.input_topics[0], create_topic=False))


def test_sigterm_drains_commits_and_a_restart_repeats_nothing(
    broker: EmbeddedBroker, tiny: TinyModel, tmp_path: Path
) -> None:
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    cut = _kill_row(tiny, table)  # an alert comes two records after the cut
    k, before = _setup(broker, tiny, slice(cut))
    env = _env(k, STREAM_VAE_SERVICE__MAX_BATCH_RECORDS="40")
    first = _start(tiny.model_dir, env, tmp_path / "a.log")
    try:
        _wait_committed(k, first, tmp_path / "a.log", at_least=before)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        first.kill()
    assert f"stopped: consumed {before}," in (tmp_path / "a.log").read_text()
    # the processed position is committed: lag tools read 0 on the drained group
    assert asyncio.run(_committed(k)) == before
    n = before + _produce(k, tiny, slice(cut, None))
    second = _start(tiny.model_dir, env, tmp_path / "b.log")
    try:
        # only the new records count as consumed; the replay before them rebuilds the state
        _wait_consumed(second, tmp_path / "b.log", at_least=n - before)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        second.kill()
    out = (tmp_path / "b.log").read_text()
    assert f"stopped: consumed {n - before}," in out
    assert re.search(r"replaying [1-9]\d* records to rebuild state", out), out[-3000:]
    got = [(str(a["alert_id"]), str(a["event"])) for a in asyncio.run(_alerts(k))]
    expected = [
        (a.alert_id, a.event)
        for s in LiveModel(tiny.artifact, DetectorOptions(device="cpu")).stream(table.batch, 500)
        for a in s.alerts
    ]
    # exactly the alerts of an uninterrupted run: none lost (the state was rebuilt, so the alert
    # just after the cut is raised), none repeated (the replay published nothing)
    assert sorted(got) == sorted(expected)


def _kill_row(tiny: TinyModel, table: Table) -> int:
    """Where to cut the stream: two records (of its series) before an alert that an
    uninterrupted run raises, late enough that the series had full windows before it.

    A restart that rebuilt nothing (committing at the last record) would need W − 1 new records
    of that series before scoring it again, and so would miss that alert."""
    window = tiny.artifact.vae_config.window
    batch = table.batch
    alerts = [
        a
        for s in LiveModel(tiny.artifact, DetectorOptions(device="cpu")).stream(batch, 500)
        for a in s.alerts
    ]
    sids = np.asarray(batch.series_ids)
    for a in alerts:
        rows = np.flatnonzero(sids == a.series_id)
        at = int(np.searchsorted(batch.ts[rows], a.ts))
        if at >= 3 * window and rows[at - 2] < 0.9 * len(batch):
            return int(rows[at - 2])
    raise AssertionError(f"no alert late enough in the test stream: {alerts}")


def test_sigkill_mid_stream_loses_no_alert(
    broker: EmbeddedBroker, tiny: TinyModel, tmp_path: Path
) -> None:
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    cut = _kill_row(tiny, table)
    k, before = _setup(broker, tiny, slice(cut))
    # small batches, so that many commits land at different replay starts
    env = _env(k, STREAM_VAE_SERVICE__MAX_BATCH_RECORDS="40")
    first = _start(tiny.model_dir, env, tmp_path / "a.log")
    try:
        # windows, EMAs and episodes live in memory only: the restart must rebuild them from
        # the committed offsets
        _wait_consumed(first, tmp_path / "a.log", at_least=before)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    resume = asyncio.run(_committed(k))
    assert resume <= before
    n = before + _produce(k, tiny, slice(cut, None))  # the rest of the stream
    second = _start(tiny.model_dir, env, tmp_path / "b.log")
    try:
        # the restart resumes from the committed offsets and must read to the end
        _wait_consumed(second, tmp_path / "b.log", at_least=n - resume)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        second.kill()
    got = asyncio.run(_alerts(k))
    expected = {
        (a.alert_id, a.event)
        for s in LiveModel(tiny.artifact, DetectorOptions(device="cpu")).stream(table.batch, 500)
        for a in s.alerts
    }
    seen = {(str(a["alert_id"]), str(a["event"])) for a in got}
    assert expected, "the test stream must raise alerts"
    assert expected <= seen, f"lost alerts: {expected - seen}"

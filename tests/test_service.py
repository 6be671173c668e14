"""The streaming service end to end on a real (embedded) Kafka-compatible broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.config import KafkaSettings, load_settings
from stream_vae.core.records import Record, encode
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.service import Service
from stream_vae.service.app import _replay_keep
from stream_vae.service.checkpoint import Checkpoint, CheckpointStore
from stream_vae.service.kafka import ensure_topics, make_producer
from stream_vae.service.sink import KafkaSink
from stream_vae.storage.tabular import read_table

from .conftest import TinyModel
from .schemas import assert_valid, headers

ALERT_FIELDS = {
    "alert_id",
    "series_id",
    "event",
    "ts",
    "score",
    "threshold",
    "raw_score",
    "recon_score",
    "latent_score",
    "top_features",
    "model_version",
}


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def _bad_messages(names: tuple[str, ...]) -> list[tuple[bytes | None, bytes, str]]:
    ok_values = {n: 1.0 for n in names}
    return [
        (b"m1", b"{not json", "bad_json"),
        (None, _json.dumps({"ts": 1, "values": ok_values}), "missing_field"),
        (b"m1", _json.dumps({"ts": 1, "values": [1.0]}), "wrong_arity"),
        (b"m1", _json.dumps({"ts": 1, "values": {**ok_values, "volts": 2}}), "unknown_feature"),
        (b"m1", _json.dumps({"ts": "soon", "values": ok_values}), "bad_timestamp"),
        (b"m1", b'{"ts": 1, "values": ' + b"[1e999]" + b"}", "bad_json"),
        (b"m1", b'{"ts": 1, "values": [NaN, 1, 1]}', "nan_value"),
        (b"m1", b'{"ts": 1, "values": [' + b"1," * 600_000 + b"1]}", "oversized"),
    ]


async def _http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def _samples(text: str, name: str) -> dict[str, float]:
    return {
        ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


async def _consume(k: KafkaSettings, topic: str, n: int) -> list[object]:
    """Read exactly ``n`` messages back (the embedded broker's ListOffsets(LATEST) is off by
    a batch, so end offsets cannot say when a topic has been read to its end)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out: list[object] = []
        async with asyncio.timeout(20):
            while len(out) < n:
                for msgs in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(msgs)
        return out
    finally:
        await consumer.stop()


async def _replay_starts(k: KafkaSettings, parts: list[TopicPartition]) -> dict[int, Checkpoint]:
    """The replay starts the service stored for ``parts`` (by partition number)."""
    producer = make_producer(k)
    await producer.start()
    try:
        found = await CheckpointStore(k, producer, topic=k.state_topic).load(parts)
    finally:
        await producer.stop()
    return {tp.partition: cp for tp, cp in found.items()}


async def _send_all(k: KafkaSettings, rows: list[Record], names: tuple[str, ...]) -> list[Any]:
    """Produce ``rows`` to the input topic, keyed by series; returns the acks' metadata."""
    producer = make_producer(k)
    await producer.start()
    try:
        acks = [
            await producer.send(k.input_topics[0], encode(r, names), key=r.series_id.encode())
            for r in rows
        ]
        return list(await asyncio.gather(*acks))
    finally:
        await producer.stop()


def test_stream_end_to_end(broker: EmbeddedBroker, tiny: TinyModel) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-{tag}",
            "input_topics": [f"in-{tag}"],
            "alert_topic": f"alerts-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "topic_partitions": 3,
        },
        service={"max_batch_records": 300, "max_wait_ms": 20, "device": "cpu", "metrics_port": 0},
    )
    k = settings.kafka
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    bad = _bad_messages(tiny.artifact.feature_names)
    n_total = len(table.batch) + len(bad)

    log_end: dict[int, int] = {}

    async def scenario() -> tuple[
        dict[str, int], list[object], list[object], dict[int, int], str, dict[int, Checkpoint]
    ]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        producer = make_producer(k)
        await producer.start()
        try:
            acks = [
                await producer.send(
                    k.input_topics[0], encode(r, table.feature_names), key=r.series_id.encode()
                )
                for r in table.batch.records()
            ]
            acks += [await producer.send(k.input_topics[0], v, key=key) for key, v, _ in bad]
            for meta in await asyncio.gather(*acks):  # the log end offsets, as lag tools read them
                log_end[meta.partition] = max(log_end.get(meta.partition, 0), meta.offset + 1)
        finally:
            await producer.stop()
        service = Service(settings, tiny.artifact)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        async with asyncio.timeout(60):
            while service.accounting()["consumed"] < n_total:
                await asyncio.sleep(0.05)
        assert service.health is not None
        status, metrics_text = await _http_get(service.health.port, "/metrics")
        assert status == 200
        assert (await _http_get(service.health.port, "/readyz"))[0] == 200
        stop.set()
        await asyncio.wait_for(task, 30)
        alerts = await _consume(k, k.alert_topic, service.accounting()["alerts"])
        dead = await _consume(k, k.dead_letter_topic, len(bad))
        check = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False
        )
        await check.start()
        try:
            parts = [TopicPartition(k.input_topics[0], p) for p in range(3)]
            committed = {tp.partition: await check.committed(tp) or 0 for tp in parts}
        finally:
            await check.stop()
        starts = await _replay_starts(k, parts)
        return service.accounting(), alerts, dead, committed, metrics_text, starts

    acc, alerts, dead, committed, metrics_text, starts = asyncio.run(scenario())
    assert acc["unaccounted"] == 0
    dead_by_reason = _samples(metrics_text, "stream_vae_dead_letters_total")
    assert dead_by_reason["reason=bad_json"] == 2 and dead_by_reason["reason=oversized"] == 1
    assert sum(_samples(metrics_text, "stream_vae_records_in_total").values()) == n_total
    # the series held, and the process itself, on the service's own registry
    assert _samples(metrics_text, "stream_vae_series_held") == {
        "": len(set(table.batch.series_ids))
    }
    assert _samples(metrics_text, "process_resident_memory_bytes")[""] > 50e6
    # every consumed offset is accounted for, exactly once
    assert acc["consumed"] == n_total
    # the processed position is committed (lag tools read 0), and each partition's replay start
    # is in the state topic: its series' last W - 1 + EMA warm-up records (and an episode still
    # open, from its start), for a new owner to rebuild them (test_service_process checks that
    # a restart loses nothing and repeats nothing)
    assert sum(committed.values()) == n_total
    # lag as KEDA / kafka-consumer-groups compute it (log end - committed) is 0 once drained
    assert {p: log_end.get(p, 0) - c for p, c in committed.items()} == dict.fromkeys(committed, 0)
    keep = tiny.artifact.vae_config.window - 1 + 20  # ema_beta 0.5: 20 warm-up windows
    for p, c in committed.items():
        assert starts[p].committed <= c and starts[p].replay_from <= c - keep, (p, starts)
    assert acc["consumed"] == acc["scored"] + acc["buffered"] + acc["late"] + acc["dead_letters"]
    assert acc["dead_letters"] == len(bad)
    # dead letters keep the original key and bytes, and say why and where from
    reasons = sorted(dict(m.headers)["reason"].decode() for m in dead)  # type: ignore[attr-defined]
    assert reasons == sorted(r for _, _, r in bad)
    # every message as the published schemas (schemas/) describe it
    for m in dead:
        assert_valid("dead-letter-headers", headers(m.headers))  # type: ignore[attr-defined]
    for m in alerts:
        assert_valid("alert", _json.loads(m.value))  # type: ignore[attr-defined]
    for r in list(table.batch.records())[:200]:
        assert_valid("input-record", _json.loads(encode(r, table.feature_names)))
    for m in dead:
        h = dict(m.headers)  # type: ignore[attr-defined]
        assert h["source_topic"].decode() == k.input_topics[0]
        assert int(h["source_offset"]) >= 0 and int(h["source_partition"]) in range(3)
    # ... the original bytes, except an oversized record's: cut to fit the broker's limit, with
    # the original size in a header (test_an_oversized_record_is_dead_lettered_cut_to_fit)
    whole = {v for _, v, r in bad if r != "oversized"}
    assert {m.value for m in dead if m.value in whole} == whole  # type: ignore[attr-defined]
    (cut,) = [m for m in dead if dict(m.headers)["reason"] == b"oversized"]  # type: ignore[attr-defined]
    (orig,) = [v for _, v, r in bad if r == "oversized"]
    assert orig.startswith(cut.value) and len(cut.value) < len(orig)  # type: ignore[attr-defined]
    assert dict(cut.headers)["original_value_bytes"] == str(len(orig)).encode()  # type: ignore[attr-defined]
    # alerts: the contract fields, keyed by series, and exactly the offline path's alerts
    got = [_json.loads(m.value) for m in alerts]  # type: ignore[attr-defined]
    assert got, "the test stream has injected anomalies: some alerts must fire"
    assert all(set(a) >= ALERT_FIELDS for a in got)
    assert all(m.key.decode() == _json.loads(m.value)["series_id"] for m in alerts)  # type: ignore[attr-defined]
    offline = [
        a
        for s in LiveModel(tiny.artifact, DetectorOptions(device="cpu")).stream(table.batch, 500)
        for a in s.alerts
    ]
    assert sorted((a["alert_id"], a["event"]) for a in got) == sorted(
        (a.alert_id, a.event) for a in offline
    )
    assert acc["alerts"] == len(got)


def test_a_replica_joining_and_leaving_loses_and_invents_no_alert(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Replica B joins a group of 4 partitions mid-stream, then leaves: two rebalances, with a
    batch prefetched before each (issue 16: the old code processed it after the revoke had
    dropped its series' state, and raised alerts with ids no full run produces). Every alert
    of an uninterrupted run arrives, none other, and no in-order record is counted late."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g2-{tag}",
            "input_topics": [f"in2-{tag}"],
            "alert_topic": f"alerts2-{tag}",
            "dead_letter_topic": f"dlq2-{tag}",
            "topic_partitions": 4,
            "session_timeout_ms": 4000,
        },
        service={"max_batch_records": 20, "max_wait_ms": 20, "device": "cpu", "metrics_port": None},
    )
    k = settings.kafka
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)

    async def scenario() -> tuple[list[dict[str, int]], list[object]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        first, second = Service(settings, tiny.artifact), Service(settings, tiny.artifact)
        stop, stop_second = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(first.run(stop))]
        rows = list(table.batch.records())
        await _send_all(k, rows, table.feature_names)  # a backlog: a batch is always prefetched
        async with asyncio.timeout(60):
            while first.accounting()["consumed"] < len(rows) // 5:
                await asyncio.sleep(0.01)
            tasks.append(asyncio.create_task(second.run(stop_second)))  # B joins mid-stream ...
            while second.n_assignments == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            stop_second.set()  # ... and leaves again, once it took partitions over
        async with asyncio.timeout(90):
            await tasks[1]
            while await _committed_total(k, 4) < len(rows):
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        total_alerts = first.accounting()["alerts"] + second.accounting()["alerts"]
        return [first.accounting(), second.accounting()], await _consume(
            k, k.alert_topic, total_alerts
        )

    accs, alerts = asyncio.run(scenario())
    assert all(a["unaccounted"] == 0 for a in accs), accs
    # a record is consumed twice only when a rebalance failed its commit
    assert sum(a["consumed"] for a in accs) >= len(table.batch)
    assert sum(a["late"] for a in accs) == 0, accs
    got = sorted((m["alert_id"], m["event"]) for m in (_json.loads(x.value) for x in alerts))  # type: ignore[attr-defined]
    expected = {
        (a.alert_id, a.event)
        for s in LiveModel(tiny.artifact, DetectorOptions(device="cpu")).stream(table.batch, 500)
        for a in s.alerts
    }
    assert expected and expected <= set(got), f"lost: {expected - set(got)}"
    assert set(got) <= expected, f"invented: {set(got) - expected}"


async def _committed_total(k: KafkaSettings, n_partitions: int) -> int:
    return sum([await _committed(k, p) or 0 for p in range(n_partitions)])


def test_slow_inference_pauses_fetching(broker: EmbeddedBroker, tiny: TinyModel) -> None:
    """When inference falls behind, the backlog stays in Kafka, not in the service's memory."""
    tag = uuid.uuid4().hex[:8]
    batch_records = 100
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g3-{tag}",
            "input_topics": [f"in3-{tag}"],
            "alert_topic": f"alerts3-{tag}",
            "dead_letter_topic": f"dlq3-{tag}",
            "topic_partitions": 2,
        },
        service={
            "max_batch_records": batch_records,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
        },
    )
    k = settings.kafka
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    # the test stream ten times over, each copy later in time: a backlog of ~10k records
    span = float(table.batch.ts.max() - table.batch.ts.min()) + 60.0
    rows = [
        dataclasses.replace(r, ts=r.ts + rep * span)
        for rep in range(10)
        for r in table.batch.records()
    ]

    async def scenario() -> tuple[list[float], int, dict[int, float], dict[int, int]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        acks = await _send_all(k, rows, table.feature_names)
        produced = Counter(m.partition for m in acks)
        service = Service(settings, tiny.artifact)
        infer = service.live.detector.infer

        def slow(values: np.ndarray) -> object:  # a model that cannot keep up
            time.sleep(0.1)
            return infer(values)

        service.live.detector.infer = slow  # type: ignore[method-assign,assignment]
        registry = service.metrics.registry
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        in_flight: list[float] = []
        async with asyncio.timeout(30):
            while service.accounting()["consumed"] < 6 * batch_records:
                in_flight.append(registry.get_sample_value("stream_vae_records_in_flight") or 0)
                await asyncio.sleep(0.01)
        lag = {
            p: registry.get_sample_value(
                "stream_vae_consumer_lag", {"topic": k.input_topics[0], "partition": str(p)}
            )
            or 0.0
            for p in range(2)
        }
        consumed = service.accounting()["consumed"]
        stop.set()
        await asyncio.wait_for(task, 30)
        return in_flight, consumed, lag, produced

    in_flight, consumed, lag, produced = asyncio.run(scenario())
    # one batch in its tail (publish, commit), one scored, one fetched ahead
    assert max(in_flight) <= 3 * batch_records
    assert max(in_flight) > 0
    # the rest waits in Kafka: consumption kept pace with inference (~10 batches/s)
    assert consumed < len(rows) // 2
    assert sum(lag.values()) >= len(rows) - consumed - 2 * batch_records
    # and the partitions took turns: none waited for another's backlog to drain
    assert all(0 < lag[p] < produced[p] for p in range(2)), (lag, produced)


def test_a_batch_is_published_while_the_next_one_is_scored(
    broker: EmbeddedBroker, tiny: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow acknowledgements (a broker far away, acks from every replica) do not hold the
    forward pass: batch k+1 is scored while batch k waits for its acks. The tails stay one at
    a time, in order, and a stop publishes and commits the batch scored last: every alert of a
    full run arrives, none other, and the group committed every record."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g9-{tag}",
            "input_topics": [f"in9-{tag}"],
            "alert_topic": f"alerts9-{tag}",
            "dead_letter_topic": f"dlq9-{tag}",
            "topic_partitions": 2,
        },
        service={
            "max_batch_records": 100,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
        },
    )
    k = settings.kafka
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    rows = list(table.batch.records())
    publishing: list[tuple[float, float]] = []  # (start, end) of each publish, acks included
    scoring: list[tuple[float, float]] = []  # (start, end) of each forward pass
    real_publish = KafkaSink.publish

    async def slow_publish(sink: KafkaSink, *args: Any, **kwargs: Any) -> None:
        t0 = time.monotonic()
        await real_publish(sink, *args, **kwargs)
        await asyncio.sleep(0.1)  # the acknowledgements take their time
        publishing.append((t0, time.monotonic()))

    monkeypatch.setattr(KafkaSink, "publish", slow_publish)

    async def scenario() -> tuple[list[object], int]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, rows, table.feature_names)
        service = Service(settings, tiny.artifact)
        infer = service.live.detector.infer

        def timed(values: np.ndarray) -> object:
            t0 = time.monotonic()
            time.sleep(0.05)  # a forward pass of a real batch's length
            try:
                return infer(values)
            finally:
                scoring.append((t0, time.monotonic()))

        service.live.detector.infer = timed  # type: ignore[method-assign,assignment]
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        async with asyncio.timeout(60):
            while service.accounting()["consumed"] < len(rows):
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 30)
        n_alerts = service.accounting()["alerts"]
        alerts = await _consume(k, k.alert_topic, n_alerts) if n_alerts else []
        return alerts, await _committed_total(k, 2)

    alerts, committed = asyncio.run(scenario())
    assert len(publishing) > 5
    ends = sorted(publishing)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends)), "two tails overlapped"
    # a forward pass ran while a batch before it waited for its acks (never, before the tails)
    during = [f for f in scoring if any(f[0] < t1 and t0 < f[1] for t0, t1 in publishing)]
    assert len(during) >= len(publishing) // 2, (len(during), len(publishing))
    assert committed == len(rows)  # the last batch too, though it was still in its tail
    got = {(m["alert_id"], m["event"]) for m in (_json.loads(x.value) for x in alerts)}  # type: ignore[attr-defined]
    expected = {
        (a.alert_id, a.event)
        for s in LiveModel(tiny.artifact, DetectorOptions(device="cpu")).stream(table.batch, 500)
        for a in s.alerts
    }
    assert expected and got == expected, (expected - got, got - expected)


def test_evicted_series_leave_all_state(broker: EmbeddedBroker, tiny: TinyModel) -> None:
    """With ``service.max_series`` below the fleet size, every part's per-series state stays
    within the same bound (it would otherwise grow with every series ever seen)."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g4-{tag}",
            "input_topics": [f"in4-{tag}"],
            "alert_topic": f"alerts4-{tag}",
            "dead_letter_topic": f"dlq4-{tag}",
            "topic_partitions": 1,
        },
        service={
            "max_batch_records": 50,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
            "max_series": 2,
        },
    )
    k = settings.kafka
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    # one series after the other, each long enough to be scored
    rows = sorted(table.batch.records(), key=lambda r: (r.series_id, r.ts))

    async def scenario() -> tuple[dict[str, frozenset[str]], set[str]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, rows, table.feature_names)
        service = Service(settings, tiny.artifact)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        async with asyncio.timeout(30):
            while service.accounting()["consumed"] < len(rows):
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)  # the drift thread has run every queued drop by now
        held = {
            "scorer": service.live.scorer.series(),
            "watermark": service._watermark.series(),
            "drift": service.lifecycle.drift_state.series(),
        }
        return held, set(service.live.store.series())

    held, stored = asyncio.run(scenario())
    assert len(set(table.batch.series_ids)) > 2
    assert len(stored) <= 2
    for part, series in held.items():
        # every part that keeps per-series state forgot the evicted series (the drift monitor's
        # thinning counters were never dropped before the state registry)
        assert series <= stored, (part, sorted(series - stored))
    assert held["scorer"] and held["drift"]  # they did hold state: the check is not vacuous


def test_run_takes_the_deployments_episodes_bounds_and_threads(tiny: TinyModel) -> None:
    """The model fixes the windows and the score; the deployment's alerts, series bounds and
    forward-pass options apply to whatever model it serves (issue 15: run ignored them)."""
    settings = load_settings(
        env={},
        alerts={"hysteresis": 0.5, "close_after": 7, "cooldown": 11, "top_k": 1},
        service={"device": "cpu", "idle_ttl_s": 60.0, "max_series": 5, "torch_threads": 3},
        window={"size": 99},  # a deployment's window settings do not change the model's
    )
    live = Service(settings, tiny.artifact).live
    s = live.scorer
    assert (s.hysteresis, s.close_after, s.cooldown, s.top_k) == (0.5, 7, 11, 1)
    assert (live.store.idle_ttl_s, live.store.max_series) == (60.0, 5)
    assert live.store.window == tiny.artifact.vae_config.window != 99
    assert live.options.threads == 3 and live.options.device == "cpu"
    # and a swapped-in version keeps them
    live.install(dataclasses.replace(tiny.artifact, version="v-other"), 0.0)
    assert (live.scorer.close_after, live.scorer.cooldown, live.scorer.model_version) == (
        7,
        11,
        "v-other",
    )


def test_replay_keeps_the_whole_ema_warm_up(tiny: TinyModel) -> None:
    """A restart rebuilds the EMA exactly: β 0.99 needs 1,375 windows (was capped at 256)."""
    spec = tiny.artifact.spec
    scoring = spec.scoring.model_copy(update={"ema_beta": 0.99})
    art = dataclasses.replace(tiny.artifact, spec=spec.model_copy(update={"scoring": scoring}))
    w = art.vae_config.window
    assert _replay_keep(art) == w - 1 + 1375 * spec.window.stride
    assert 0.99**1375 < 1e-6 < 0.99**1374


async def _consumed(service: Service, task: asyncio.Task[Any], n: int) -> None:
    """Wait until ``service`` consumed ``n`` records, failing if it stops on its own."""
    while service.accounting()["consumed"] < n:
        assert not task.done(), "the service stopped"
        await asyncio.sleep(0.05)


async def _serve_until_consumed(settings: Any, artifact: Any, n: int) -> Service:
    """Run a service until it consumed ``n`` records (failing if it stops on its own), then
    stop it cleanly (a stop, not an exit on a record)."""
    service = Service(settings, artifact)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    async with asyncio.timeout(60):
        await _consumed(service, task, n)
    stop.set()
    await asyncio.wait_for(task, 30)
    return service


async def _committed(k: KafkaSettings, partition: int) -> int | None:
    """The group's committed offset of the input topic's ``partition``, as lag tools read it."""
    check = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False
    )
    await check.start()
    try:
        offset: int | None = await check.committed(TopicPartition(k.input_topics[0], partition))
        return offset
    finally:
        await check.stop()


def test_an_absurd_finite_value_is_scored_and_committed_not_a_crash_loop(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Issue 16: one record with 1e20 overflowed the squared error, the EMA raised, the service
    exited with nothing committed, and every restart died on the same record. Now the record's
    window is scored (high, finite), its series alerts, and the offsets are committed."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-huge-{tag}",
            "input_topics": [f"in-huge-{tag}"],
            "alert_topic": f"alerts-huge-{tag}",
            "dead_letter_topic": f"dlq-huge-{tag}",
            "topic_partitions": 1,
        },
        service={
            "max_batch_records": 100,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
        },
    )
    k = settings.kafka
    # the training rows: normal, so the series is not in an episode when the value comes
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    rows = list(table.batch.in_time_order().records())[:300]
    last = max(r.ts for r in rows if r.series_id == rows[0].series_id)
    poison = Record(rows[0].series_id, last + 1.0, np.array([1e20, 43.0, 1.2e29], np.float32))
    rows.append(poison)

    async def scenario() -> tuple[dict[str, int], list[Any], int | None]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, rows, table.feature_names)
        service = await _serve_until_consumed(settings, tiny.artifact, len(rows))
        alerts = await _consume(k, k.alert_topic, service.accounting()["alerts"])
        committed = await _committed(k, 0)
        return service.accounting(), alerts, committed

    acc, alerts, committed = asyncio.run(scenario())
    assert acc["consumed"] == len(rows) and acc["dead_letters"] == 0 and acc["unaccounted"] == 0
    messages = [_json.loads(m.value) for m in alerts]  # type: ignore[attr-defined]
    for message in messages:
        assert_valid("alert", message)
    opened = [a for a in messages if a["event"] == "open" and a["ts"] == poison.ts]
    # the model's alert, and the data-quality one that does not ask the model
    assert sorted((a["series_id"], a["kind"]) for a in opened) == [
        (poison.series_id, "anomaly"),
        (poison.series_id, "out_of_range"),
    ], messages
    anomaly = next(a for a in opened if a["kind"] == "anomaly")
    assert anomaly["score"] > 10 * anomaly["threshold"]
    beyond = next(a for a in opened if a["kind"] == "out_of_range")
    assert beyond["score"] > 1e10 and [f["feature"] for f in beyond["top_features"]][:1] in (
        [table.feature_names[0]],
        [table.feature_names[2]],
    )
    assert committed is not None and committed > 0  # the commit moved past the start


def test_a_frozen_sensor_and_silent_series_give_their_alert_kinds_on_the_topic(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Issue 18: a sensor frozen at a plausible level is reconstructed well, and the score does
    not move; the data-quality check sees it and publishes an alert of kind ``flatline``. The
    machines that fall silent meanwhile each get one of kind ``stale``."""
    kinds = ["flatline", "out_of_range", "stale"]  # stale is opt-in
    settings = _fault_settings(broker, "flat", alerts={"quality_kinds": kinds})
    k = settings.kafka
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    rows = [r for r in table.batch.in_time_order().records()][:400]
    sid = rows[0].series_id
    mine = [r for r in rows if r.series_id == sid]
    last, frozen = mine[-1], float(mine[-1].values[1])
    step = last.ts - mine[-2].ts
    for i in range(1, 41):  # sensor 1 stuck at its last value; the other machines fall silent
        v = np.array(mine[-1 - (i % 10)].values, np.float32)
        v[1] = frozen
        rows.append(Record(sid, last.ts + i * step, v))

    async def scenario() -> tuple[dict[str, int], list[Any]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, rows, table.feature_names)
        service = await _serve_until_consumed(settings, tiny.artifact, len(rows))
        return service.accounting(), await _consume(
            k, k.alert_topic, service.accounting()["alerts"]
        )

    acc, alerts = asyncio.run(scenario())
    assert acc["consumed"] == len(rows) and acc["unaccounted"] == 0
    messages = [_json.loads(m.value) for m in alerts]  # type: ignore[attr-defined]
    flat = [a for a in messages if a["kind"] == "flatline" and a["event"] == "open"]
    assert [a["series_id"] for a in flat] == [sid], messages
    assert flat[0]["top_features"][0]["feature"] == table.feature_names[1]
    assert flat[0]["ts"] > last.ts  # raised by the frozen rows, not before
    # what the sensor says, and what the model expected of it there
    seen = {e["feature"]: e for e in flat[0]["expected"]}[table.feature_names[1]]
    assert seen["observed"] == pytest.approx(frozen) and math.isfinite(seen["expected"])
    assert all("expected" in a for a in messages if a["event"] == "open" and a["kind"] != "stale")
    # the other machines fell silent while it went on: each is stale (stream time), it is not
    stale = {a["series_id"] for a in messages if a["kind"] == "stale" and a["event"] == "open"}
    assert stale == {r.series_id for r in rows} - {sid}, messages


_WALL_STALE = {"quality_kinds": ["stale"], "stale_clock": "wall", "stale_factor": 2.0}


def _one_a_second(tiny: TinyModel) -> tuple[Any, list[Record], dict[str, float]]:
    """The tiny model's training rows re-timed to one record a second of event time per series
    (silent for 2 s of wall time is stale), ending ~1,000 s ago; and each series' next ts."""
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    start = time.time() - 1000.0
    n: Counter[str] = Counter()
    timed = []
    for r in list(table.batch.in_time_order().records())[:240]:
        timed.append(Record(r.series_id, start + n[r.series_id], r.values))
        n[r.series_id] += 1
    return table, timed, {sid: start + i for sid, i in n.items()}


def test_a_fleet_falling_silent_is_stale_by_the_wall_clock(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Issue 18: by stream time a whole fleet falling silent raises nothing (no record moves
    the time on); by the wall clock (``alerts.stale_clock = "wall"``) every series is stale
    while no record arrives at all, and one that comes back closes its episode."""
    settings = _fault_settings(broker, "wall", alerts=_WALL_STALE)
    k = settings.kafka
    table, timed, next_ts = _one_a_second(tiny)
    fleet = set(next_ts)
    first = timed[0]
    back = Record(first.series_id, next_ts[first.series_id], first.values)

    async def scenario() -> tuple[int, list[Any]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, timed, table.feature_names)
        service = Service(settings, tiny.artifact)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        async with asyncio.timeout(60):
            await _consumed(service, task, len(timed))
            await asyncio.sleep(4.0)  # nothing arrives: 2 usual intervals and the check's
            consumed_silent = service.accounting()["consumed"]
            await _send_all(k, [back], table.feature_names)
            await _consumed(service, task, len(timed) + 1)
        stop.set()
        await asyncio.wait_for(task, 30)
        alerts = await _consume(k, k.alert_topic, service.accounting()["alerts"])
        return consumed_silent, alerts

    consumed_silent, alerts = asyncio.run(scenario())
    assert consumed_silent == len(timed)  # the opens came with no record to score
    messages = [_json.loads(m.value) for m in alerts]  # type: ignore[attr-defined]
    stale = [a for a in messages if a["kind"] == "stale"]
    opens = {a["series_id"]: a for a in stale if a["event"] == "open"}
    assert set(opens) == fleet, messages
    assert all(a["score"] >= 2.0 for a in opens.values())  # silent for >= 2 intervals
    closes = [a for a in stale if a["event"] == "close"]
    assert [(a["series_id"], a["alert_id"]) for a in closes] == [
        (back.series_id, opens[back.series_id]["alert_id"])
    ]


def test_a_revoke_closes_the_wall_clock_stale_episodes_the_next_owner_cannot_rebuild(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """A silence by the wall clock is not in the records, so the next owner's replay cannot
    rebuild its episode: the replica giving a partition up closes them (reason ``revoked``)."""
    settings = _fault_settings(broker, "revoke", partitions=4, alerts=_WALL_STALE)
    k = settings.kafka
    table, timed, seen = _one_a_second(tiny)

    async def scenario() -> tuple[list[Any], list[dict[str, int]]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, timed, table.feature_names)
        first, second = Service(settings, tiny.artifact), Service(settings, tiny.artifact)
        stop, stop_second = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(first.run(stop))]
        async with asyncio.timeout(60):
            while first.live.scorer.open_series(all_kinds=True) != set(seen):
                assert not tasks[0].done(), "the service stopped"
                await asyncio.sleep(0.05)  # every series fell silent on the first replica
            tasks.append(asyncio.create_task(second.run(stop_second)))
            while second.n_assignments == 0 or first.n_assignments < 2:
                await asyncio.sleep(0.05)
        stop.set()
        stop_second.set()
        await asyncio.gather(*tasks)
        total = first.accounting()["alerts"] + second.accounting()["alerts"]
        return await _consume(k, k.alert_topic, total), [first.accounting(), second.accounting()]

    alerts, accs = asyncio.run(scenario())
    messages = [_json.loads(m.value) for m in alerts]  # type: ignore[attr-defined]
    opens = {a["alert_id"]: a["series_id"] for a in messages if a["event"] == "open"}
    revoked = [a for a in messages if a["event"] == "close" and a.get("reason") == "revoked"]
    assert revoked, messages  # the first replica gave some partitions up
    for a in revoked:  # each closes an open the first replica published, of its own series
        assert a["kind"] == "stale" and opens[a["alert_id"]] == a["series_id"]
    assert all(acc["unaccounted"] == 0 for acc in accs), accs


def test_the_streaming_threshold_holds_its_rate_on_a_drifting_stream_and_finds_a_spike(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Issue 18: the same stream, a stationary part then a slow drift of every machine, with a
    spike well into it, through two services: the calibrated threshold alerts on much of the
    drift; the streaming one follows it, keeping its rate near the target, and still alerts on
    the spike."""
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    calm = list(table.batch.in_time_order().records())
    span = calm[-1].ts - calm[0].ts + (calm[1].ts - calm[0].ts if len(calm) > 1 else 1.0)
    std = tiny.artifact.scaler.std
    drift = [
        Record(r.series_id, r.ts + span, r.values + (0.8 * i / len(calm)) * std)
        for i, r in enumerate(calm)
    ]
    at = int(0.7 * len(drift))  # a spike well into the drift, with the stream going on after
    victim, spike_ts = drift[at].series_id, drift[at].ts + 1.0
    spike = Record(victim, spike_ts, drift[at].values + 40.0 * std)
    rows = [*calm, *drift[: at + 1], spike, *drift[at + 1 :]]
    runs = {
        mode: _fault_settings(
            broker,
            f"drift-{mode}",
            alerts={"threshold_mode": mode, "threshold_depth": 50, "quality_kinds": []},
        )
        for mode in ("static", "dspot")
    }

    async def scenario() -> dict[str, tuple[float, list[dict[str, Any]]]]:
        out = {}
        for mode, s in runs.items():
            k = s.kafka
            await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
            await _send_all(k, rows, table.feature_names)
            service = await _serve_until_consumed(s, tiny.artifact, len(rows))
            reg = service.metrics.registry
            rate = reg.get_sample_value("stream_vae_windows_over_threshold_total") / (
                reg.get_sample_value("stream_vae_windows_scored_total")
            )
            got = await _consume(k, k.alert_topic, service.accounting()["alerts"])
            out[mode] = (rate, [_json.loads(m.value) for m in got])  # type: ignore[attr-defined]
        return out

    out = asyncio.run(scenario())
    q = tiny.artifact.calibration.target_fpr
    (static_rate, _), (dspot_rate, alerts) = out["static"], out["dspot"]
    assert static_rate > 5 * q, out
    assert dspot_rate < 4 * q and dspot_rate < static_rate / 3, (static_rate, dspot_rate)
    # the spike is alerted: the episode of its series that spans it peaks far over its bar
    spans = [
        a
        for a in alerts
        if a["series_id"] == victim
        and a["event"] == "close"
        and a["episode_start_ts"] <= spike_ts <= a["ts"]
    ]
    assert len(spans) == 1 and spans[0]["peak_score"] > 10 * spans[0]["threshold"], alerts
    assert {a["threshold"] for a in alerts if a["event"] == "open"} != {tiny.artifact.threshold}


def test_an_oversized_record_is_dead_lettered_cut_to_fit_not_a_poison_pill(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Issue 16: a 2.5 MB record was dead-lettered whole; producing the dead letter failed
    (over the producer's limit) on every restart. Now its bytes are cut to fit under
    ``kafka.max_message_bytes`` and the headers say from how many."""
    from aiokafka import AIOKafkaProducer

    tag = uuid.uuid4().hex[:8]
    limit = 64 << 10
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-big-{tag}",
            "input_topics": [f"in-big-{tag}"],
            "alert_topic": f"alerts-big-{tag}",
            "dead_letter_topic": f"dlq-big-{tag}",
            "topic_partitions": 1,
            "max_message_bytes": limit,  # the service's producer then takes at most 1 MiB
        },
        service={"max_wait_ms": 20, "device": "cpu", "metrics_port": None},
    )
    k = settings.kafka
    big = b'{"series_id": "m-0", "ts": 1, "values": [' + b"1.0, " * 300_000 + b"1.0]}"
    assert len(big) > 1 << 20  # more than the service's producer may send

    async def scenario() -> tuple[dict[str, int], list[Any], int | None]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, max_request_size=4 << 20)
        await producer.start()
        try:
            await (await producer.send(k.input_topics[0], big, key=b"m-0"))
        finally:
            await producer.stop()
        service = await _serve_until_consumed(settings, tiny.artifact, 1)
        dead = await _consume(k, k.dead_letter_topic, 1)
        committed = await _committed(k, 0)
        return service.accounting(), dead, committed

    acc, dead, committed = asyncio.run(scenario())
    assert acc["consumed"] == 1 and acc["dead_letters"] == 1 and committed == 1
    msg = dead[0]
    headers = dict(msg.headers)  # type: ignore[attr-defined]
    assert headers["reason"] == b"oversized"
    assert headers["original_value_bytes"] == str(len(big)).encode()
    assert big.startswith(msg.value) and 0 < len(msg.value) <= limit  # type: ignore[attr-defined]


def test_an_evicted_series_closes_its_open_episode(broker: EmbeddedBroker, tiny: TinyModel) -> None:
    """Issue 16: a series that went silent mid-episode was evicted (service.idle_ttl_s) with no
    close event, and the commit moved past the episode's start, so no restart could produce it.
    Now the eviction publishes the close (reason "evicted") with the batch that evicts."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-evict-{tag}",
            "input_topics": [f"in-evict-{tag}"],
            "alert_topic": f"alerts-evict-{tag}",
            "dead_letter_topic": f"dlq-evict-{tag}",
            "topic_partitions": 1,
        },
        service={
            "max_batch_records": 40,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
            "idle_ttl_s": 600.0,  # ten steps of the generated data
        },
    )
    k = settings.kafka
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    rows = list(table.batch.in_time_order().records())
    times = sorted({r.ts for r in rows})
    head = [r for r in rows if r.ts <= times[100]]
    victim = head[0].series_id
    # the victim alerts (an absurd value opens an episode) and goes silent; the others go on
    poison = Record(victim, times[101], np.array([1e20, 43.0, 1.2e29], np.float32))
    tail = [r for r in rows if times[101] < r.ts <= times[140] and r.series_id != victim]
    sent = [*head, poison, *tail]

    async def scenario() -> list[dict[str, Any]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, sent, table.feature_names)
        service = await _serve_until_consumed(settings, tiny.artifact, len(sent))
        assert victim not in service.live.series()  # evicted, from every part
        got = await _consume(k, k.alert_topic, service.accounting()["alerts"])
        return [_json.loads(m.value) for m in got]  # type: ignore[attr-defined]

    alerts = asyncio.run(scenario())
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for a in alerts:
        if a["series_id"] == victim:
            by_kind.setdefault(a["kind"], []).append(a)
    # the model's episode, and the out-of-range one the absurd value opened: both closed
    for kind in ("anomaly", "out_of_range"):
        mine = [(a["event"], a.get("reason", "")) for a in by_kind[kind]]
        assert mine[-2:] == [("open", ""), ("close", "evicted")], (kind, mine)
        close = by_kind[kind][-1]
        assert close["episode_start_ts"] == poison.ts
        assert close["ts"] - poison.ts > 600.0  # closed when it was evicted, not before


def _fault_settings(
    broker: EmbeddedBroker,
    name: str,
    partitions: int = 1,
    alerts: dict[str, Any] | None = None,
    **service: Any,
) -> Any:
    """Settings on fresh topics for one fault test (tag ``name``)."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    return load_settings(
        env={},
        alerts=alerts or {},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-{tag}",
            "input_topics": [f"in-{tag}"],
            "alert_topic": f"alerts-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "topic_partitions": partitions,
        },
        service={
            "max_batch_records": 100,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
            **service,
        },
    )


def test_a_timestamp_far_ahead_is_dead_lettered_not_the_end_of_stream_time(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Issue 16: one record with ts=1e300 (or epoch milliseconds) moved stream time so far that
    every other series was evicted as idle. Now it is dead-lettered (implausible_timestamp), as
    is a record far ahead of its own series' newest point, and no series is evicted."""
    settings = _fault_settings(broker, "ts")
    k = settings.kafka
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    rows = list(table.batch.in_time_order().records())
    head, tail = rows[:200], rows[200:400]
    sid, last = head[-1].series_id, head[-1].ts
    values = head[-1].values
    poison = [
        Record(sid, 1e300, values),
        Record(sid, last * 1000.0, values),  # epoch milliseconds sent as seconds
        Record(sid, last + 60 * 86_400.0, values),  # 60 days after the series' newest point
    ]
    sent = head + poison + tail

    async def scenario() -> Service:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        await _send_all(k, sent, table.feature_names)
        return await _serve_until_consumed(settings, tiny.artifact, len(sent))

    service = asyncio.run(scenario())
    acc = service.accounting()
    assert acc["dead_letters"] == 3 and acc["unaccounted"] == 0, acc
    reasons = _samples(
        generate_latest(service.metrics.registry).decode(), "stream_vae_dead_letters_total"
    )
    assert reasons["reason=implausible_timestamp"] == 3
    counters = service.live.store.counters
    assert counters["evicted_idle"] == 0 and counters["late"] == 0, counters
    assert service.live.store.n_series == len({r.series_id for r in sent})


def test_a_series_on_a_second_partition_is_counted_and_warned_once(
    broker: EmbeddedBroker, tiny: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16: with a mis-keyed producer, a series' records on another partition were silently
    counted late. Now each move is counted (stream_vae_series_partition_conflicts_total), the
    series is warned about once, and its state follows the newest partition (documented in
    stream_vae.service.offsets)."""
    settings = _fault_settings(broker, "part", partitions=2)
    k = settings.kafka
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    sid = table.batch.series_ids[0]
    rows = [r for r in table.batch.in_time_order().records() if r.series_id == sid][:60]

    async def scenario() -> Service:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        producer = make_producer(k)
        await producer.start()
        try:
            # 20 on partition 0, 20 on 1, 20 on 0: each run is sent and acknowledged before the
            # next, and the service is started after, so it reads partition by partition
            for i, r in enumerate(rows):
                await producer.send_and_wait(
                    k.input_topics[0], encode(r, table.feature_names), partition=(i // 20) % 2
                )
        finally:
            await producer.stop()
        return await _serve_until_consumed(settings, tiny.artifact, len(rows))

    with caplog.at_level(logging.WARNING, logger="stream_vae.service.app"):
        service = asyncio.run(scenario())
    conflicts = service.metrics.registry.get_sample_value(
        "stream_vae_series_partition_conflicts_total"
    )
    assert conflicts is not None and conflicts >= 1
    warned = [r for r in caplog.records if "moved to partition" in r.getMessage()]
    assert len(warned) == 1 and sid in warned[0].getMessage()


def test_readiness_turns_false_when_the_broker_is_lost(
    tiny: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16: /readyz stayed 200 after the broker went away. It follows the broker now.
    With the broker gone every series also falls silent by the wall clock: those stale opens
    cannot be published, so they are forgotten (a later check raises them again:
    tests/test_quality.py), not counted, and the service still stops."""
    with EmbeddedBroker() as own:
        settings = _fault_settings(
            own, "ready", alerts=_WALL_STALE, metrics_port=0, shutdown_timeout_s=2.0
        )
        table, timed, _ = _one_a_second(tiny)

        async def scenario() -> tuple[list[int], int]:
            k = settings.kafka
            await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
            await _send_all(k, timed, table.feature_names)
            service = Service(settings, tiny.artifact)
            service.broker_probe_s = 0.2
            stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop))
            codes = []
            try:
                async with asyncio.timeout(40):
                    while (
                        service.health is None
                        or not service.metrics.ready
                        or service.accounting()["consumed"] < len(timed)
                    ):
                        await asyncio.sleep(0.05)
                    assert service.health is not None
                    codes.append((await _http_get(service.health.port, "/readyz"))[0])
                    published = service.accounting()["alerts"]
                    own.stop()
                    while service.metrics.ready:
                        await asyncio.sleep(0.05)
                    codes.append((await _http_get(service.health.port, "/readyz"))[0])
                    # 2 s to fall silent, 5 s for a stale open's publish to give up
                    while "could not publish" not in caplog.text:
                        await asyncio.sleep(0.1)
                    unsent = service.accounting()["alerts"] - published
            finally:
                stop.set()
                # the broker is gone: the clients' stops time out, and the service still ends
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(task, 30)
            assert task.done()
            return codes, unsent

        codes, unsent = asyncio.run(scenario())
    assert codes == [200, 503]
    assert unsent == 0  # nothing that was not published is counted


def test_an_unreadable_state_topic_replays_the_bounded_tail_and_keeps_the_stored_starts(
    broker: EmbeddedBroker, tiny: TinyModel
) -> None:
    """Issue 16, found by the fault suite: a takeover whose read of the state topic timed out
    (a slow broker) started its partitions empty *and* wrote `replay_from = committed` over the
    stored starts, so every later owner rebuilt nothing either (invented and lost alerts). Now
    the stored starts stay, and the last `max_replay_records` of each partition are replayed."""
    tag = uuid.uuid4().hex[:8]
    kafka = {
        "bootstrap_servers": broker.bootstrap_servers,
        "group_id": f"g5-{tag}",
        "input_topics": [f"in5-{tag}"],
        "alert_topic": f"alerts5-{tag}",
        "dead_letter_topic": f"dlq5-{tag}",
        "topic_partitions": 1,
        "session_timeout_ms": 2000,  # the takeover joins once the first member's session ends
    }
    service = {"max_batch_records": 200, "max_wait_ms": 20, "device": "cpu", "metrics_port": None}
    first = load_settings(env={}, kafka=kafka, service=service)
    slow = load_settings(
        env={},
        kafka=kafka,
        service={**service, "state_read_timeout_s": 1e-6, "max_replay_records": 40},
    )
    k = first.kafka
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    tp = TopicPartition(k.input_topics[0], 0)

    async def scenario() -> tuple[Checkpoint, Checkpoint, int, str]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        rows = list(table.batch.records())
        await _send_all(k, rows, table.feature_names)
        a, stop = Service(first, tiny.artifact), asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        async with asyncio.timeout(60):
            while await _committed_total(k, 1) < len(rows):
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)
        before = (await _replay_starts(k, [tp]))[0]
        b, stop = Service(slow, tiny.artifact), asyncio.Event()
        task = asyncio.create_task(b.run(stop))
        async with asyncio.timeout(60):
            while b.n_assignments == 0 or b.accounting()["replayed"] < 40:
                await asyncio.sleep(0.02)
        during = (await _replay_starts(k, [tp]))[0]  # what the takeover left in the state topic
        stop.set()
        await asyncio.wait_for(task, 30)
        metrics = generate_latest(b.metrics.registry).decode()
        return before, during, b.accounting()["replayed"], metrics

    before, during, replayed, metrics = asyncio.run(scenario())
    n = len(table.batch)
    assert before.committed == n and before.replay_from < n - 40  # a longer replay was stored
    assert during == before  # not overwritten with (committed, committed)
    assert replayed == 40  # the bound, blind
    assert _samples(metrics, "stream_vae_replay_truncated_total")["reason=unreadable"] == 1

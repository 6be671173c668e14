"""Feedback on alerts: the windows held per episode, the verdict sets, the job they ride with,
and, end to end on the embedded broker, a false positive fed back that no longer alerts after
the retrain it starts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.config import load_settings
from stream_vae.core.records import Record, RecordBatch, encode
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.errors import RecordError
from stream_vae.lifecycle.feedback import AlertWindows, Feedback, FeedbackSet
from stream_vae.lifecycle.job import load_job, save_job
from stream_vae.lifecycle.policy import RetrainPolicy
from stream_vae.lifecycle.reservoir import ReservoirSample
from stream_vae.service import Service
from stream_vae.service.feedback import parse_feedback
from stream_vae.service.kafka import ensure_topics, make_producer
from stream_vae.service.lifecycle import Lifecycle
from stream_vae.service.metrics import ServiceMetrics
from stream_vae.storage.registry import Lineage, Registry, VersionInfo
from stream_vae.training.build import train_artifact
from stream_vae.training.gate import with_false_positives

from .conftest import TinyModel
from .schemas import assert_valid
from .test_service import _consume

F32 = npt.NDArray[np.float32]


# -- parsing -------------------------------------------------------------------------------


def test_a_verdict_parses_and_a_bad_one_says_why() -> None:
    fb = parse_feedback(b'{"alert_id": "a1", "verdict": "false_positive", "by": "ana", "ts": 5}')
    assert (fb.alert_id, fb.verdict, fb.by, fb.ts) == ("a1", "false_positive", "ana", 5.0)
    iso = parse_feedback(
        b'{"alert_id": "a1", "verdict": "confirmed", "ts": "1970-01-01T00:01:00Z"}'
    )
    assert iso.ts == 60.0 and iso.by == ""
    cases = {
        b"not json": "bad_json",
        b"[1, 2]": "bad_json",
        b'{"verdict": "confirmed"}': "missing_field",
        b'{"alert_id": "a1", "verdict": "maybe"}': "bad_value",
        b'{"alert_id": "a1", "verdict": "ignore", "ts": "yesterday"}': "bad_timestamp",
        b'{"alert_id": "' + b"x" * 70_000 + b'", "verdict": "ignore"}': "oversized",
    }
    for value, reason in cases.items():
        with pytest.raises(RecordError) as info:
            parse_feedback(value)
        assert info.value.reason == reason, (value[:40], info.value)
    with pytest.raises(RecordError, match="missing_field"):
        parse_feedback(None)


# -- the windows held per episode -----------------------------------------------------------


def _rows(n: int, start: int = 0) -> F32:
    """(n, 2, 1) windows whose values are their row numbers."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32), 2).reshape(n, 2, 1)


def test_an_episodes_windows_are_held_from_before_its_open_to_its_close() -> None:
    held = AlertWindows(per_alert=100, n_alerts=10, lead=2)
    keys = ["a", "b"] * 10  # rows 0..19: a on even rows, b on odd; ts = row
    ts = np.arange(20.0)
    held.hold(keys, ts, _rows(20), opened={"a": ("id-a", 8.0)})
    assert held.series() == {"a"}
    # a's windows: two before the open (4, 6), then 8..18; nothing of b
    held.hold(keys, ts + 20, _rows(20, 20), closed={"a": 24.0})  # a's 20, 22, 24; then closed
    held.hold(keys, ts + 40, _rows(20, 40))  # nothing: no episode open
    w = held.take("id-a")
    assert w is not None
    assert w[:, 0, 0].tolist() == [4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]
    assert held.take("id-a") is None and held.series() == frozenset()
    assert held.take("never") is None


def test_an_episode_that_closes_and_one_that_opens_in_one_batch_keep_their_own_windows() -> None:
    held = AlertWindows(per_alert=100, n_alerts=10, lead=2)
    held.hold(["a"] * 5, np.arange(5.0), _rows(5), opened={"a": ("old", 0.0)})
    # one batch: the old episode closes at ts 7, a new one opens at 12 and stays open
    held.hold(["a"] * 10, np.arange(5.0, 15.0), _rows(10, 5),
              opened={"a": ("new", 12.0)}, closed={"a": 7.0})  # fmt: skip
    held.hold(["a"] * 2, [15.0, 16.0], _rows(2, 15))  # still the new one's
    old, new = held.take("old"), held.take("new")
    assert old is not None and old[:, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert new is not None and new[:, 0, 0].tolist() == [10, 11, 12, 13, 14, 15, 16]
    # opened and closed within one batch: nothing stays followed
    held.hold(["b"] * 6, np.arange(6.0), _rows(6), opened={"b": ("short", 2.0)}, closed={"b": 3.0})
    assert held.series() == frozenset()
    short = held.take("short")
    assert short is not None and short[:, 0, 0].tolist() == [0, 1, 2, 3]


def test_a_long_episode_is_thinned_evenly_and_old_episodes_go_first() -> None:
    held = AlertWindows(per_alert=8, n_alerts=2, lead=0)
    held.hold(["a"] * 100, np.arange(100.0), _rows(100), opened={"a": ("id-1", 0.0)})
    w = held.take("id-1")
    assert w is not None and len(w) <= 8
    steps = np.diff(w[:, 0, 0])
    assert (steps == steps[0]).all() and w[0, 0, 0] == 0 and w[-1, 0, 0] >= 80  # all of it
    for i in range(3):  # three episodes, two held: the oldest goes
        held.hold(["s"], [1000.0 + i], _rows(1), opened={"s": (f"e{i}", 1000.0 + i)})
    assert held.nbytes() >= 2 * _rows(1).nbytes
    assert held.take("e0") is None and held.take("e2") is not None
    held.drop(["s"])  # a revoked series: no longer followed, what was held stays
    assert held.series() == frozenset() and held.take("e1") is not None


def test_a_feedback_set_keeps_the_newest_verdicts_within_its_capacity() -> None:
    fs = FeedbackSet(capacity=10)
    fs.add("a", _rows(4))
    fs.add("b", _rows(4, 10))
    fs.add("a", _rows(5, 20))  # a again: its newest copy, now the newest alert
    assert fs.n_alerts == 2 and len(fs) == 9
    fs.add("c", _rows(3, 30))  # 12 > 10: b goes
    w = fs.windows()
    assert w is not None and w[:, 0, 0].tolist() == [20, 21, 22, 23, 24, 30, 31, 32]
    fs.discard("a")
    assert fs.n_alerts == 1 and FeedbackSet().windows() is None


def test_false_positives_are_cycled_to_their_share_of_the_training_windows() -> None:
    train, fp = np.zeros((800, 2, 1), np.float32), _rows(3, 1)
    out = with_false_positives(train, fp, 0.2)
    assert out.shape == (1000, 2, 1)
    assert np.array_equal(out[:800], train)
    assert np.bincount(out[800:, 0, 0].astype(int)).tolist() == [0, 67, 67, 66]
    assert with_false_positives(train, None, 0.2) is train
    assert len(with_false_positives(train, _rows(300), 0.2)) == 1100  # never fewer than given


# -- the policy and the job ------------------------------------------------------------------


def test_a_false_positive_starts_a_job_that_carries_every_verdict(tmp_path: Path) -> None:
    s = load_settings(env={}, retrain={"min_windows": 10}, feedback={"retrain_after": 2})
    policy = RetrainPolicy(s.retrain, feedback=s.feedback)
    policy.reservoir.add(["m"] * 20, np.arange(20.0), _rows(20))
    assert policy.due(20.0) is None  # no drift, no schedule, no feedback yet
    policy.feedback("false_positive", "fp-1", _rows(3, 100))
    policy.feedback("confirmed", "ok-1", _rows(2, 200))
    assert policy.due(21.0) is None  # one false positive of the two that start a job
    policy.feedback("false_positive", "fp-2", _rows(4, 300))
    job = policy.due(22.0)
    assert job is not None and job.trigger == "feedback" and len(job.sample) == 20
    assert job.feedback_counts() == {
        "false_positive_alerts": 2,
        "false_positive_windows": 7,
        "confirmed_alerts": 1,
        "confirmed_windows": 2,
    }
    assert policy.due(23.0) is None  # counted from the job
    # a verdict changed: the newest holds, with the windows already marked
    changed = policy.marked("fp-1")
    assert changed is not None and policy.marked("never") is None
    policy.feedback("confirmed", "fp-1", changed)
    assert policy.false_positives.n_alerts == 1 and policy.confirmed.n_alerts == 2
    # the job's windows travel to the worker process and back unchanged, with their alerts
    back = load_job(save_job(job, tmp_path / "job.npz"), job.trigger)
    assert back.feedback_counts() == job.feedback_counts()
    assert back.false_positive_ids == ("fp-1",) * 3 + ("fp-2",) * 4 == job.false_positive_ids
    assert back.confirmed_ids == ("ok-1", "ok-1")
    assert job.false_positives is not None and back.false_positives is not None
    np.testing.assert_array_equal(back.false_positives, job.false_positives)
    np.testing.assert_array_equal(back.sample.windows, job.sample.windows)
    empty = RetrainPolicy(s.retrain)._job(
        "schedule", ReservoirSample(_rows(2), ("a", "b"), np.zeros(2)), 0.0
    )
    assert load_job(save_job(empty, tmp_path / "e.npz"), "schedule").false_positives is None


def test_a_version_keeps_the_windows_it_learned_from_and_a_restart_reads_them_back(
    tiny: TinyModel, tmp_path: Path
) -> None:
    art = tiny.artifact
    w, d = art.vae_config.window, art.vae_config.n_features
    fp = np.arange(3 * w * d, dtype=np.float32).reshape(3, w, d)
    registry = Registry(tmp_path / "reg")
    registry.publish(art, trigger="initial",
                     feedback_windows={"false_positive": (("a1", "a1", "a2"), fp)})  # fmt: skip
    registry.promote(art.version)
    found = registry.feedback_windows(art.version)
    assert [(a, x.shape[0]) for a, x in found["false_positive"]] == [("a1", 2), ("a2", 1)]
    np.testing.assert_array_equal(found["false_positive"][1][1], fp[2:])
    # a service starting on that version holds them for its later retrains, as learned ones
    settings = load_settings(
        env={}, kafka={"feedback_topic": "fb"}, registry={"root": str(tmp_path / "reg")}
    )
    lifecycle = Lifecycle(settings, art, ServiceMetrics(), registry)

    async def start() -> None:
        async with lifecycle:
            pass

    asyncio.run(start())
    p = lifecycle.policy
    assert p.false_positives.n_alerts == 2 and len(p.false_positives) == 3
    assert p.due(1e12) is None  # not new: they start no job
    # a person changes a verdict: the windows move, though the episode is long gone
    assert lifecycle.on_feedback(Feedback("a1", "confirmed", "ana", None))
    assert p.false_positives.n_alerts == 1 and p.confirmed.n_alerts == 1
    assert not lifecycle.on_feedback(Feedback("nope", "confirmed", "ana", None))
    other = Registry(tmp_path / "other")
    other.publish(art, trigger="initial")
    assert other.feedback_windows(art.version) == {}


def test_the_registry_lists_what_feedback_a_version_learned_from() -> None:
    fb = {"false_positive_alerts": 2, "false_positive_windows": 40, "confirmed_alerts": 1,
          "confirmed_windows": 16}  # fmt: skip
    lin = Lineage("v-1", parent="v-0", trigger="feedback", feedback=fb)
    assert Lineage.from_dict(_json.loads(_json.dumps(lin.to_dict()))) == lin
    line = VersionInfo("v-1", lin, True).summary()
    assert "feedback fp 2 alerts (40 windows) trained on, confirmed 1 (16) gated on" in line
    assert "feedback" not in VersionInfo("v-0", Lineage("v-0"), False).summary()
    assert Lineage.from_dict({"version": "v-0"}).feedback == {}  # older lineage files


# -- end to end ------------------------------------------------------------------------------

N_SERIES, N_FEATURES, W = 12, 4, 16
TRAIN_END, A0, A1, MID = 900, 1000, 1060, 1300
BUMP_STDS = 4.0


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def _bump(values: F32, series: int, start: int, std: F32) -> None:
    """A smooth 4σ hump over 60 steps on the first two features (a maintenance run, say)."""
    hump = np.sin(np.pi * np.arange(A1 - A0) / (A1 - A0))[:, None]  # (60, 1)
    values[series, start : start + A1 - A0, :2] += BUMP_STDS * hump * std[:2]


def test_a_false_positive_fed_back_no_longer_alerts_after_the_retrain(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        env={},
        window={"size": W},
        model={"hidden": 16, "latent": 4},
        train={"epochs": 8, "batch_size": 64, "lr": 0.005, "torch_threads": 1},
        scoring={"target_fpr": 0.01},
        drift={"enabled": False},  # the one job is the feedback's
        retrain={"min_windows": 1000, "epochs": 10, "fleet_min_series": 10},
        feedback={"retrain_after": 1},
        registry={"root": str(tmp_path / "registry"), "poll_s": 0.2},
        service={"max_batch_records": 500, "max_wait_ms": 20, "device": "cpu",
                 "metrics_port": None},
        kafka={"bootstrap_servers": broker.bootstrap_servers, "group_id": f"g-{tag}",
               "input_topics": [f"in-{tag}"], "alert_topic": f"alerts-{tag}",
               "dead_letter_topic": f"dlq-{tag}", "model_events_topic": f"events-{tag}",
               "feedback_topic": f"feedback-{tag}", "topic_partitions": 2},
    )  # fmt: skip
    k = settings.kafka
    fleet = generate_fleet(N_SERIES, N_FEATURES, MID, seed=5, n_anomalies_per_series=0)
    rows = fleet.values[:, :TRAIN_END].transpose(1, 0, 2).reshape(-1, N_FEATURES)
    keys = tuple(fleet.series_ids) * TRAIN_END
    live = train_artifact(
        RecordBatch(keys, np.repeat(fleet.ts[:TRAIN_END], N_SERIES), rows),
        fleet.feature_names,
        settings,
        device="cpu",
        progress=False,
    )
    registry = Registry(tmp_path / "registry")
    registry.publish(live, trigger="initial")
    registry.promote(live.version)
    values = fleet.values.copy()
    _bump(values, 0, A0, live.scaler.std)
    phase_a = [
        Record(fleet.series_ids[i], float(fleet.ts[t]), values[i, t])
        for t in range(TRAIN_END, MID)
        for i in range(N_SERIES)
    ]
    # Later: machine-000's marked stretch again, as a new series (the same windows), and a
    # control that was never marked (the same hump on machine-005's own stretch)
    control = fleet.values.copy()
    _bump(control, 5, A0, live.scaler.std)
    span = range(A0 - 40, A1 + W + 10)
    later = float(fleet.ts[-1]) + 3600.0
    phase_c = [
        Record(name, later + 60.0 * j, v[i, t])
        for j, t in enumerate(span)
        for name, v, i in (("again-000", values, 0), ("control-005", control, 5))
    ]

    async def send(records: list[Record]) -> None:
        producer = make_producer(k)
        await producer.start()
        try:
            for i in range(0, len(records), 240):
                acks = [
                    await producer.send(
                        k.input_topics[0], encode(r, fleet.feature_names), key=r.series_id.encode()
                    )
                    for r in records[i : i + 240]
                ]
                await asyncio.gather(*acks)
        finally:
            await producer.stop()

    async def until(cond: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not cond():
                await asyncio.sleep(0.1)

    async def scenario() -> tuple[Service, str, list[Any], list[Any], list[Any]]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic,
                                k.model_events_topic, str(k.feedback_topic)])  # fmt: skip
        service = Service(settings, registry.load(), registry=registry)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await until(lambda: service.feedback is not None and service.feedback.ready.is_set(), 30)
        await send(phase_a)
        await until(lambda: service.accounting()["consumed"] >= len(phase_a), 60)
        alerts = [_json.loads(m.value) for m in  # type: ignore[attr-defined]
                  await _consume(k, k.alert_topic, service.accounting()["alerts"])]  # fmt: skip
        marked = [a for a in alerts if a["series_id"] == fleet.series_ids[0]
                  and a["kind"] == "anomaly" and a["event"] == "open"
                  and fleet.ts[A0] <= a["ts"] < fleet.ts[A1]]  # fmt: skip
        assert marked, "the hump must alert under the live model"
        alert_id = marked[0]["alert_id"]
        producer = make_producer(k)
        await producer.start()
        try:
            verdict = {"alert_id": alert_id, "verdict": "false_positive", "by": "on-call"}
            await producer.send_and_wait(str(k.feedback_topic), _json.dumps(verdict))
            await producer.send_and_wait(str(k.feedback_topic), b"not a verdict")
        finally:
            await producer.stop()
        # the feedback starts a job; its candidate is promoted, and swapped in between two
        # batches: a record of an unrelated series brings the next one
        await until(lambda: registry.current() != live.version, 120)
        async with asyncio.timeout(30):
            tick = 0
            while service.live.version == live.version:
                rec = Record("tick", later - 600.0 + tick, fleet.values[1, tick])
                await send([rec])
                tick += 1
                await asyncio.sleep(0.5)
        await send(phase_c)
        n_in = len(phase_a) + tick + len(phase_c)
        await until(lambda: service.accounting()["consumed"] >= n_in, 60)
        stop.set()
        await asyncio.wait_for(task, 30)
        # read partition by partition: phase C's alerts are told apart by their series
        after = [_json.loads(m.value) for m in  # type: ignore[attr-defined]
                 await _consume(k, k.alert_topic, service.accounting()["alerts"])]  # fmt: skip
        events = [_json.loads(m.value) for m in  # type: ignore[attr-defined]
                  await _consume(k, k.model_events_topic, 2)]  # fmt: skip
        dead = await _consume(k, k.dead_letter_topic, 1)
        return service, alert_id, after, events, dead

    service, alert_id, after, events, dead = asyncio.run(scenario())
    promoted, swapped = events
    assert promoted["event"] == "promoted" and promoted["trigger"] == "feedback", promoted
    assert swapped["event"] == "swapped" and swapped["version"] == promoted["version"]
    for e in events:
        assert_valid("model-event", e)
    fb = promoted["feedback"]
    assert fb["false_positive_alerts"] == 1 and fb["false_positive_windows"] >= 10, fb
    gate = promoted["gate"]
    print(f"\nfalse positive {alert_id}: {fb}; gate {gate}")
    # the marked windows: the live model alerted on most of them, the candidate on none
    assert gate["fp_alert_rate_live"] >= 0.5 and gate["fp_alert_rate_candidate"] <= 0.05, gate
    assert registry.lineage(promoted["version"]).feedback == fb
    kept = registry.feedback_windows(promoted["version"])["false_positive"]
    assert [(a, len(w)) for a, w in kept] == [(alert_id, fb["false_positive_windows"])]
    # after the swap, the same stretch again does not alert; the unmarked control still does
    opens = {
        (a["series_id"], a["kind"], a["model_version"] == promoted["version"])
        for a in after
        if a["event"] == "open" and a["series_id"] in ("again-000", "control-005")
    }
    print(f"phase C opens (series, kind, by the new version): {sorted(opens)}")
    assert ("again-000", "anomaly", True) not in opens
    assert ("control-005", "anomaly", True) in opens
    assert all(new for _, _, new in opens)  # phase C was the new version's
    get = service.metrics.registry.get_sample_value
    applied = {"verdict": "false_positive", "outcome": "applied"}
    assert get("stream_vae_feedback_total", applied) == 1
    assert get("stream_vae_feedback_dead_letters_total", {"reason": "bad_json"}) == 1
    headers = dict(dead[0].headers)  # type: ignore[attr-defined]
    assert (
        headers["reason"] == b"bad_json" and headers["source_topic"] == b"feedback-" + tag.encode()
    )

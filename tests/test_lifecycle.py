"""Drift → retrain → validate → promote → hot swap, in the service, on the embedded broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.config import Settings, load_settings
from stream_vae.core.records import RecordBatch, encode
from stream_vae.demo.synthetic import Fleet, generate_fleet
from stream_vae.runtime.live import DetectorOptions, build_detector
from stream_vae.service import Service
from stream_vae.service.kafka import ensure_topics, make_producer
from stream_vae.storage.artifact import Artifact
from stream_vae.storage.registry import Registry
from stream_vae.training.build import train_artifact

from .conftest import TinyModel
from .schemas import assert_valid
from .test_service import _consume

STEP_S = 60.0
CHANGE = 1200  # the regime change (scale and level of every series), in steps
# The stream runs at a fixed rate, whatever the machine: the producer stops once 300 steps were
# scored after the swap, and the stream is long enough for a slow machine's job (20 s on an AVX2
# CPU beside another test worker: with 3,600 steps the swap came with fewer than 300 left; with
# 6,000, ~25 s of stream after the reservoir filled, the job of one full-suite run on that CPU
# had not ended when the stream did). A fast machine stops at the same step whatever the end.
TRAIN_END, STREAM_END = 900, 9000
TARGET_FPR = 0.01


def _batch(fleet: Fleet, start: int, stop: int) -> RecordBatch:
    """Rows [start, stop) of every series, in time order (series interleaved per step)."""
    n, _, d = fleet.values.shape
    values = fleet.values[:, start:stop].transpose(1, 0, 2).reshape(-1, d)  # (T·n, d)
    ts = np.repeat(fleet.ts[start:stop], n)
    keys = tuple(fleet.series_ids) * (stop - start)
    return RecordBatch(keys, ts, values)


def _settings(**extra: Any) -> Settings:
    return load_settings(
        env={},
        window={"size": 16},
        model={"hidden": 16, "latent": 4},
        train={"epochs": 8, "batch_size": 64, "lr": 0.005, "torch_threads": 1},
        scoring={"target_fpr": TARGET_FPR},
        **extra,
    )


def _fresh_topics(broker: EmbeddedBroker) -> dict[str, Any]:
    """Kafka settings for one test: its own group and topics on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    return {
        "bootstrap_servers": broker.bootstrap_servers,
        "group_id": f"g-{tag}",
        "input_topics": [f"in-{tag}"],
        "alert_topic": f"alerts-{tag}",
        "dead_letter_topic": f"dlq-{tag}",
        "model_events_topic": f"events-{tag}",
        "topic_partitions": 2,
    }


def _n_events(service: Service) -> int:
    """Events the service published to the model-events topic (from its counters)."""
    get = service.metrics.registry.get_sample_value
    drift = sum(get("stream_vae_drift_events_total", {"kind": k}) or 0 for k in ("score", "input"))
    outcomes = ("promoted", "rejected", "failed", "swapped")
    model = sum(get("stream_vae_model_events_total", {"event": e}) or 0 for e in outcomes)
    return int(drift + model)


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="module")
def regime() -> tuple[Fleet, Artifact]:
    fleet = generate_fleet(
        12, 4, STREAM_END, seed=3, step_s=STEP_S, n_anomalies_per_series=0, regime_change_at=CHANGE
    )
    live = train_artifact(
        _batch(fleet, 0, TRAIN_END), fleet.feature_names, _settings(), device="cpu", progress=False
    )
    return fleet, live


def test_regime_change_is_detected_retrained_promoted_and_swapped(
    broker: EmbeddedBroker, regime: tuple[Fleet, Artifact], tmp_path: Path
) -> None:
    fleet, live = regime
    registry = Registry(tmp_path / "registry")
    registry.publish(live, trigger="initial")
    registry.promote(live.version)
    settings = _settings(
        kafka=_fresh_topics(broker),
        service={
            "max_batch_records": 500,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
        },
        # The first candidate alerts on ~3% of the held-out windows, near the gate's default
        # bound (2 × the 1% target: 51 of 1,818); the reservoir's sample, and with it the
        # candidate, moves with the batches' boundaries, so under load it fell above the bound
        # and the retry found too little stream left. The gate and its retry have their own
        # tests (test_retrain.py, test_policy.py): here the bound leaves room.
        retrain={
            "min_windows": 12000,
            "epochs": 8,
            "fleet_min_series": 10,
            "max_alert_rate_ratio": 3.0,
        },
        registry={"root": str(tmp_path / "registry"), "poll_s": 0.2},
    )
    k = settings.kafka
    stream = _batch(fleet, TRAIN_END, STREAM_END)
    done_at: list[float] = []
    at_swap: dict[str, int] = {}
    after: dict[str, int] = {}  # counts once 300 steps of windows were scored after the swap

    async def produce() -> int:
        """The stream at ~1,500 records/s, until 300 steps were scored after the swap; returns
        how many records were sent."""
        producer = make_producer(k)
        await producer.start()
        sent = 0
        try:
            names = fleet.feature_names
            for i in range(0, len(stream), 120):  # 10 steps of 12 series at ~1,500 records/s
                if after:
                    break
                acks = [
                    await producer.send(
                        k.input_topics[0], encode(r, names), key=r.series_id.encode()
                    )
                    for r in stream.slice(i, i + 120).records()
                ]
                await asyncio.gather(*acks)
                sent += len(acks)
                await asyncio.sleep(0.08)
        finally:
            await producer.stop()
        return sent

    async def scenario() -> tuple[Service, list[Any], list[Any]]:
        await ensure_topics(
            k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic, k.model_events_topic]
        )
        service = Service(settings, registry.load(), registry=registry)

        def observe(_batch: object, done: float) -> None:
            done_at.append(done)
            if not at_swap and service.live.version != live.version:
                at_swap.update(service.accounting())
            elif at_swap and not after:
                acc = service.accounting()
                if acc["windows"] - at_swap["windows"] >= 300 * fleet.n_series:
                    after.update(acc)

        service.batch_observers.append(observe)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        sent = await produce()
        async with asyncio.timeout(120):
            while service.accounting()["consumed"] < sent:
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 30)
        events = await _consume(k, k.model_events_topic, _n_events(service))
        alerts = await _consume(k, k.alert_topic, service.accounting()["alerts"])
        return service, events, alerts

    service, event_msgs, alert_msgs = asyncio.run(scenario())
    events = [_json.loads(m.value) for m in event_msgs]
    kinds = [e["event"] for e in events]
    for e in events:  # as the published schema describes them
        assert_valid("model-event", e)
    for m in alert_msgs:  # closes forced by the swap (null scores), a fleet incident
        assert_valid("alert", _json.loads(m.value))  # type: ignore[attr-defined]
    # a candidate the gate rejects is retried on newer windows (RetrainPolicy.rejected)
    assert kinds[0] == "drift" and "promoted" in kinds and "swapped" in kinds, events
    drift = events[0]
    promoted = events[kinds.index("promoted")]
    swapped = events[kinds.index("swapped")]
    for e in events[: kinds.index("promoted")]:
        assert e["event"] in ("drift", "rejected"), e
        if e["event"] == "rejected":
            print(f"\nrejected before the promotion: {e['gate']['reasons']}")
    change_ts = float(fleet.ts[CHANGE])
    # detected after the change, within 400 steps (12 series, one sample per series every
    # W = 16 windows: ~300 samples; KSWIN's windows of 100 need to see the new regime). Which
    # windows are sampled depends on how the batches form (at most
    # drift.max_samples_per_batch, 64, a batch, a random choice beyond), so on the machine's
    # load: 307 steps once, in the full suite on 2 cores, against a 300-step bound before.
    assert change_ts <= drift["ts"] <= change_ts + 400 * STEP_S, (drift, change_ts)
    assert promoted["gate"]["passed"] and promoted["parent"] == live.version
    # trained on what came after the evidence of the change, not on the whole reservoir
    assert promoted["data_from_ts"] >= drift["since_ts"] > float(fleet.ts[TRAIN_END])
    assert swapped["version"] == promoted["version"] == registry.current()
    # lineage in the registry
    lineage = registry.lineage(promoted["version"])
    assert lineage.parent == live.version and lineage.trigger == "drift"
    # scoring went on during the job: the longest gap between two published batches
    # (every job: a rejected one is retried)
    gaps = np.concatenate(
        [np.diff([t for t in done_at if t0 <= t <= t1]) for t0, t1 in service.lifecycle.job_times]
    )
    assert len(gaps) > 20, "records must have been flowing during the job"
    longest_ms = 1000 * float(gaps.max())
    t0, t1 = service.lifecycle.job_times[-1]
    print(
        f"\n{len(service.lifecycle.job_times)} retraining job(s), the last {t1 - t0:.1f} s; "
        f"{len(gaps)} batch gaps meanwhile; longest {longest_ms:.0f} ms; "
        f"median {1000 * float(np.median(gaps)):.0f} ms"
    )
    # A job that held the loop would leave gaps of seconds (it trains for ~20 s). Measured alone
    # on 2 cores: 146-162 ms with each batch published before the next was scored, 169-177 ms
    # since a batch's tail runs beside the next one's scoring (its acks then wait for the loop
    # between the next batch's windows and scores), 201 ms once in the full suite.
    assert longest_ms < 250
    # the alert rate after the swap is back within 2× the target (it was ~80% before), over the
    # next 300 steps (the data's slow cycle, 240-1,600 steps, and its AR drift move on later:
    # the monitor, reset at the swap, watches for that)
    assert after, "the swap came too late: fewer than 300 steps of the stream were left after it"
    windows = after["windows"] - at_swap["windows"]
    over = after["windows_over_threshold"] - at_swap["windows_over_threshold"]
    print(f"window alert rate after the swap: {over / windows:.4f} (target {TARGET_FPR})")
    assert over / windows <= 2 * TARGET_FPR
    # alerts carry the version that raised them; episodes open at the swap closed with the old
    alerts = [_json.loads(m.value) for m in alert_msgs]
    versions = {a["model_version"] for a in alerts}
    assert live.version in versions
    swap_closes = [a for a in alerts if a.get("reason") == "model_swap"]
    assert swap_closes and all(a["model_version"] == live.version for a in swap_closes)
    assert swapped["closed_episodes"] == len(swap_closes)
    assert time.time() > t1


def test_retrain_on_demand_publishes_with_lineage_and_promotes_if_it_passes(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream_vae.cli.main import main

    root = tmp_path / "reg"
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny.config.read_text() + "\n[retrain]\nmin_windows = 200\nepochs = 3\n")
    assert main(["registry", "--registry", str(root), "add", str(tiny.model_dir), "--promote"]) == 0
    capsys.readouterr()
    # too little data for the job: one error line, exit 65, nothing published
    small = tmp_path / "small.toml"
    small.write_text(tiny.config.read_text() + "\n[retrain]\nmin_windows = 100000\n")
    assert (
        main(
            [
                "--config",
                str(small),
                "retrain",
                "--registry",
                str(root),
                "--data",
                str(tiny.test_csv),
            ]
        )
        == 65
    )
    assert "retrain needs" in capsys.readouterr().err
    assert len(Registry(root).versions()) == 1
    args = ["--config", str(cfg), "retrain", "--registry", str(root), "--data", str(tiny.test_csv)]
    rc = main(args)
    outcome = _json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == (0 if outcome["event"] == "promoted" else 3)  # a rejection is not a success
    reg = Registry(root)
    lineage = reg.lineage(outcome["version"])
    assert lineage.parent == tiny.artifact.version and lineage.trigger == "manual"
    assert lineage.gate["passed"] == (outcome["event"] == "promoted")
    assert reg.current() == (
        outcome["version"] if outcome["event"] == "promoted" else tiny.artifact.version
    )
    # the windows the live model held in alert episodes were not learned from: the test file
    # has injected anomalies, so fewer windows than the file holds went into the sample
    from stream_vae.storage.tabular import read_table

    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    w = tiny.artifact.vae_config.window
    n_all = sum(max(0, n - w + 1) for n in Counter(table.batch.series_ids).values())
    n_sample = outcome["n_windows"] + outcome["gate"]["n_holdout"] * 2  # train + calib + gate
    assert 0 < n_sample < n_all


def test_every_replica_swaps_within_seconds_of_a_promotion(
    broker: EmbeddedBroker, tiny: TinyModel, tmp_path: Path
) -> None:
    """Two replicas in one group, records flowing; a version promoted by hand (as `stream-vae
    registry promote` does) is live in both within a few poll intervals, and every record is
    still accounted for across the swap."""
    from dataclasses import replace

    from stream_vae.storage.tabular import read_table

    registry = Registry(tmp_path / "reg")
    registry.publish(tiny.artifact, trigger="initial")
    registry.promote(tiny.artifact.version)
    cal = tiny.artifact.calibration
    newer = replace(
        tiny.artifact,
        calibration=replace(cal, threshold=cal.threshold * 1.5),
        version="",
    )
    registry.publish(newer, trigger="manual")
    settings = load_settings(
        env={},
        kafka=_fresh_topics(broker),
        service={
            "max_batch_records": 100,
            "max_wait_ms": 20,
            "device": "cpu",
            "metrics_port": None,
        },
        registry={"root": str(tmp_path / "reg"), "poll_s": 0.5},
    )
    k = settings.kafka
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    records = list(table.batch.records())

    async def scenario() -> tuple[list[Service], float]:
        await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
        replicas = [Service(settings, registry.load(), registry=registry) for _ in range(2)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(stop)) for s in replicas]
        producer = make_producer(k)
        await producer.start()
        try:
            half = len(records) // 2
            for r in records[:half]:
                await producer.send(
                    k.input_topics[0], encode(r, table.feature_names), key=r.series_id.encode()
                )
            async with asyncio.timeout(60):  # both replicas hold partitions and score
                while not all(s.accounting()["consumed"] for s in replicas):
                    await asyncio.sleep(0.1)
            t0 = time.monotonic()
            registry.promote(newer.version, reason="test")
            for r in records[half:]:  # keep records flowing: a swap happens between batches
                await producer.send(
                    k.input_topics[0], encode(r, table.feature_names), key=r.series_id.encode()
                )
                await asyncio.sleep(0.002)
                if all(s.live.version == newer.version for s in replicas):
                    break
            async with asyncio.timeout(30):
                while not all(s.live.version == newer.version for s in replicas):
                    await asyncio.sleep(0.05)
            switched_s = time.monotonic() - t0
        finally:
            await producer.stop()
            stop.set()
            await asyncio.gather(*tasks)
        return replicas, switched_s

    replicas, switched_s = asyncio.run(scenario())
    print(f"\nboth replicas on {newer.version} {switched_s:.2f} s after the promotion")
    assert switched_s < 5.0  # poll every 0.5 s: a few intervals at most
    for s in replicas:
        acc = s.accounting()
        assert acc["unaccounted"] == 0
        assert s.lifecycle.live_version == newer.version


@pytest.mark.parametrize("change", ["features", "calendar"])
def test_a_version_with_other_inputs_is_refused_once_and_not_reloaded(
    tiny: TinyModel, change: str
) -> None:
    """Another feature set, or a calendar the live windows do not carry: no swap."""
    from dataclasses import replace

    from stream_vae.service.lifecycle import Swap

    service = Service(load_settings(env={}, service={"device": "cpu"}), tiny.artifact)
    if change == "features":
        other = replace(tiny.artifact, feature_names=("x", "y", "z"), version="")
    else:
        window = tiny.artifact.spec.window.model_copy(update={"calendar": ("day",)})
        spec = tiny.artifact.spec.model_copy(update={"window": window})
        other = replace(tiny.artifact, spec=spec, version="v-with-calendar")
    service.lifecycle._swap = Swap(other, build_detector(other, DetectorOptions(device="cpu")))
    assert service._swap_model(service.lifecycle.take_swap()) == ()
    assert service.live.version == tiny.artifact.version
    assert service.lifecycle._refused == {other.version}
    assert [e["event"] for e in service.lifecycle.take_events()] == ["refused"]


def test_a_service_started_with_a_model_publishes_it_so_that_retraining_can_start_from_it(
    tiny: TinyModel, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "reg")
    settings = load_settings(env={}, registry={"root": str(tmp_path / "reg")})
    service = Service(settings, tiny.artifact)

    async def start_and_stop() -> None:
        async with service.lifecycle:
            pass

    asyncio.run(start_and_stop())
    assert [v.version for v in registry.versions()] == [tiny.artifact.version]
    assert registry.current() is None  # published, not promoted
    assert registry.load(tiny.artifact.version).version == tiny.artifact.version


def test_a_killed_retrain_worker_fails_its_job_and_the_next_one_runs(
    tiny: TinyModel, tmp_path: Path
) -> None:
    """Issue 16: after an OOM-style SIGKILL of the retrain worker the gauge stayed at 1, no
    `failed` event came and no job ever started again. Now the death fails the job (an event
    that says so), the gauge drops, and the next job runs to its end."""
    import os
    import signal

    from stream_vae.core.sample import ReservoirSample
    from stream_vae.lifecycle.policy import Job
    from stream_vae.runtime.live import LiveModel
    from stream_vae.service.lifecycle import Lifecycle
    from stream_vae.service.metrics import ServiceMetrics
    from stream_vae.storage.tabular import read_table

    registry = Registry(tmp_path / "reg")
    registry.publish(tiny.artifact, trigger="initial")
    registry.promote(tiny.artifact.version)
    settings = load_settings(
        env={},
        registry={"root": str(tmp_path / "reg")},
        service={"device": "cpu"},
        retrain={"min_windows": 100, "epochs": 2},
    )
    table = read_table(tiny.train_csv, feature_names=tiny.artifact.feature_names)
    ready = LiveModel(tiny.artifact, DetectorOptions(device="cpu")).prepare(
        table.batch.in_time_order()
    )
    job = Job("schedule", ReservoirSample(ready.values, ready.keys, ready.ts))
    metrics = ServiceMetrics()
    lc = Lifecycle(settings, tiny.artifact, metrics, registry)

    def retraining() -> float:
        value = metrics.registry.get_sample_value("stream_vae_retraining")
        assert value is not None
        return value

    async def scenario() -> tuple[list[dict[str, Any]], float, list[dict[str, Any]]]:
        task = asyncio.create_task(lc._run_job(job))
        async with asyncio.timeout(30):
            while lc._proc is None or lc._proc.pid is None:
                await asyncio.sleep(0.02)
        assert retraining() == 1
        os.kill(lc._proc.pid, signal.SIGKILL)
        await asyncio.wait_for(task, 30)
        first, gauge = lc.take_events(), retraining()
        await asyncio.wait_for(lc._run_job(job), 180)
        return first, gauge, lc.take_events()

    first, gauge, second = asyncio.run(scenario())
    assert [e["event"] for e in first] == ["failed"], first
    assert "died without an answer" in first[0]["error"] and "-9" in first[0]["error"]
    assert gauge == 0
    assert [e["event"] for e in second] in (["promoted"], ["rejected"]), second

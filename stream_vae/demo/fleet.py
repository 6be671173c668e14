"""The fleet demo: train on a generated fleet's past, then stream its future through the
embedded broker and the real service; a producer replays the telemetry into Kafka while a reader
reports the alerts as they arrive on the alert topic, then the injected anomalies are matched."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from .. import _json
from ..broker import EmbeddedBroker
from ..config import Settings
from ..core.records import RecordBatch
from ..evaluation.events import Segment
from ..runtime.live import DetectorOptions, LiveModel
from ..service import Service
from ..service.kafka import client_options, ensure_topics
from ..service.replay import replay
from ..storage.artifact import Artifact
from ..storage.tabular import Table
from ..training.build import train_artifact
from .alerting import OwnThreshold, own_threshold, report_drift
from .synthetic import Fleet, generate_fleet

__all__ = ["read_topic", "run_fleet_demo", "stream_through_kafka"]

Progress = Callable[[int, int, dict[str, int]], None]


async def stream_through_kafka(
    artifact: Artifact,
    records: RecordBatch,
    settings: Settings,
    on_alert: Callable[[dict[str, Any]], None],
    on_progress: Progress,
    *,
    rate: float | None = None,
    timeout_s: float = 300.0,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Produce ``records``, run the service until it consumed them all, collect the alerts."""
    k = settings.kafka
    topic = k.input_topics[0]
    await ensure_topics(k, [topic, k.alert_topic, k.dead_letter_topic])
    service = Service(settings, artifact)
    stop = asyncio.Event()
    alerts: list[dict[str, Any]] = []
    reader = asyncio.create_task(_read_alerts(settings, alerts, on_alert))
    running = asyncio.create_task(service.run(stop))
    try:
        sent = await replay(
            Table(records, artifact.feature_names),
            k,
            topic,
            rate=rate,
            create_topic=False,
            chunk=500,
            on_sent=lambda n: on_progress(n, len(records), service.accounting()),
        )
        async with asyncio.timeout(timeout_s):
            while service.accounting()["consumed"] < len(records):
                if running.done():
                    running.result()  # the service died: raise its error
                await asyncio.sleep(0.5)
                on_progress(sent, len(records), service.accounting())
            stop.set()
            await running
            while len(alerts) < service.accounting()["alerts"]:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if not running.done():
            await running
    return alerts, service.accounting()


async def _read_alerts(
    settings: Settings, out: list[dict[str, Any]], on_alert: Callable[[dict[str, Any]], None]
) -> None:
    await read_topic(settings, settings.kafka.alert_topic, out, on_alert)


async def read_topic(
    settings: Settings,
    topic: str,
    out: list[dict[str, Any]],
    on_message: Callable[[dict[str, Any]], None],
) -> None:
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while True:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                for m in msgs:
                    msg = _json.loads(m.value)
                    out.append(msg)
                    on_message(msg)
    finally:
        await consumer.stop()


def run_fleet_demo(
    base: Settings,
    say: Callable[[str], None],
    *,
    series: int,
    features: int,
    steps: int,
    seed: int,
    epochs: int,
    rate: float,
    device: str,
    out: Path,
) -> int:
    """Train on a generated fleet's past; stream its future through Kafka and the service;
    report what was found (``say`` prints a line)."""
    # The demo trades a little accuracy for time: fewer epochs than a production fit.
    settings = base.model_copy(update={"train": base.train.model_copy(update={"epochs": epochs})})
    fleet = generate_fleet(series, features, steps, seed=seed, anomaly_start=int(steps * 0.6))
    past, future = fleet.split(int(steps * 0.6))
    say(
        f"fleet: {series} series x {features} sensors, {steps} steps; training on "
        f"the first {past.n_steps} steps, then streaming {future.n_steps} steps with "
        f"{len(future.injections)} injected anomalies through Kafka"
    )
    sids, ts, values, _ = past.interleaved()
    art = train_artifact(
        RecordBatch(tuple(sids), ts, values),
        fleet.feature_names,
        settings,
        device=device,
        progress=True,
    )
    say(
        f"model {art.version}: alpha {art.hybrid.alpha:.2f}, threshold {art.threshold:.3f} "
        f"({art.calibration.method}), {art.training['metrics']['train_seconds']:.0f} s"
    )
    sids, ts, values, _ = future.interleaved()
    stream = RecordBatch(tuple(sids), ts, values)
    last_progress = [0.0]

    def on_alert(a: dict[str, Any]) -> None:
        when = datetime.fromtimestamp(a["ts"], UTC).strftime("%Y-%m-%d %H:%M")
        top = ", ".join(f"{t['feature']} {t['share']:.0%}" for t in a["top_features"])
        head = f"{when}  {a['event'].upper():5}  {a['series_id']}"
        if a.get("kind", "anomaly") != "anomaly":  # a data-quality alert: its kind says it all
            names = ", ".join(t["feature"] for t in a["top_features"])
            say(f"{head}  {a['kind']}  {names}")
            return
        say(f"{head}  score {a['score']:.2f} (threshold {a['threshold']:.2f})  top: {top}")

    def on_progress(sent: int, total: int, acc: dict[str, int]) -> None:
        now = time.monotonic()
        if now - last_progress[0] >= 2.0 or acc["consumed"] >= total:
            last_progress[0] = now
            say(
                f"  .. produced {sent}/{total}, consumed {acc['consumed']}, windows scored "
                f"{acc['windows']}, alerts {acc['alerts']}",
            )

    tag = uuid.uuid4().hex[:6]
    with EmbeddedBroker() as broker:
        say(f"embedded Kafka-compatible broker on {broker.bootstrap_servers}")
        kafka = settings.kafka.model_copy(
            update={
                "bootstrap_servers": broker.bootstrap_servers,
                "group_id": f"demo-{tag}",
                "input_topics": ("telemetry",),
                "topic_partitions": 4,
                "session_timeout_ms": 6000,
            }
        )
        service = settings.service.model_copy(update={"metrics_port": 0})  # any free port
        run_settings = settings.model_copy(update={"kafka": kafka, "service": service})
        alerts, acc = asyncio.run(
            stream_through_kafka(art, stream, run_settings, on_alert, on_progress, rate=rate)
        )
    step_s = float(fleet.ts[1] - fleet.ts[0])
    segments = [
        Segment(i.series_id, i.start + past.n_steps, i.end + past.n_steps, i.kind)
        for i in future.injections
    ]

    def score(got: list[dict[str, Any]]) -> OwnThreshold:
        return own_threshold(
            got,
            segments,
            series_ids=sorted(set(stream.series_ids)),
            t0=float(fleet.ts[0]),
            step_s=step_s,
            steps=(past.n_steps + art.vae_config.window - 1, steps),
            tolerance=art.vae_config.window,
            target=art.calibration.target_fpr,
        )

    own = score(alerts)
    report = own.events
    n_incidents = sum(1 for a in alerts if a["event"] == "open" and a["kind"] == "incident")
    say(
        f"\nconsumed {acc['consumed']} records: {acc['scored']} scored, {acc['buffered']} "
        f"buffered (windows filling), {acc['late']} late, {acc['dead_letters']} dead letters"
    )
    say(
        f"detected {report.n_detected}/{report.n_segments} injected anomalies "
        f"(recall {report.recall:.2f}); {report.n_alerts} alerts, {report.n_false} false "
        f"(precision {report.precision:.2f}); mean delay {report.mean_delay:.1f} steps"
        + (f"; {n_incidents} fleet incident(s)" if n_incidents else "")
    )
    say("recall by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in report.recall_by_kind.items()))
    mode = settings.alerts.threshold_mode
    say(f"as it alerts ({mode} threshold): {own.line()}")
    report_drift(art, settings, stream, score, say)
    _plot(out, art, future, stream, alerts, say)
    return 0


def _plot(
    out: Path,
    art: Artifact,
    future: Fleet,
    stream: RecordBatch,
    alerts: list[Any],
    say: Callable[[str], None],
) -> None:
    """A PNG of four series with injected anomalies: a channel, the score, alerts, labels."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say("(no plot: pip install matplotlib)")
        return
    from ..evaluation.plot import plot_series

    # The same scores the service computed, recomputed through the same path for the picture.
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for sc in LiveModel(art, DetectorOptions(device="cpu")).stream(stream, 4000):
        for k, t, v in zip(sc.keys, sc.ts.tolist(), sc.smoothed.tolist(), strict=True):
            ts_list, v_list = scores.setdefault(k, ([], []))
            ts_list.append(t)
            v_list.append(v)
    by_series: dict[str, list[Any]] = {}
    for inj in future.injections:
        by_series.setdefault(inj.series_id, []).append(inj)
    chosen = sorted(by_series)[:4]
    step = float(future.ts[1] - future.ts[0])
    ch = {sid: by_series[sid][0].features[0] for sid in chosen}
    out.mkdir(parents=True, exist_ok=True)
    path = plot_series(
        out / "demo.png",
        chosen,
        {sid: future.values[future.series_ids.index(sid), :, ch[sid]] for sid in chosen},
        future.ts,
        {sid: (np.asarray(scores[sid][0]), np.asarray(scores[sid][1])) for sid in chosen},
        art.threshold,
        alerts,
        {
            sid: [(future.ts[i.start], future.ts[0] + i.end * step) for i in by_series[sid]]
            for sid in chosen
        },
    )
    say(f"plot: {path}")

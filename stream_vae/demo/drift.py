"""The drift demo: every sensor of a fleet changes scale and level; the service detects the
drift, retrains in a worker process, gates the candidate, promotes it and swaps to it, live."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..broker import EmbeddedBroker
from ..config import Settings
from ..core.records import RecordBatch
from ..service import Service
from ..service.kafka import ensure_topics
from ..service.replay import replay
from ..storage.registry import Registry
from ..storage.tabular import Table
from ..training.build import train_artifact
from .fleet import read_topic
from .synthetic import generate_fleet

__all__ = ["drift_cycle", "run_drift_demo"]


def run_drift_demo(
    base: Settings, say: Callable[[str], None], *, seed: int, rate: float, out: Path
) -> int:
    """Train on a fleet's past; at 40% of the stream every sensor's scale and level change; the
    service detects the drift, retrains in a worker process, gates, promotes and swaps, live."""
    torch.set_num_threads(1)  # the retraining worker gets the other core
    # The stream runs at a fixed rate whatever the machine, and stops 300 steps after the swap:
    # its length leaves a slow machine's job time (3,300 steps were too few on an AVX2-only CPU,
    # where the job was still running when the stream ended).
    steps, train_end, change, after_swap = 6000, 900, 1200, 300
    n_series = 12
    fleet = generate_fleet(
        n_series, 4, steps, seed=seed, n_anomalies_per_series=0, regime_change_at=change
    )
    settings = base.model_copy(
        update={
            "window": base.window.model_copy(update={"size": 16}),
            "model": base.model.model_copy(update={"hidden": 16, "latent": 4}),
            "train": base.train.model_copy(
                update={"epochs": 8, "batch_size": 64, "lr": 0.005, "torch_threads": 1}
            ),
            "scoring": base.scoring.model_copy(update={"target_fpr": 0.01}),
            "retrain": base.retrain.model_copy(
                update={"min_windows": 600 * n_series, "epochs": 8, "fleet_min_series": 10}
            ),
        }
    )
    sids, ts, values, _ = fleet.split(train_end)[0].interleaved()
    art = train_artifact(
        RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings, device="cpu"
    )
    root = out / "registry"
    shutil.rmtree(root, ignore_errors=True)
    registry = Registry(root)
    registry.publish(art, trigger="initial")
    registry.promote(art.version, reason="demo: initial model")
    say(
        f"model {art.version} trained on steps 0-{train_end} of {n_series} series; registry "
        f"{root}; streaming from step {train_end} until {after_swap} steps after a swap (at most "
        f"to step {steps}); every sensor changes scale and level at step {change}"
    )
    future = fleet.split(train_end)[1]
    sids, ts, values, _ = future.interleaved()
    stream = RecordBatch(tuple(sids), ts, values)
    step_s = float(fleet.ts[1] - fleet.ts[0])

    def on_event(e: dict[str, Any]) -> None:
        at = f"step {round((e['ts'] - fleet.ts[0]) / step_s)}" if "ts" in e else ""
        if e["event"] == "drift":
            say(f"DRIFT    {e['kind']} on {e['channel']} at {at} (p = {e['p_value']:.1e})")
        elif e["event"] in ("promoted", "rejected"):
            g = e["gate"]
            say(
                f"{e['event'].upper():8} {e['version']} (parent {e['parent']}, {e['trigger']}): "
                f"trained {e['train_seconds']:.1f} s on {e['n_windows']} clean windows; gate: "
                f"-ELBO {g['candidate_neg_elbo']:.3f} vs live {g['live_neg_elbo']:.3f}, "
                f"alert rate {g['alert_rate']:.3%} (≤ {int(g['max_alerts'])} alerts allowed)"
                + ("" if g["passed"] else f"; rejected: {'; '.join(g['reasons'])}")
            )
        elif e["event"] == "swapped":
            say(
                f"SWAPPED  {e['previous']} -> {e['version']} between two batches "
                f"({e['closed_episodes']} open episodes closed with reason model_swap)"
            )
        else:
            say(f"{e['event'].upper():8} {e}")

    tag = uuid.uuid4().hex[:6]
    with EmbeddedBroker() as broker:
        kafka = settings.kafka.model_copy(
            update={
                "bootstrap_servers": broker.bootstrap_servers,
                "group_id": f"demo-drift-{tag}",
                "input_topics": (f"telemetry-{tag}",),
                "topic_partitions": 2,
            }
        )
        run_settings = settings.model_copy(
            update={
                "kafka": kafka,
                "service": settings.service.model_copy(
                    update={"metrics_port": None, "device": "cpu", "max_batch_records": 500}
                ),
                "registry": settings.registry.model_copy(update={"root": root, "poll_s": 0.5}),
            }
        )
        alerts: list[dict[str, Any]] = []
        service, _, at_swap = asyncio.run(
            drift_cycle(
                run_settings,
                registry,
                stream,
                on_event,
                rate=min(rate, 1500.0),
                alerts=alerts,
                after_swap=after_swap * n_series,
            )
        )
    acc = service.accounting()
    say("\n" + _alert_line(alerts, service, n_series))
    if at_swap:
        t0, t1 = service.lifecycle.job_times[0]
        before = at_swap["windows_over_threshold"] / max(1, at_swap["windows"])
        after = (acc["windows_over_threshold"] - at_swap["windows_over_threshold"]) / max(
            1, acc["windows"] - at_swap["windows"]
        )
        say(
            f"\nwindows over the threshold: {before:.1%} until the swap (the old model on the "
            f"new regime), {after:.2%} after it (target {settings.scoring.target_fpr:.0%}); "
            f"retraining took {t1 - t0:.1f} s while scoring went on"
        )
    else:
        say("\nno swap happened (see the events above)")
    say("registry: stream-vae registry --registry " + str(root) + " list")
    return 0 if at_swap else 1


def _alert_line(alerts: list[dict[str, Any]], service: Service, n_series: int) -> str:
    """What the change looked like on the alert topic: fleet incidents, not one alert each."""
    opens = [a for a in alerts if a["event"] == "open"]
    incidents = [a for a in opens if a.get("kind") == "incident"]
    anomalies = [a for a in opens if a.get("kind", "anomaly") == "anomaly"]
    joined = service.metrics.registry.get_sample_value(
        "stream_vae_alerts_suppressed_total", {"reason": "incident"}
    )
    first = ", ".join(
        f"{len(i['members'])} machines at first, sharing "
        + "/".join(t["feature"] for t in i["top_features"])
        for i in incidents[:3]
    )
    return (
        f"alerts: {len(incidents)} fleet incident(s) ({first or '-'}); {len(anomalies)} anomaly "
        f"episodes published one by one, {int(joined or 0)} more joined an incident instead "
        f"({n_series} machines)"
    )


async def drift_cycle(
    settings: Settings,
    registry: Registry,
    records: RecordBatch,
    on_event: Callable[[dict[str, Any]], None],
    *,
    rate: float,
    timeout_s: float = 300.0,
    alerts: list[dict[str, Any]] | None = None,
    after_swap: int | None = None,
) -> tuple[Service, list[dict[str, Any]], dict[str, int]]:
    """Stream ``records`` through the service with drift monitoring and retraining on; report
    model events as they arrive. Returns the service, the events and the counts at the swap;
    the alert messages are appended to ``alerts`` when given. With ``after_swap``, the stream
    stops once that many windows were scored after the swap."""
    k = settings.kafka
    topic = k.input_topics[0]
    await ensure_topics(k, [topic, k.alert_topic, k.dead_letter_topic, k.model_events_topic])
    service = Service(settings, registry.load(), registry=registry)
    at_swap: dict[str, int] = {}
    first = service.live.version

    def observe(_batch: object, _done: float) -> None:
        if not at_swap and service.live.version != first:
            at_swap.update(service.accounting())

    service.batch_observers.append(observe)
    stop = asyncio.Event()
    events: list[dict[str, Any]] = []
    reader = asyncio.create_task(read_topic(settings, k.model_events_topic, events, on_event))
    readers = [reader]
    if alerts is not None:
        readers.append(
            asyncio.create_task(read_topic(settings, k.alert_topic, alerts, lambda _: None))
        )
    running = asyncio.create_task(service.run(stop))

    def swapped_long_enough() -> bool:
        if after_swap is None or not at_swap:
            return False
        return service.accounting()["windows"] - at_swap["windows"] >= after_swap

    try:
        sent = await replay(
            Table(records, service.live.artifact.feature_names),
            k,
            topic,
            rate=rate,
            create_topic=False,
            chunk=500,
            until=swapped_long_enough,
        )
        async with asyncio.timeout(timeout_s):
            while service.accounting()["consumed"] < sent:
                if running.done():
                    running.result()
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        if not running.done():
            await running
        await asyncio.sleep(1.0)  # the last events reach the readers
        for r in readers:
            r.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await r
    return service, events, at_swap

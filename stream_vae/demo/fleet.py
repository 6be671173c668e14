"""The demo's streaming half: a producer replays telemetry into Kafka while the real service
scores it and a reader prints the alerts as they arrive on the alert topic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from .. import _json
from ..config import Settings
from ..core.records import RecordBatch
from ..service import Service
from ..service.kafka import client_options, ensure_topics
from ..service.replay import replay
from ..storage.artifact import Artifact
from ..storage.registry import Registry
from ..storage.tabular import Table

__all__ = ["drift_cycle", "stream_through_kafka"]

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
    await _read_topic(settings, settings.kafka.alert_topic, out, on_alert)


async def _read_topic(
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


async def drift_cycle(
    settings: Settings,
    registry: Registry,
    records: RecordBatch,
    on_event: Callable[[dict[str, Any]], None],
    *,
    rate: float,
    timeout_s: float = 300.0,
) -> tuple[Service, list[dict[str, Any]], dict[str, int]]:
    """Stream ``records`` through the service with drift monitoring and retraining on; report
    model events as they arrive. Returns the service, the events and the counts at the swap."""
    k = settings.kafka
    topic = k.input_topics[0]
    await ensure_topics(k, [topic, k.alert_topic, k.dead_letter_topic, k.model_events_topic])
    service = Service(settings, registry.load(), registry=registry)
    at_swap: dict[str, int] = {}
    first = service.artifact.version

    def observe(_batch: object, _done: float) -> None:
        if not at_swap and service.artifact.version != first:
            at_swap.update(service.accounting())

    service.batch_observers.append(observe)
    stop = asyncio.Event()
    events: list[dict[str, Any]] = []
    reader = asyncio.create_task(_read_topic(settings, k.model_events_topic, events, on_event))
    running = asyncio.create_task(service.run(stop))
    try:
        await replay(
            Table(records, service.artifact.feature_names),
            k,
            topic,
            rate=rate,
            create_topic=False,
            chunk=500,
        )
        async with asyncio.timeout(timeout_s):
            while service.accounting()["consumed"] < len(records):
                if running.done():
                    running.result()
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        if not running.done():
            await running
        await asyncio.sleep(1.0)  # the last events reach the reader
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return service, events, at_swap

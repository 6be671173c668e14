"""Produce a telemetry file to a topic as contract messages (backfill, tests with real data)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..config import KafkaSettings
from ..core.records import encode
from ..storage.tabular import Table
from .kafka import ensure_topics, make_producer

__all__ = ["replay"]

log = logging.getLogger(__name__)


async def replay(
    table: Table,
    kafka: KafkaSettings,
    topic: str,
    *,
    rate: float | None = None,
    create_topic: bool = True,
    chunk: int = 2000,
    on_sent: Callable[[int], None] | None = None,
    until: Callable[[], bool] | None = None,
) -> int:
    """Send every row of ``table`` in file order, keyed by series id; returns the count.

    ``rate`` (messages/s) paces the stream; ``None`` sends as fast as the broker takes it.
    Returns after the broker acknowledged every message. ``on_sent`` is called with the
    running count after each acknowledged chunk of ``chunk`` messages; ``until``, before each
    chunk: once it returns true, nothing more is sent.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 messages/s")
    if create_topic:
        await ensure_topics(kafka, [topic])
    producer = make_producer(kafka)
    await producer.start()
    loop = asyncio.get_running_loop()
    t0, sent = loop.time(), 0
    names = table.feature_names
    try:
        batch = table.batch
        for start in range(0, len(batch), chunk):
            if until is not None and until():
                break
            part = batch.slice(start, start + chunk)
            acks = [
                await producer.send(topic, encode(rec, names), key=rec.series_id.encode())
                for rec in part.records()
            ]
            await asyncio.gather(*acks)
            sent += len(part)
            if on_sent is not None:
                on_sent(sent)
            if rate is not None:
                await asyncio.sleep(max(0.0, t0 + sent / rate - loop.time()))
    finally:
        await producer.stop()
    log.info("replayed %d records to %s in %.1f s", sent, topic, loop.time() - t0)
    return sent

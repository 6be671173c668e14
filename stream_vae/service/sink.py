"""Alerts and dead letters → Kafka; returns only once the broker acknowledged all of them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from .. import _json
from ..scoring.alerts import Alert
from .source import DeadLetter

__all__ = ["KafkaSink"]


class KafkaSink:
    def __init__(
        self, producer: AIOKafkaProducer, alert_topic: str, dead_letter_topic: str
    ) -> None:
        self.producer = producer
        self.alert_topic = alert_topic
        self.dead_letter_topic = dead_letter_topic

    async def publish(self, alerts: Sequence[Alert], rejected: Sequence[DeadLetter]) -> None:
        """Send alerts (keyed by series) and dead letters; wait for every acknowledgement."""
        acks = [
            await self.producer.send(
                self.alert_topic, _json.dumps(a.to_dict()), key=a.series_id.encode()
            )
            for a in alerts
        ]
        acks += [
            await self.producer.send(
                self.dead_letter_topic,
                d.value,
                key=d.key,
                headers=[
                    ("reason", d.reason.encode()),
                    ("error", d.message.encode()[:1000]),
                    ("source_topic", d.topic.encode()),
                    ("source_partition", str(d.partition).encode()),
                    ("source_offset", str(d.offset).encode()),
                ],
            )
            for d in rejected
        ]
        if acks:
            await asyncio.gather(*acks)

    async def publish_events(self, topic: str, events: Sequence[dict[str, Any]]) -> None:
        """Model lifecycle events (drift, promoted, rejected, swapped) as JSON; wait for acks."""
        # one key: one partition, so that consumers read the events in the order they happened
        acks = [await self.producer.send(topic, _json.dumps(e), key=b"stream-vae") for e in events]
        if acks:
            await asyncio.gather(*acks)

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

# A dead letter must fit where its input came from (the broker's message limit, which on Apache
# Kafka's defaults is about kafka.max_message_bytes): an oversized input's bytes, plus the key
# and headers, would otherwise fail to produce on every restart (a poison pill). The value keeps
# this much less than the limit for the key (cut to _KEY_BYTES), the headers (the error is cut
# to 1,000 bytes) and the record's framing.
_OVERHEAD_BYTES = 16 << 10
_KEY_BYTES = 1024


class KafkaSink:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        alert_topic: str,
        dead_letter_topic: str,
        *,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self.producer = producer
        self.alert_topic = alert_topic
        self.dead_letter_topic = dead_letter_topic
        self._value_bytes = max(1024, max_message_bytes - _OVERHEAD_BYTES)

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
                None if d.value is None else d.value[: self._value_bytes],
                key=None if d.key is None else d.key[:_KEY_BYTES],
                headers=self._headers(d),
            )
            for d in rejected
        ]
        if acks:
            await asyncio.gather(*acks)

    def _headers(self, d: DeadLetter) -> list[tuple[str, bytes]]:
        headers = [
            ("reason", d.reason.encode()),
            ("error", d.message.encode()[:1000]),
            ("source_topic", d.topic.encode()),
            ("source_partition", str(d.partition).encode()),
            ("source_offset", str(d.offset).encode()),
        ]
        sizes = [("value", d.value, self._value_bytes), ("key", d.key, _KEY_BYTES)]
        # what was cut, and from how many bytes: the source offset still finds the whole record
        headers += [
            (f"original_{name}_bytes", str(len(b)).encode())
            for name, b, cap in sizes
            if b is not None and len(b) > cap
        ]
        return headers

    async def publish_events(self, topic: str, events: Sequence[dict[str, Any]]) -> None:
        """Model lifecycle events (drift, promoted, rejected, swapped) as JSON; wait for acks."""
        # one key: one partition, so that consumers read the events in the order they happened
        acks = [await self.producer.send(topic, _json.dumps(e), key=b"stream-vae") for e in events]
        if acks:
            await asyncio.gather(*acks)

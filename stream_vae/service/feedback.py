"""The feedback topic → the lifecycle: people's verdicts on alerts (see
:mod:`stream_vae.lifecycle.feedback` for what each verdict teaches).

Every replica reads every partition of ``kafka.feedback_topic`` (no consumer group): a verdict
names an alert, not a partition, and only the replica that scored the alert holds its windows.
It reads from the end at start-up, since what it holds starts then too. A message that is not
a valid verdict goes to the dead-letter topic with its reason and is counted; it never stops
the reader.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from ..config import KafkaSettings
from ..contracts import FeedbackMessage
from ..core.records import parse_ts
from ..errors import RecordError
from ..lifecycle.feedback import Feedback
from .kafka import make_consumer
from .lifecycle import Lifecycle
from .metrics import ServiceMetrics
from .sink import KafkaSink
from .source import DeadLetter

__all__ = ["FeedbackReader", "parse_feedback"]

log = logging.getLogger(__name__)


def parse_feedback(value: bytes | None, max_bytes: int = 1 << 16) -> Feedback:
    """A feedback message's value → :class:`Feedback`; :class:`RecordError` with the reason
    (``bad_json``, ``missing_field``, ``bad_value``, ``bad_timestamp``, ``oversized``)."""
    if value is None:
        raise RecordError("missing_field", "the message has no value")
    if len(value) > max_bytes:
        raise RecordError("oversized", f"{len(value)} bytes > {max_bytes}")
    try:
        msg = FeedbackMessage.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        kind = str(first["type"])
        where = ".".join(str(p) for p in first["loc"]) or "the message"
        reason = (
            "bad_json"
            if kind.startswith("json") or kind == "model_type"
            else "missing_field"
            if kind == "missing"
            else "bad_value"
        )
        raise RecordError(reason, f"{where}: {first['msg']}") from None
    try:
        ts = None if msg.ts is None else parse_ts(msg.ts)
    except RecordError as exc:
        raise RecordError("bad_timestamp", exc.message) from None
    return Feedback(msg.alert_id, msg.verdict, msg.by or "", ts)


class FeedbackReader:
    """Reads verdicts and hands them to the lifecycle; :attr:`ready` is set once the reader's
    position on every partition is fixed (a verdict sent after that is read)."""

    def __init__(
        self, kafka: KafkaSettings, lifecycle: Lifecycle, sink: KafkaSink, metrics: ServiceMetrics
    ) -> None:
        assert kafka.feedback_topic is not None
        self.topic = kafka.feedback_topic
        self.kafka = kafka
        self.lifecycle = lifecycle
        self.sink = sink
        self.metrics = metrics
        self.ready = asyncio.Event()
        self.retry_s = 5.0

    async def run(self) -> None:
        """Until cancelled; a failure (the broker gone past the client's retries) is logged and
        the reader starts again, from the end, after ``retry_s``."""
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop boundary: scoring goes on without feedback meanwhile
                self.ready.clear()
                log.exception("the feedback reader failed; starting again in %.0f s", self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def _run_once(self) -> None:
        consumer = make_consumer(self.kafka, self.topic, group_id=None, auto_offset_reset="latest")
        await consumer.start()
        try:
            for tp in consumer.assignment():
                await consumer.position(tp)  # resolves "latest" now, not at the first fetch
            self.ready.set()
            log.info("reading feedback from %s", self.topic)
            while True:
                await self._step(consumer)
        finally:
            await consumer.stop()

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=1000, max_records=500)
        rejected = []
        for tp, messages in batches.items():
            for m in messages:
                try:
                    fb = parse_feedback(m.value, self.kafka.max_message_bytes)
                except RecordError as exc:
                    log.warning(
                        "feedback at %s[%d]@%d refused: %s", tp.topic, tp.partition, m.offset, exc
                    )
                    self.metrics.add_feedback_dead_letter(exc.reason)
                    rejected.append(
                        DeadLetter(
                            m.key,
                            m.value,
                            exc.reason,
                            exc.message,
                            tp.topic,
                            tp.partition,
                            m.offset,
                        )
                    )
                    continue
                self.lifecycle.on_feedback(fb)
        if rejected:
            await self.sink.publish((), rejected)

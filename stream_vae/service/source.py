"""Kafka → validated records, plus dead letters for everything that does not decode.

Every consumed offset ends up in exactly one place: a record in ``SourceBatch.records`` or a
dead letter in ``SourceBatch.rejected``; ``n_consumed`` is their sum.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from ..core.records import Record, RecordBatch, RecordDecoder
from ..errors import RecordError

__all__ = ["DeadLetter", "KafkaSource", "SourceBatch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be used, with where it came from and why."""

    key: bytes | None
    value: bytes | None
    reason: str
    message: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class SourceBatch:
    records: RecordBatch
    rejected: tuple[DeadLetter, ...]
    next_offsets: dict[TopicPartition, int]  # offset to commit per partition (last + 1)
    partitions: tuple[TopicPartition, ...] = ()  # (n,) where each record came from
    offsets: tuple[int, ...] = ()  # (n,) its offset there
    append_ts: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))  # (n,) s

    @property
    def n_consumed(self) -> int:
        return len(self.records) + len(self.rejected)


class KafkaSource:
    """Fetches micro-batches (at most ``max_records``, waiting at most ``max_wait_ms``)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        feature_names: Sequence[str],
        *,
        max_records: int = 2048,
        max_wait_ms: int = 50,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self.consumer = consumer
        self.feature_names = tuple(feature_names)
        self.max_records = max_records
        self.max_wait_ms = max_wait_ms
        self.max_message_bytes = max_message_bytes
        self._decode = RecordDecoder(self.feature_names, max_bytes=max_message_bytes)
        self._turn = 0

    async def next_batch(self) -> SourceBatch:
        """Fetch what is there (up to the limits) and decode it; never raises on bad input."""
        fetched = await self._fetch()
        records: list[Record] = []
        append_ts: list[float] = []
        rejected: list[DeadLetter] = []
        offsets: dict[TopicPartition, int] = {}
        partitions: list[TopicPartition] = []
        record_offsets: list[int] = []
        for tp, messages in fetched.items():
            for m in messages:
                try:
                    rec = self._decode(m.key, m.value)
                except RecordError as exc:
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
                else:
                    records.append(rec)
                    append_ts.append(m.timestamp / 1000.0)
                    partitions.append(tp)
                    record_offsets.append(m.offset)
            if messages:
                offsets[tp] = messages[-1].offset + 1
        batch = RecordBatch.from_records(records, len(self.feature_names))
        return SourceBatch(
            batch,
            tuple(rejected),
            offsets,
            tuple(partitions),
            tuple(record_offsets),
            np.asarray(append_ts, dtype=np.float64),
        )

    async def _fetch(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Up to ``max_records``, shared between the partitions that have records buffered.

        The consumer hands out its buffered partitions one after the other, each to its end;
        under a backlog one partition's page (up to ``kafka.max_partition_fetch_bytes``) would
        fill batch after batch while the other partitions' series wait. So each partition is
        offered an equal share first, starting from a different one each time; what is left
        goes to whoever has more."""
        parts = sorted(self.consumer.assignment())
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        left = self.max_records
        if parts:
            self._turn = (self._turn + 1) % len(parts)
            share = -(-left // len(parts))
            for tp in parts[self._turn :] + parts[: self._turn]:
                got = await self.consumer.getmany(tp, timeout_ms=0, max_records=min(share, left))
                for part, messages in got.items():
                    fetched[part] = messages
                    left -= len(messages)
                if not left:
                    return fetched
        if not fetched:  # nothing buffered: wait for the first records to arrive
            waited: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
            waited = await self.consumer.getmany(timeout_ms=self.max_wait_ms, max_records=left)
            return waited
        for part, messages in (await self.consumer.getmany(timeout_ms=0, max_records=left)).items():
            fetched.setdefault(part, []).extend(messages)
        return fetched

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit the given offsets (only partitions still assigned to us)."""
        assigned = self.consumer.assignment()
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await self.consumer.commit(mine)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: these records will be consumed again by the new
            # owner (at-least-once), and their alerts repeated with the same alert_id.
            log.warning("commit of %s failed (%s); records will be redelivered", mine, exc)

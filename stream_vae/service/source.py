"""Kafka → validated records, plus dead letters for everything that does not decode.

Every consumed offset ends up in exactly one place: a record in ``SourceBatch.records`` or a
dead letter in ``SourceBatch.rejected``; ``n_consumed`` is their sum. Offsets below a partition's
``replay_until`` (set by the service when it takes a partition over) were processed and committed
by an earlier owner: they come apart, in ``SourceBatch.replay``, to rebuild state silently.

A record whose timestamp cannot be right is dead-lettered (``implausible_timestamp``): more than
``max_future_s`` ahead of the wall clock (``ts=1e300``; epoch milliseconds sent as seconds), or
more than ``max_jump_s`` ahead of its series' newest point (one wrong record in a replay of
history). Let through, one such record moves stream time so far that every other series is
evicted as idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from ..config import KafkaSettings
from ..core.formats import RegistryDecoder
from ..core.records import Record, RecordBatch
from ..errors import RecordError
from .schema_registry import fetch_schemas, make_decoder

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
    # Records an earlier owner already processed and committed: rebuild state, publish nothing.
    replay: SourceBatch | None = None
    generation: int = 0  # the assignment the records were fetched under (KafkaSource.generation)

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
        max_future_s: float | None = None,
        max_jump_s: float | None = None,
        last_ts: Callable[[str], float | None] = lambda series_id: None,
        kafka: KafkaSettings | None = None,
    ) -> None:
        self.consumer = consumer
        self.feature_names = tuple(feature_names)
        self.max_records = max_records
        self.max_wait_ms = max_wait_ms
        self.max_message_bytes = max_message_bytes
        self.max_future_s = max_future_s
        self.max_jump_s = max_jump_s
        self.last_ts = last_ts  # the series' newest point held downstream, if any
        # Per partition taken over: the committed offset; what lies before it is replay.
        self.replay_until: dict[TopicPartition, int] = {}
        # Bumped by the owner at every revoke and after every assignment (once it has sought):
        # a batch fetched under an older generation is stale (see Service).
        self.generation = 0
        self._decode, self._registry = make_decoder(
            kafka or KafkaSettings(), self.feature_names, max_bytes=max_message_bytes
        )
        self._turn = 0

    async def next_batch(self) -> SourceBatch:
        """Fetch what is there (up to the limits) and decode it; never raises on bad input."""
        generation, fetched = await self._fetch()
        if self._registry is not None and isinstance(self._decode, RegistryDecoder):
            ids = self._decode.unknown_ids(m.value for ms in fetched.values() for m in ms)
            if ids:  # schemas of ids not seen yet, fetched off the loop (once per id)
                await asyncio.to_thread(fetch_schemas, self._decode, self._registry, ids)
        live = _Collect()
        replay = _Collect()
        now = time.time()
        newest: dict[str, float] = {}  # per series, the newest ts accepted in this batch
        for tp, messages in fetched.items():
            until = self.replay_until.get(tp)
            decoded = self._decode.many([m.key for m in messages], [m.value for m in messages])
            for m, rec in zip(messages, decoded, strict=True):
                into = live
                if until is not None:
                    if m.offset < until:
                        into = replay
                    else:
                        del self.replay_until[tp]
                        until = None
                try:
                    if isinstance(rec, RecordError):
                        raise rec
                    self._check_time(rec, now, newest)
                except RecordError as exc:
                    dead = DeadLetter(
                        m.key, m.value, exc.reason, exc.message, tp.topic, tp.partition, m.offset
                    )
                    into.rejected.append(dead)
                else:
                    into.add(rec, tp, m.offset, m.timestamp / 1000.0)
                into.next_offsets[tp] = m.offset + 1
        batch = replace(live.batch(len(self.feature_names)), generation=generation)
        if replay.next_offsets:
            batch = replace(batch, replay=replay.batch(len(self.feature_names)))
        return batch

    def _check_time(self, rec: Record, now: float, newest: dict[str, float]) -> None:
        """Raise ``implausible_timestamp`` for a ``ts`` too far ahead of the wall clock or of
        the series' newest point (held downstream, or earlier in this batch)."""
        if self.max_future_s is not None and rec.ts > now + self.max_future_s:
            raise RecordError(
                "implausible_timestamp",
                f"ts {rec.ts:.6g} is more than {self.max_future_s:g} s ahead of the wall "
                "clock (service.max_future_s)",
            )
        sid = rec.series_id
        last = newest.get(sid)
        if last is None:
            last = self.last_ts(sid)
        if self.max_jump_s is not None and last is not None and rec.ts > last + self.max_jump_s:
            raise RecordError(
                "implausible_timestamp",
                f"ts {rec.ts:.6g} is {rec.ts - last:.6g} s after the series' newest point "
                f"(service.max_ts_jump_s {self.max_jump_s:g})",
            )
        if last is None or rec.ts > last:
            newest[sid] = rec.ts

    async def _fetch(self) -> tuple[int, dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
        """Up to ``max_records``, shared between the partitions that have records buffered, and
        the generation they were fetched under.

        The consumer hands out its buffered partitions one after the other, each to its end;
        under a backlog one partition's page (up to ``kafka.max_partition_fetch_bytes``) would
        fill batch after batch while the other partitions' series wait. So each partition is
        offered an equal share first, starting from a different one each time; what is left
        goes to whoever has more.

        One ``getmany`` returns records of the assignment current when it returns (aiokafka
        hands out nothing while a rebalance runs). If the generation moved between two calls,
        what the earlier calls returned is stale: it is dropped here, and delivered again from
        the committed offset."""
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        generation = self.generation
        left = self.max_records

        async def take(tp: TopicPartition | None, timeout_ms: int, n: int) -> None:
            nonlocal generation, left
            got = await (
                self.consumer.getmany(timeout_ms=timeout_ms, max_records=n)
                if tp is None
                else self.consumer.getmany(tp, timeout_ms=timeout_ms, max_records=n)
            )
            if generation != self.generation:
                generation, left = self.generation, self.max_records
                fetched.clear()
            for part, messages in got.items():
                fetched.setdefault(part, []).extend(messages)
                left -= len(messages)

        parts = sorted(self.consumer.assignment())
        if parts:
            self._turn = (self._turn + 1) % len(parts)
            share = -(-left // len(parts))
            for tp in parts[self._turn :] + parts[: self._turn]:
                await take(tp, 0, min(share, left))
                if not left:
                    return generation, fetched
        if not fetched:  # nothing buffered: wait for the first records to arrive
            await take(None, self.max_wait_ms, left)
        elif left:
            await take(None, 0, left)
        return generation, fetched

    async def commit(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Commit the given offsets (only partitions still assigned to us); returns what was
        committed (nothing when the commit failed)."""
        assigned = self.consumer.assignment()
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not mine:
            return {}
        try:
            await self.consumer.commit(mine)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: these records will be consumed again by the new
            # owner (at-least-once), and their alerts repeated with the same alert_id.
            log.warning("commit of %s failed (%s); records will be redelivered", mine, exc)
            return {}
        return mine


@dataclass
class _Collect:
    """One side (live or replay) of a fetch, gathered in consumption order."""

    records: list[Record] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    partitions: list[TopicPartition] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    append_ts: list[float] = field(default_factory=list)

    def add(self, rec: Record, tp: TopicPartition, offset: int, append_ts: float) -> None:
        self.records.append(rec)
        self.partitions.append(tp)
        self.offsets.append(offset)
        self.append_ts.append(append_ts)

    def batch(self, n_features: int) -> SourceBatch:
        return SourceBatch(
            RecordBatch.from_records(self.records, n_features),
            tuple(self.rejected),
            self.next_offsets,
            tuple(self.partitions),
            tuple(self.offsets),
            np.asarray(self.append_ts, dtype=np.float64),
        )

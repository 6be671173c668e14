"""Where each partition's replay start is kept, so that a new owner can rebuild its state.

The service commits the *processed* position, so lag tools (KEDA, Burrow,
``kafka-consumer-groups``) read the truth. The state behind that position (each series' last
points, its EMA warm-up, its open episode) is rebuilt from the log by the next owner, starting at
the partition's *replay start* (:class:`~stream_vae.service.offsets.ReplayWatermark`). That start
is kept here: a small topic (``kafka.state_topic``, one partition, compacted on Apache Kafka)
holding one record per group/topic/partition,
``{"replay_from": R, "committed": C}``. Kafka's own commit metadata would be the natural place,
but not every Kafka-compatible broker keeps it (the embedded one returns ``''``).

Why a stale checkpoint is safe, and why it is written *after* the commit
-----------------------------------------------------------------------
A partition's replay start only moves forward (a series' last records move forward; an episode
pins the start it had when it opened; an evicted series stops pinning). So a replay start
computed for an earlier commit is earlier than the one needed now: replaying from it rebuilds the
same state, only from further back. A start computed for a *later* commit is not: if that commit
failed, the series' records between the two commits would be missing. So a checkpoint is written
only after its commit succeeded, and one is written before a partition's first commit (its start
then is where consumption started, with no state). Whatever crash comes between, the checkpoint
on record was made for a commit at or before the committed offset. Writes are throttled
(``service.checkpoint_interval_s``): a stale start only makes the replay longer. A commit held
back by the throttle is computed when a write is due, from the state then; if a later commit of
its partition failed, that state is past it, so the held commit is dropped (:meth:`abandon`)
and the start written before it stays. The starts
themselves (a pass over every series held) are computed only when a write is due, and for
what the throttle held back, when a partition is revoked or the service stops.

Reading: the topic is read from the beginning up to a marker this reader writes, not up to an end
offset, since some Kafka-compatible brokers answer ListOffsets(LATEST) off by a batch. The
marker is a tombstone, which compaction removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ..config import KafkaSettings
from .kafka import client_options

__all__ = ["Checkpoint", "CheckpointStore"]

log = logging.getLogger(__name__)

_MARKER = b"\x00marker/"
# committed offsets (last processed + 1) -> each partition's replay start
Starts = Callable[[dict[TopicPartition, int]], dict[TopicPartition, int]]


async def stop_reader(consumer: AIOKafkaConsumer) -> None:
    """Stop a short-lived consumer without letting its teardown replace the error in flight.

    While the broker is down, aiokafka's fetcher task sleeps between retries; stopping the
    consumer cancels it, and its CancelledError can surface from ``stop()`` although nothing
    cancelled *this* task. Raised from a ``finally``, it replaced the read's TimeoutError (which
    the takeover handles) and, through the rebalance callback, ended the service with exit 1
    (the 30-minute fault run). A cancellation of this task itself still propagates.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("a state-topic reader's fetcher was cancelled while it stopped")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A partition's replay start, valid for any committed offset at or after ``committed``."""

    replay_from: int
    committed: int


class CheckpointStore:
    """Replay starts of one consumer group, kept in ``topic`` (see the module docstring).

    No I/O until :meth:`ensure_topic`, :meth:`load` or :meth:`save`; ``producer`` is the
    service's, started by it.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        interval_s: float = 1.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.interval_s = interval_s
        self.read_timeout_s = read_timeout_s
        self._producer = producer
        self._written: dict[TopicPartition, tuple[Checkpoint, float]] = {}  # last write, when
        self._pending: dict[TopicPartition, Checkpoint] = {}  # newer, held back by the throttle
        # commits whose replay starts are not computed yet (save_commits): the newest of each
        self._commits: dict[TopicPartition, int] = {}
        self._computed_at: dict[TopicPartition, float] = {}  # when its start was last computed

    def _key(self, tp: TopicPartition) -> bytes:
        return orjson.dumps([self.kafka.group_id, tp.topic, tp.partition])

    async def ensure_topic(self) -> None:
        """Create the state topic when missing (one partition, compacted): it is internal to the
        service, like a Kafka Streams changelog, so it is created whatever
        ``kafka.auto_create_topics`` says."""
        admin = AIOKafkaAdminClient(**client_options(self.kafka))
        await admin.start()
        try:
            if self.topic in set(await admin.list_topics()):
                return
            new = NewTopic(
                self.topic,
                1,
                self.kafka.replication_factor,
                topic_configs={"cleanup.policy": "compact"},
            )
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
                await admin.create_topics([new])
            log.info("created state topic %s (compacted)", self.topic)
        finally:
            await admin.close()

    async def load(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, Checkpoint]:
        """The latest checkpoint of each of ``partitions`` that has one.

        Reads the state topic from its beginning up to a marker written now, so every checkpoint
        acknowledged before this call is seen. Raises :class:`TimeoutError` after
        ``read_timeout_s``."""
        wanted = {self._key(tp): tp for tp in partitions}
        marker = _MARKER + uuid.uuid4().hex.encode()
        state_tp = TopicPartition(self.topic, 0)
        consumer = AIOKafkaConsumer(
            **client_options(self.kafka), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        found: dict[TopicPartition, Checkpoint] = {}
        try:
            consumer.assign([state_tp])
            await consumer.seek_to_beginning(state_tp)
            await self._producer.send_and_wait(self.topic, None, key=marker, partition=0)
            async with asyncio.timeout(self.read_timeout_s):
                while True:
                    for msgs in (await consumer.getmany(timeout_ms=500)).values():
                        for m in msgs:
                            if m.key == marker:
                                return found
                            tp = wanted.get(m.key) if m.key is not None else None
                            if tp is not None:
                                cp = _parse(m.value)
                                if cp is None:
                                    found.pop(tp, None)
                                    log.warning(
                                        "%s: unreadable checkpoint of %s at offset %d; ignored",
                                        self.topic,
                                        tp,
                                        m.offset,
                                    )
                                else:
                                    found[tp] = cp
        finally:
            await stop_reader(consumer)

    async def save(
        self,
        checkpoints: dict[TopicPartition, Checkpoint],
        *,
        force: bool = False,
    ) -> None:
        """Write the checkpoints that changed, at most once per ``interval_s`` per partition
        (``force``: now, with any held back); returns after the broker acknowledged them.

        Call it only after the commit each checkpoint was made for succeeded."""
        now = time.monotonic()
        self._pending.update(checkpoints)
        due: dict[TopicPartition, Checkpoint] = {}
        for tp, cp in self._pending.items():
            last = self._written.get(tp)
            if last is not None and last[0].replay_from == cp.replay_from:
                continue  # same start: the stored one is as good (it is valid from earlier)
            if force or last is None or now - last[1] >= self.interval_s:
                due[tp] = cp
        for tp in due:
            del self._pending[tp]
        if not due:
            return
        acks = [
            await self._producer.send(
                self.topic,
                orjson.dumps({"replay_from": cp.replay_from, "committed": cp.committed}),
                key=self._key(tp),
                partition=0,
            )
            for tp, cp in due.items()
        ]
        await asyncio.gather(*acks)
        for tp, cp in due.items():
            self._written[tp] = (cp, now)

    async def save_commits(self, committed: dict[TopicPartition, int], starts: Starts) -> None:
        """The checkpoints of commits that just succeeded. Their replay starts (``starts``: a
        pass over every series held) are computed only when one of them is due to be written;
        until then the newest commit of each partition is held (:meth:`flush` writes it)."""
        self._commits.update(committed)
        now = time.monotonic()
        done = self._computed_at  # a start that did not move is not written, yet was computed
        if all(tp in done and now - done[tp] < self.interval_s for tp in self._commits):
            return
        await self.save(self._computed(dict(self._commits), starts))

    async def flush(self, partitions: Iterable[TopicPartition], starts: Starts) -> None:
        """Write what the throttle held back for ``partitions`` (before they are revoked)."""
        wanted = set(partitions)
        mine = {tp: c for tp, c in self._commits.items() if tp in wanted}
        self._pending.update(self._computed(mine, starts))
        held = {tp: self._pending[tp] for tp in wanted if tp in self._pending}
        if held:
            await self.save(held, force=True)

    def _computed(
        self, commits: dict[TopicPartition, int], starts: Starts
    ) -> dict[TopicPartition, Checkpoint]:
        """Checkpoints of these held commits, which are held no longer."""
        if not commits:
            return {}
        found = starts(commits)
        now = time.monotonic()
        for tp in commits:
            self._commits.pop(tp, None)
            self._computed_at[tp] = now
        return {tp: Checkpoint(found[tp], c) for tp, c in commits.items()}

    def abandon(self, partitions: Iterable[TopicPartition]) -> None:
        """A commit of these partitions failed after the state moved on: the commits held
        back for them are dropped, not computed later (their starts would be computed for the
        newer state, and could be later than those commits need). The start written last
        stays: it is earlier, so valid."""
        for tp in partitions:
            self._commits.pop(tp, None)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what is remembered of partitions no longer ours (another owner writes them)."""
        for tp in partitions:
            self._written.pop(tp, None)
            self._pending.pop(tp, None)
            self._commits.pop(tp, None)
            self._computed_at.pop(tp, None)


def _parse(value: bytes | None) -> Checkpoint | None:
    if value is None:
        return None
    try:
        raw = orjson.loads(value)
        return Checkpoint(int(raw["replay_from"]), int(raw["committed"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None

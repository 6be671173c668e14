"""The replay starts' store (stream_vae.service.checkpoint) against the embedded broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition

from stream_vae.broker import EmbeddedBroker
from stream_vae.config import KafkaSettings
from stream_vae.service.checkpoint import Checkpoint, CheckpointStore, stop_reader
from stream_vae.service.kafka import make_producer

P0, P1 = TopicPartition("in", 0), TopicPartition("in", 1)


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def _kafka(broker: EmbeddedBroker, group: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, group_id=group)


class _Starts:
    """Replay starts one before each commit, recording what it was asked for."""

    def __init__(self) -> None:
        self.asked: list[dict[TopicPartition, int]] = []

    def __call__(self, committed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        self.asked.append(dict(committed))
        return {tp: c - 1 for tp, c in committed.items()}


def test_the_latest_start_of_each_partition_is_found_per_group(broker: EmbeddedBroker) -> None:
    topic = f"state-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[dict[TopicPartition, Checkpoint], ...]:
        ours, theirs = _kafka(broker, "ours"), _kafka(broker, "theirs")
        producer = make_producer(ours)
        await producer.start()
        try:
            store = CheckpointStore(ours, producer, topic=topic, interval_s=0.0)
            other = CheckpointStore(theirs, producer, topic=topic, interval_s=0.0)
            await store.ensure_topic()
            await store.save({P0: Checkpoint(5, 10), P1: Checkpoint(0, 3)})
            await store.save({P0: Checkpoint(8, 20)})  # newer: wins
            await other.save({P0: Checkpoint(99, 100)})  # another group: not ours
            # a value no version of the service wrote is ignored, with a warning
            await producer.send_and_wait(topic, b"{oops", key=store._key(P1), partition=0)
            first = await store.load([P0, P1])
            # a fresh reader (a new owner) sees the same, and nothing of partitions not asked for
            fresh = CheckpointStore(ours, producer, topic=topic)
            return first, await fresh.load([P0]), await other.load([P0, P1])
        finally:
            await producer.stop()

    first, fresh, other = asyncio.run(scenario())
    assert first == {P0: Checkpoint(8, 20)}
    assert fresh == {P0: Checkpoint(8, 20)}
    assert other == {P0: Checkpoint(99, 100)}


def test_writes_are_throttled_and_a_held_back_start_is_flushed(broker: EmbeddedBroker) -> None:
    topic = f"state-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[dict[TopicPartition, Checkpoint]]:
        k = _kafka(broker, "g")
        producer = make_producer(k)
        await producer.start()
        try:
            store = CheckpointStore(k, producer, topic=topic, interval_s=3600.0)
            await store.ensure_topic()
            seen = []
            starts = _Starts()  # a pass over every series, in the service
            asked = starts.asked

            await store.save_commits({P0: 2}, starts)  # the first write of a partition: now
            await store.save_commits({P0: 4}, starts)  # within the interval: held back
            assert asked == [{P0: 2}]  # not even computed while nothing is due
            seen.append(await store.load([P0]))
            await store.flush([P0], starts)  # before a revoke: what was held back is written
            assert asked == [{P0: 2}, {P0: 4}]
            seen.append(await store.load([P0]))
            await store.save({P0: Checkpoint(3, 9)}, force=True)  # same start: nothing to write
            seen.append(await store.load([P0]))
            return seen
        finally:
            await producer.stop()

    held, flushed, same = asyncio.run(scenario())
    assert held == {P0: Checkpoint(1, 2)}  # stale is safe: an earlier start, a longer replay
    assert flushed == {P0: Checkpoint(3, 4)}
    assert same == {P0: Checkpoint(3, 4)}


def test_a_held_commit_whose_successor_failed_is_not_flushed(broker: EmbeddedBroker) -> None:
    """A commit held back by the throttle, then a commit that failed after the state moved on:
    the held one's start would be computed from the newer state (later than it needs), so it
    is dropped, and the start written before stays."""
    topic = f"state-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[
        dict[TopicPartition, Checkpoint], list[dict[TopicPartition, int]]
    ]:
        k = _kafka(broker, "g")
        producer = make_producer(k)
        await producer.start()
        try:
            store = CheckpointStore(k, producer, topic=topic, interval_s=3600.0)
            await store.ensure_topic()
            starts = _Starts()
            asked = starts.asked

            await store.save_commits({P0: 2, P1: 2}, starts)  # written
            await store.save_commits({P0: 4, P1: 4}, starts)  # held back
            store.abandon([P0])  # the next commit of P0 failed
            await store.flush([P0, P1], starts)  # a revoke
            return await store.load([P0, P1]), asked
        finally:
            await producer.stop()

    found, asked = asyncio.run(scenario())
    assert found == {P0: Checkpoint(1, 2), P1: Checkpoint(3, 4)}
    assert asked == [{P0: 2, P1: 2}, {P1: 4}]


class _TornDown:
    """A consumer whose stop() surfaces its fetcher's CancelledError (aiokafka, broker down)."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.hold = hold

    async def stop(self) -> None:
        if self.hold is not None:
            await self.hold.wait()  # cancelled here when the caller's task is
        raise asyncio.CancelledError


def test_a_readers_teardown_does_not_replace_the_error_in_flight() -> None:
    """The 30-minute fault run: a state read timed out while the broker restarted, and the
    reader's stop() raised CancelledError from its fetcher: it replaced the TimeoutError the
    takeover handles, and the service exited 1. Only a cancellation of the task itself may
    propagate."""

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            try:
                raise TimeoutError
            finally:
                await stop_reader(_TornDown())
        task = asyncio.create_task(stop_reader(_TornDown(asyncio.Event())))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())

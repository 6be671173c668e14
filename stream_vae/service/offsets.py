"""Where a partition's replay must start so that a new owner rebuilds every series' state.

The service commits the processed position; a new owner of the partition (after a restart or a
rebalance) would then lose the window, EMA and episode state of every series, needing W more
points per series before scoring again, and an episode open at the crash would never close. So
the service keeps, per partition, the earliest offset any of its series still needs (its *replay
start*, stored by :mod:`stream_vae.service.checkpoint`):

* the oldest of the series' last ``W − 1 + warmup`` records (its window, plus enough windows
  for the EMA to forget its start), or
* while an episode is open, the oldest record that was needed when it opened (so the replay
  re-opens it, with the same ``alert_id``, and can close it).

The new owner re-reads from there to the committed offset without publishing anything, then goes
on from the committed offset as before.

A series belongs to one partition (records are keyed by series id). One that shows up on a
second partition (a keyless or mis-keyed producer, or a topic whose partition count grew) moves
there: its state is kept, its replay tail restarts on the new partition, and an open episode no
longer pins the old one (a later owner of the new partition cannot re-open it). Each move is
counted; :meth:`ReplayWatermark.observe` returns the series that moved for the first time, to be
warned about once.

Examples
--------
>>> from aiokafka import TopicPartition

>>> tp = TopicPartition("t", 0)
>>> w = ReplayWatermark(keep=2)
>>> w.observe(["a", "b", "a", "a"], [tp] * 4, [10, 11, 12, 13])  # no series moved partition
[]
>>> w.replay_starts({tp: 14})  # "a" needs 12 and 13, "b" needs 11
{TopicPartition(topic='t', partition=0): 11}
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from aiokafka import TopicPartition

from ..core.state import KEY_BYTES

__all__ = ["ReplayWatermark"]

# One kept offset: a Python int (28-32 B above 256) and its 8-byte deque slot.
_OFFSET_BYTES = 40


class ReplayWatermark:
    """Per series: the offsets of its last ``keep`` records and, if open, its episode's start."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._tail: dict[str, deque[int]] = {}
        self._partition: dict[str, TopicPartition] = {}
        self._open: dict[str, int] = {}
        self._front_before: dict[str, int] = {}
        self._moved: set[str] = set()  # series that changed partition at least once
        self.n_moves = 0  # partition changes seen, all series

    def observe(
        self,
        series_ids: Sequence[str],
        partitions: Sequence[TopicPartition],
        offsets: Sequence[int],
    ) -> list[str]:
        """Record a batch's accepted records (in order); returns the series seen on a second
        partition for the first time (the total of such moves is :attr:`n_moves`)."""
        self._front_before = {}
        first_moves: list[str] = []
        for sid, tp, off in zip(series_ids, partitions, offsets, strict=True):
            tail = self._tail.get(sid)
            if tail is None:
                tail = self._tail[sid] = deque(maxlen=max(self.keep, 1))
                self._partition[sid] = tp
            elif self._partition[sid] != tp:
                # offsets of two partitions do not compare: the tail restarts on the new one
                self.n_moves += 1
                if sid not in self._moved:
                    self._moved.add(sid)
                    first_moves.append(sid)
                self._partition[sid] = tp
                tail.clear()
                self._open.pop(sid, None)
                self._front_before.pop(sid, None)
            self._front_before.setdefault(sid, tail[0] if tail else off)
            tail.append(off)
        return first_moves

    def episode_opened(self, series_id: str) -> None:
        """Pin the series at what it needed before the batch in which its episode opened (an
        earlier pin stays: an episode of another kind opened first and is open still)."""
        if series_id in self._open:
            return
        front = self._front_before.get(series_id)
        if front is None:
            tail = self._tail.get(series_id)
            front = tail[0] if tail else None
        if front is not None:
            self._open[series_id] = front

    def episode_closed(self, series_id: str) -> None:
        self._open.pop(series_id, None)

    def replay_starts(self, next_offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The replay start of each partition of ``next_offsets`` (last processed + 1)."""
        out = dict(next_offsets)
        # One pass over every series held, so kept lean: _tail and _partition gain and lose
        # their keys together, so their values pair up in order; the few open episodes' pins
        # come after.
        for tail, tp in zip(self._tail.values(), self._partition.values(), strict=True):
            if tail:
                first = tail[0]
                if first < out.get(tp, first):
                    out[tp] = first
        for sid, pin in self._open.items():
            tp = self._partition[sid]
            if tp in out and self._tail[sid] and pin < out[tp]:
                out[tp] = pin
        return out

    def series_on(self, partitions: Iterable[TopicPartition]) -> list[str]:
        """The series last seen on any of these partitions."""
        wanted = set(partitions)
        return [s for s, tp in self._partition.items() if tp in wanted]

    def partition_of(self, series_id: str) -> TopicPartition | None:
        """The partition the series was last seen on."""
        return self._partition.get(series_id)

    def series(self) -> frozenset[str]:
        return frozenset(self._tail)

    def nbytes(self) -> int:
        # per series: the tail's offsets (an int object and its deque slot, ~40 B each; deques
        # grow in blocks of 64) and three dict entries
        return sum(_OFFSET_BYTES * max(len(t), 64) + 3 * KEY_BYTES for t in self._tail.values())

    def drop(self, series_ids: Iterable[str]) -> None:
        for sid in series_ids:
            self._tail.pop(sid, None)
            self._partition.pop(sid, None)
            self._open.pop(sid, None)
            self._front_before.pop(sid, None)
            self._moved.discard(sid)

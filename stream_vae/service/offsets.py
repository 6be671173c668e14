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

The last offsets are kept in one pooled int64 ring per series (as the window store keeps its
points): 100k series are a few arrays, not millions of Python ints, and a batch of records
without a partition move is taken as arrays (:meth:`ReplayWatermark.observe`).

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

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from aiokafka import TopicPartition

from ..core.state import KEY_BYTES

__all__ = ["ReplayWatermark"]

I64 = npt.NDArray[np.int64]
_GROWTH = 1.25
_MIN_CAPACITY = 64


class ReplayWatermark:
    """Per series: the offsets of its last ``keep`` records and, if open, its episode's start."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._width = max(keep, 1)  # offsets kept per series
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._n_used = 0
        self._ring: I64 = np.zeros((0, self._width), dtype=np.int64)  # (slots, K) offsets
        self._head: I64 = np.zeros(0, dtype=np.int64)  # next write position in the ring
        self._count: I64 = np.zeros(0, dtype=np.int64)  # offsets held (≤ K)
        self._part: I64 = np.zeros(0, dtype=np.int64)  # the series' partition, as a code
        # before the last batch: the oldest offset each series of it still needed (-1: none)
        self._front_before: I64 = np.zeros(0, dtype=np.int64)
        self._touched: I64 = np.zeros(0, dtype=np.int64)  # the slots the last batch set it for
        self._tps: list[TopicPartition] = []
        self._codes: dict[TopicPartition, int] = {}
        self._open: dict[str, int] = {}
        self._moved: set[str] = set()  # series that changed partition at least once
        self.n_moves = 0  # partition changes seen, all series

    # ------------------------------------------------------------------ recording

    def observe(
        self,
        series_ids: Sequence[str],
        partitions: Sequence[TopicPartition],
        offsets: Sequence[int],
    ) -> list[str]:
        """Record a batch's accepted records (in order); returns the series seen on a second
        partition for the first time (the total of such moves is :attr:`n_moves`)."""
        self._front_before[self._touched] = -1
        n = len(series_ids)
        if n == 0:
            self._touched = np.zeros(0, dtype=np.int64)
            return []
        codes = np.fromiter((self._code(tp) for tp in partitions), np.int64, n)
        names = list(dict.fromkeys(series_ids))  # the batch's series, in order of first record
        group = {s: g for g, s in enumerate(names)}
        rec_group = np.fromiter((group[s] for s in series_ids), np.int64, n)
        order = np.argsort(rec_group, kind="stable")  # by series, then arrival
        starts = np.flatnonzero(np.r_[True, np.diff(rec_group[order]) != 0])  # (m,)
        code_sorted = codes[order]
        first_code = code_sorted[starts]  # (m,) each series' first partition in the batch
        same = np.minimum.reduceat(code_sorted, starts) == np.maximum.reduceat(code_sorted, starts)
        known = np.array([s in self._slots for s in names], dtype=bool)
        slot_known = np.array([self._slots.get(s, -1) for s in names], dtype=np.int64)
        stays = self._part[slot_known[known]] == first_code[known]
        if not (same.all() and stays.all()):  # a series changed partition: one at a time
            return self._observe_each(series_ids, codes, offsets)
        for s in names:
            if s not in self._slots:
                self._allocate(s)
        slot = np.array([self._slots[s] for s in names], dtype=np.int64)  # (m,)
        self._part[slot] = first_code
        off_sorted = np.asarray(offsets, dtype=np.int64)[order]
        k = np.diff(np.r_[starts, n])  # (m,) records per series
        self._front_before[slot] = np.where(
            self._count[slot] > 0, self._oldest(slot), off_sorted[starts]
        )
        self._touched = slot
        width = self._width
        g = np.repeat(np.arange(len(names)), k)  # (n,) series of each sorted record
        rank = np.arange(n) - starts[g]
        last = rank >= (k - width)[g]  # only the last K records of a series stay
        rows = slot[g[last]]
        self._ring[rows, (self._head[rows] + rank[last]) % width] = off_sorted[last]
        self._head[slot] = (self._head[slot] + k) % width
        self._count[slot] = np.minimum(self._count[slot] + k, width)
        return []

    def _observe_each(
        self, series_ids: Sequence[str], codes: I64, offsets: Sequence[int]
    ) -> list[str]:
        """:meth:`observe` one record at a time: a series that changes partition restarts its
        offsets on the new one (offsets of two partitions do not compare)."""
        first_moves: list[str] = []
        touched: dict[int, None] = {}
        for sid, code, off in zip(series_ids, codes.tolist(), offsets, strict=True):
            slot = self._slots.get(sid)
            if slot is None:
                slot = self._allocate(sid)
                self._part[slot] = code
            elif self._part[slot] != code:
                self.n_moves += 1
                if sid not in self._moved:
                    self._moved.add(sid)
                    first_moves.append(sid)
                self._part[slot] = code
                self._count[slot] = 0
                self._open.pop(sid, None)
                self._front_before[slot] = -1
            if self._front_before[slot] < 0:
                front = self._oldest(np.array([slot]))[0] if self._count[slot] else off
                self._front_before[slot] = front
            touched[slot] = None
            h = int(self._head[slot])
            self._ring[slot, h] = off
            self._head[slot] = (h + 1) % self._width
            self._count[slot] = min(int(self._count[slot]) + 1, self._width)
        self._touched = np.fromiter(touched, np.int64, len(touched))
        return first_moves

    def episode_opened(self, series_id: str) -> None:
        """Pin the series at what it needed before the batch in which its episode opened (an
        earlier pin stays: an episode of another kind opened first and is open still)."""
        if series_id in self._open:
            return
        slot = self._slots.get(series_id)
        if slot is None:
            return
        front = int(self._front_before[slot])
        if front < 0 and self._count[slot]:
            front = int(self._oldest(np.array([slot]))[0])
        if front >= 0:
            self._open[series_id] = front

    def episode_closed(self, series_id: str) -> None:
        self._open.pop(series_id, None)

    # ------------------------------------------------------------------ reading

    def replay_starts(self, next_offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The replay start of each partition of ``next_offsets`` (last processed + 1)."""
        out = dict(next_offsets)
        used = np.flatnonzero(self._count[: self._n_used] > 0)
        if len(used):
            need = np.full(len(self._tps), np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(need, self._part[used], self._oldest(used))
            for tp, code in self._codes.items():
                if tp in out and need[code] < out[tp]:
                    out[tp] = int(need[code])
        for sid, pin in self._open.items():
            slot = self._slots[sid]
            tp = self._tps[int(self._part[slot])]
            if tp in out and self._count[slot] and pin < out[tp]:
                out[tp] = pin
        return out

    def series_on(self, partitions: Iterable[TopicPartition]) -> list[str]:
        """The series last seen on any of these partitions."""
        wanted = {self._codes[tp] for tp in partitions if tp in self._codes}
        return [s for s, slot in self._slots.items() if int(self._part[slot]) in wanted]

    def partition_of(self, series_id: str) -> TopicPartition | None:
        """The partition the series was last seen on."""
        slot = self._slots.get(series_id)
        return None if slot is None else self._tps[int(self._part[slot])]

    def series(self) -> frozenset[str]:
        return frozenset(self._slots)

    def nbytes(self) -> int:
        arrays = (self._ring, self._head, self._count, self._part, self._front_before)
        return sum(a.nbytes for a in arrays) + 2 * KEY_BYTES * len(self._slots)

    def drop(self, series_ids: Iterable[str]) -> None:
        for sid in series_ids:
            slot = self._slots.pop(sid, None)
            if slot is not None:
                self._ids[slot] = None
                self._count[slot] = 0
                self._front_before[slot] = -1
                self._free.append(slot)
            self._open.pop(sid, None)
            self._moved.discard(sid)

    # ------------------------------------------------------------------ slots

    def _oldest(self, slots: I64) -> I64:
        """The oldest offset each of these slots holds (their count must be > 0)."""
        oldest: I64 = self._ring[slots, (self._head[slots] - self._count[slots]) % self._width]
        return oldest

    def _code(self, tp: TopicPartition) -> int:
        code = self._codes.get(tp)
        if code is None:
            code = self._codes[tp] = len(self._tps)
            self._tps.append(tp)
        return code

    def _allocate(self, sid: str) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            if self._n_used == len(self._head):
                self._grow()
            slot = self._n_used
            self._n_used += 1
        self._slots[sid] = slot
        self._ids[slot] = sid
        self._head[slot] = 0
        self._count[slot] = 0
        self._front_before[slot] = -1
        return slot

    def _grow(self) -> None:
        cap = max(_MIN_CAPACITY, math.ceil(len(self._head) * _GROWTH))
        self._ring.resize((cap, self._width), refcheck=False)
        for a in (self._head, self._count, self._part, self._front_before):
            a.resize(cap, refcheck=False)
        self._ids.extend([None] * (cap - len(self._ids)))

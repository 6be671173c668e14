from __future__ import annotations

import random
from collections import deque

import pytest
from aiokafka import TopicPartition

from stream_vae.service.offsets import ReplayWatermark

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_watermark_keeps_each_series_last_records() -> None:
    w = ReplayWatermark(keep=3)
    w.observe(["a", "b", "a", "a", "a"], [P0, P1, P0, P0, P0], [0, 0, 1, 2, 3])
    # a keeps offsets 1..3 on P0; b keeps 0 on P1
    assert w.replay_starts({P0: 4, P1: 1}) == {P0: 1, P1: 0}
    # partitions without records in this batch are not committed
    assert w.replay_starts({P0: 4}) == {P0: 1}


def test_open_episode_pins_until_closed() -> None:
    w = ReplayWatermark(keep=2)
    w.observe(["a", "a", "a"], [P0] * 3, [0, 1, 2])  # tail 1, 2
    w.observe(["a", "a"], [P0] * 2, [3, 4])  # tail 3, 4; before this batch it needed 1
    w.episode_opened("a")
    w.observe(["a"] * 4, [P0] * 4, [5, 6, 7, 8])
    assert w.replay_starts({P0: 9}) == {P0: 1}  # replay must re-open the episode
    w.episode_closed("a")
    assert w.replay_starts({P0: 9}) == {P0: 7}


def test_drop_and_series_on() -> None:
    w = ReplayWatermark(keep=2)
    w.observe(["a", "b"], [P0, P1], [5, 9])
    assert w.series_on([P1]) == ["b"]
    w.drop(["a"])
    assert w.replay_starts({P0: 6, P1: 10}) == {P0: 6, P1: 9}


def test_evicted_series_stop_holding_the_commit_back() -> None:
    w = ReplayWatermark(keep=2)
    w.observe(["old", "new", "new", "new"], [P0] * 4, [0, 1, 2, 3])
    assert w.replay_starts({P0: 4}) == {P0: 0}  # "old" pins offset 0
    assert w.series() == {"old", "new"}
    w.drop(w.series() - {"new"})  # what the service does with series the store evicted
    assert w.replay_starts({P0: 4}) == {P0: 2}
    assert w.series_on([P0]) == ["new"]


class _Reference:
    """The watermark as it was first written, one deque of offsets per series: the model the
    pooled arrays are checked against."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.tail: dict[str, deque[int]] = {}
        self.partition: dict[str, TopicPartition] = {}
        self.open: dict[str, int] = {}
        self.front: dict[str, int] = {}
        self.moved: set[str] = set()
        self.n_moves = 0

    def observe(self, sids: list[str], tps: list[TopicPartition], offs: list[int]) -> list[str]:
        self.front, first = {}, []
        for sid, tp, off in zip(sids, tps, offs, strict=True):
            tail = self.tail.get(sid)
            if tail is None:
                tail = self.tail[sid] = deque(maxlen=max(self.keep, 1))
                self.partition[sid] = tp
            elif self.partition[sid] != tp:
                self.n_moves += 1
                if sid not in self.moved:
                    self.moved.add(sid)
                    first.append(sid)
                self.partition[sid] = tp
                tail.clear()
                self.open.pop(sid, None)
                self.front.pop(sid, None)
            self.front.setdefault(sid, tail[0] if tail else off)
            tail.append(off)
        return first

    def opened(self, sid: str) -> None:
        if sid in self.open:
            return
        front = self.front.get(sid)
        if front is None:
            tail = self.tail.get(sid)
            front = tail[0] if tail else None
        if front is not None:
            self.open[sid] = front

    def starts(self, nxt: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        out = dict(nxt)
        for sid, tail in self.tail.items():
            tp = self.partition[sid]
            if tp in out and tail:
                out[tp] = min(out[tp], self.open.get(sid, tail[0]), tail[0])
        return out

    def drop(self, sids: list[str]) -> None:
        for sid in sids:
            for d in (self.tail, self.partition, self.open, self.front):
                d.pop(sid, None)  # type: ignore[attr-defined]
            self.moved.discard(sid)


@pytest.mark.parametrize("keep", [0, 1, 3, 7])
def test_the_pooled_watermark_matches_one_deque_per_series(keep: int) -> None:
    """Batches big and small, new series, partition moves (some mid-batch), episodes opened
    and closed, evictions: the same starts, moves and answers as the reference model."""
    rng = random.Random(keep)
    parts = [TopicPartition("t", p) for p in range(3)]
    for trial in range(60):
        w, ref, off = ReplayWatermark(keep), _Reference(keep), 0
        move = 0.05 if trial % 2 else 0.0  # half the runs take the array path every batch
        for _ in range(rng.randint(1, 12)):
            n = rng.randint(0, 40)
            sids = [f"s{rng.randint(0, 12)}" for _ in range(n)]
            home = {s: parts[int(s[1:]) % 3] for s in sids}
            tps = [parts[rng.randint(0, 2)] if rng.random() < move else home[s] for s in sids]
            offs = list(range(off, off + n))
            off += n + rng.randint(0, 3)
            assert w.observe(sids, tps, offs) == ref.observe(sids, tps, offs)
            assert w.n_moves == ref.n_moves
            for s in set(sids) | {"s99"}:
                r = rng.random()
                if r < 0.15:
                    w.episode_opened(s)
                    ref.opened(s)
                elif r < 0.25:
                    w.episode_closed(s)
                    ref.open.pop(s, None)
            if rng.random() < 0.2:
                gone = [f"s{rng.randint(0, 12)}" for _ in range(2)]
                w.drop(gone)
                ref.drop(gone)
            nxt = {tp: off for tp in parts if rng.random() < 0.8}
            assert w.replay_starts(nxt) == ref.starts(nxt)
            assert w.series() == set(ref.tail)
            assert sorted(w.series_on(parts[:1])) == sorted(
                s for s, tp in ref.partition.items() if tp == parts[0]
            )
            assert all(w.partition_of(s) == tp for s, tp in ref.partition.items())

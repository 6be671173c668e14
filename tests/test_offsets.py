from __future__ import annotations

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

"""WindowStore: exact windows on hand-made streams, gaps, eviction, properties."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_vae.core.records import RecordBatch
from stream_vae.core.windows import ReadyWindows, WindowStore
from stream_vae.errors import ShapeError

F64 = npt.NDArray[np.float64]
Out = list[tuple[str, float, list[list[float]]]]


def make_batch(sids: Sequence[str], ts: Sequence[float] | F64, d: int = 1) -> RecordBatch:
    """Record i carries values [i, -i, 2i, ...][:d]: a window shows which records it holds."""
    n = len(sids)
    i = np.arange(n, dtype=np.float32)[:, None]
    values = np.hstack([i * (k // 2 + 1) * (-1 if k % 2 else 1) for k in range(d)])
    return RecordBatch(tuple(sids), np.asarray(ts, dtype=np.float64), values.reshape(n, d))


def rows(ready: ReadyWindows) -> Out:
    """Windows as comparable tuples; for d=1 the values are the record indices."""
    return [
        (k, float(t), v.tolist())
        for k, t, v in zip(ready.keys, ready.ts, ready.values, strict=True)
    ]


def idx(ready: ReadyWindows) -> list[tuple[str, float, list[int]]]:
    """For d=1 batches: each window as the indices of the records it holds."""
    return [(k, t, [int(x[0]) for x in v]) for k, t, v in rows(ready)]


def push_each(store: WindowStore, batch: RecordBatch) -> Out:
    out: Out = []
    for i in range(len(batch)):
        out.extend(rows(store.push_many(batch.slice(i, i + 1))))
    return out


# ---------------------------------------------------------------- exact windows


def test_stride_1_emits_every_point_once_full() -> None:
    store = WindowStore(3, 1)
    ready = store.push_many(make_batch("aaaaa", [0, 1, 2, 3, 4]))
    assert len(ready) == 3
    assert idx(ready) == [("a", 2.0, [0, 1, 2]), ("a", 3.0, [1, 2, 3]), ("a", 4.0, [2, 3, 4])]
    assert ready.values.dtype == np.float32 and ready.values.shape == (3, 3, 1)
    assert ready.ts.dtype == np.float64
    assert store.counters["windows"] == 3 and store.counters["points"] == 5


def test_stride_2_first_window_when_full_then_every_second_point() -> None:
    store = WindowStore(3, 1, stride=2)
    ready = store.push_many(make_batch("aaaaaaa", [0, 1, 2, 3, 4, 5, 6]))
    assert idx(ready) == [("a", 2.0, [0, 1, 2]), ("a", 4.0, [2, 3, 4]), ("a", 6.0, [4, 5, 6])]


def test_multi_feature_window_is_oldest_to_newest() -> None:
    store = WindowStore(2, 3)
    ready = store.push_many(make_batch("aaa", [10, 11, 12], d=3))
    assert rows(ready) == [
        ("a", 11.0, [[0, 0, 0], [1, -1, 2]]),
        ("a", 12.0, [[1, -1, 2], [2, -2, 4]]),
    ]


def test_windows_of_one_batch_are_distinct_copies() -> None:
    store = WindowStore(2, 1)
    ready = store.push_many(make_batch("aaaa", [0, 1, 2, 3]))
    before = ready.values.copy()
    store.push_many(make_batch("aaaa", [4, 5, 6, 7]))  # overwrites the whole ring twice
    assert np.array_equal(ready.values, before)
    assert idx(ready) == [("a", 1.0, [0, 1]), ("a", 2.0, [1, 2]), ("a", 3.0, [2, 3])]


def test_interleaved_series_keep_separate_buffers() -> None:
    store = WindowStore(2, 1)
    ready = store.push_many(make_batch("ababcbca", [0, 0, 1, 1, 0, 2, 0, 2]))
    assert idx(ready) == [
        ("a", 1.0, [0, 2]),
        ("b", 1.0, [1, 3]),
        ("b", 2.0, [3, 5]),
        ("a", 2.0, [2, 7]),
    ]
    assert store.counters["late"] == 1  # the second c at ts 0
    assert store.n_series == 3 and "c" in store and store.buffered("c") == 1


def test_late_and_duplicate_points_are_dropped_and_counted() -> None:
    store = WindowStore(3, 1)
    ready = store.push_many(make_batch("aaaaaa", [0, 1, 1, 0.5, 2, 3]))
    assert idx(ready) == [("a", 2.0, [0, 1, 4]), ("a", 3.0, [1, 4, 5])]
    assert store.counters["late"] == 2 and store.counters["points"] == 4


# ---------------------------------------------------------------- gaps


def test_gap_reset_clears_the_series() -> None:
    store = WindowStore(2, 1, max_gap_s=1.5)
    ready = store.push_many(make_batch("aaaa", [0, 1, 2, 5]))
    assert idx(ready) == [("a", 1.0, [0, 1]), ("a", 2.0, [1, 2])]
    assert store.buffered("a") == 1 and store.counters["gap_resets"] == 1
    ready = store.push_many(make_batch("a", [6]))
    assert ready.ts.tolist() == [6.0]  # first window after a reset: as soon as full again


def test_ffill_repeats_the_last_point() -> None:
    store = WindowStore(4, 1, max_gap_s=1.5, gap_policy="ffill", max_fill=2)
    ready = store.push_many(make_batch("aaaa", [0, 1, 4, 5]))  # gap of 3 steps: 2 fills
    assert idx(ready) == [("a", 4.0, [1, 1, 1, 2]), ("a", 5.0, [1, 1, 2, 3])]
    assert store.counters["filled"] == 2 and store.counters["gap_resets"] == 0
    assert store.counters["points"] == 4


def test_ffill_uses_the_last_non_gap_step() -> None:
    store = WindowStore(3, 1, max_gap_s=1.0, gap_policy="ffill", max_fill=3)
    # step 0.5, then a gap of 1.5 (3 steps: 2 fills), then another gap of 1.5 (step still 0.5)
    ready = store.push_many(make_batch("aaaa", [0, 0.5, 2.0, 3.5]))
    assert idx(ready) == [("a", 2.0, [1, 1, 2]), ("a", 3.5, [2, 2, 3])]
    assert store.counters["filled"] == 4


def test_ffill_too_long_gap_resets() -> None:
    store = WindowStore(2, 1, max_gap_s=1.5, gap_policy="ffill", max_fill=2)
    store.push_many(make_batch("aaa", [0, 1, 5]))  # would need 3 fills
    assert (store.counters["filled"], store.counters["gap_resets"]) == (0, 1)
    assert store.buffered("a") == 1


def test_ffill_without_an_observed_step_resets() -> None:
    store = WindowStore(2, 1, max_gap_s=1.5, gap_policy="ffill", max_fill=10)
    store.push_many(make_batch("aa", [0, 3]))
    assert store.counters["gap_resets"] == 1 and store.buffered("a") == 1


def test_filled_points_count_toward_the_stride() -> None:
    store = WindowStore(2, 1, stride=3, max_gap_s=1.5, gap_policy="ffill", max_fill=5)
    ready = store.push_many(make_batch("aaa", [0, 1, 4]))
    # first window when full (ts 1); then 2 fills + 1 real point = 3 points -> a window at ts 4
    assert idx(ready) == [("a", 1.0, [0, 1]), ("a", 4.0, [1, 2])]


def test_ffill_longer_than_the_window() -> None:
    store = WindowStore(2, 1, max_gap_s=1.5, gap_policy="ffill", max_fill=5)
    ready = store.push_many(make_batch("aaa", [0, 1, 6]))  # 4 fills > W
    assert idx(ready) == [("a", 1.0, [0, 1]), ("a", 6.0, [1, 2])]
    assert store.counters["filled"] == 4


# ---------------------------------------------------------------- eviction and drop


def test_evict_idle() -> None:
    store = WindowStore(2, 1, idle_ttl_s=10.0)
    store.push_many(make_batch("abc", [0, 15, 10]))
    assert store.evict_idle(20.0) == 1  # a (0 < 10); c sits exactly at the limit and stays
    assert "a" not in store and "b" in store and "c" in store
    assert store.counters["evicted_idle"] == 1
    assert store.evict_idle(20.0) == 0
    assert WindowStore(2, 1).evict_idle(1e12) == 0  # no ttl: never evicts


def test_lru_eviction_at_max_series() -> None:
    store = WindowStore(2, 1, max_series=2)
    # a late point does not count as an update: c evicts a, not b
    store.push_many(make_batch("abbc", [0, 0, -5, 0]))
    assert store.n_series == 2 and "a" not in store and "b" in store and "c" in store
    assert store.counters["evicted_lru"] == 1 and store.counters["late"] == 1
    ready = store.push_many(make_batch("ba", [1, 2]))  # b is updated, so a evicts c
    assert idx(ready) == [("b", 1.0, [1, 0])]  # record 1 of the first batch, 0 of this one
    assert "c" not in store and store.buffered("a") == 1 and store.counters["evicted_lru"] == 2


def test_drop_removes_given_series_only() -> None:
    store = WindowStore(2, 1)
    store.push_many(make_batch("abc", [0, 0, 0]))
    assert store.series() == {"a", "b", "c"}
    store.drop(["a", "c", "zz"])
    assert (
        store.series() == {"b"}
        and store.n_series == 1
        and "b" in store
        and store.buffered("a") == 0
    )
    assert idx(store.push_many(make_batch("aa", [-1, 0]))) == [("a", 0.0, [0, 1])]  # fresh


def test_freed_slots_are_reused() -> None:
    store = WindowStore(4, 2)
    store.push_many(make_batch([f"s{i}" for i in range(64)], [0.0] * 64, d=2))
    held = store.nbytes()
    assert held >= 64 * 4 * 2 * 4
    store.drop([f"s{i}" for i in range(64)])
    store.push_many(make_batch([f"t{i}" for i in range(64)], [0.0] * 64, d=2))
    assert store.nbytes() == held and store.n_series == 64


def test_many_series_survive_pool_growth() -> None:
    n, w = 300, 3
    sids = [f"s{i}" for i in range(n)] * (w + 1)
    ts = np.repeat(np.arange(w + 1, dtype=np.float64), n)
    ready = WindowStore(w, 1).push_many(make_batch(sids, ts))
    assert len(ready) == 2 * n
    for k, (sid, t, win) in enumerate(idx(ready)):
        i, r = k % n, w - 1 + k // n
        assert (sid, t, win) == (f"s{i}", float(r), [i + n * j for j in range(r - w + 1, r + 1)])


def test_lru_order_is_the_order_of_last_updates_across_calls() -> None:
    store = WindowStore(2, 1, max_series=3)
    store.push_many(make_batch("abca", [0, 0, 0, 1]))  # LRU: b, c, a (a updated last)
    evicted: list[str] = []
    for sid in "def":  # each new series, in its own call, evicts the least recently updated
        before = store.series()
        store.push_many(make_batch(sid, [0]))
        evicted.extend(before - store.series())
    assert evicted == ["b", "c", "a"]  # by first arrival it would be a, b, c
    assert store.series() == {"d", "e", "f"} and store.counters["evicted_lru"] == 3


def test_a_reset_series_shows_none_of_its_stale_points() -> None:
    store = WindowStore(3, 1, max_gap_s=1.5)
    ts = np.array([0.0, 1.0, 2.0, 3.0, 9.0])  # the gap before ts 9 resets: 4, 5, 6, 7 are gone
    values = np.array([[4], [5], [6], [7], [8]], dtype=np.float32)
    ready = store.push_many(RecordBatch(("a",) * 5, ts, values))
    assert ready.ts.tolist() == [2.0, 3.0] and store.buffered("a") == 1
    # older points still sit in the ring next to 8: the next window waits for two new ones
    more = RecordBatch(("a",) * 2, np.array([10.0, 11.0]), np.array([[9], [10]], np.float32))
    ready = store.push_many(more)
    assert ready.ts.tolist() == [11.0]
    assert ready.values[..., 0].tolist() == [[8.0, 9.0, 10.0]]


# ---------------------------------------------------------------- contract


def test_batched_equals_one_by_one_and_inputs_unmutated() -> None:
    batch = make_batch("abcabcabcaabbcc", [0, 0, 0, 1, 1, 1, 2, 1, 2, 3, 9, 3, 4, 2, 5], d=2)
    before = (batch.series_ids, batch.ts.copy(), batch.values.copy())
    kw: dict[str, Any] = {"max_gap_s": 3.0, "gap_policy": "ffill", "max_fill": 3}
    whole = WindowStore(3, 2, **kw).push_many(batch)
    assert rows(whole) and rows(whole) == push_each(WindowStore(3, 2, **kw), batch)
    assert (batch.series_ids, batch.ts.tolist(), batch.values.tolist()) == (
        before[0], before[1].tolist(), before[2].tolist(),
    )  # fmt: skip
    assert not np.shares_memory(whole.values, batch.values)


def test_empty_batch() -> None:
    ready = WindowStore(3, 2).push_many(make_batch([], [], d=2))
    assert len(ready) == 0 and ready.values.shape == (0, 3, 2) and ready.ts.shape == (0,)


def test_wrong_shapes_raise() -> None:
    store = WindowStore(3, 2)
    with pytest.raises(ShapeError, match=r"expected shape \(2, 2\), got \(2, 3\)"):
        store.push_many(make_batch("ab", [0, 1], d=3))
    with pytest.raises(ShapeError):
        store.push_many(RecordBatch(("a",), np.zeros(2), np.zeros((1, 2), np.float32)))


def test_counters_and_introspection() -> None:
    store = WindowStore(2, 1)
    assert store.counters == dict.fromkeys(
        ["points", "late", "gap_resets", "filled", "evicted_lru", "evicted_idle", "windows"], 0
    )
    store.push_many(make_batch("aaa", [0, 1, 2]))
    c = store.counters
    c["points"] = -1  # a copy
    assert store.counters["points"] == 3 and store.buffered("a") == 2 and store.buffered("b") == 0
    assert (store.window, store.n_features, store.stride, store.gap_policy) == (2, 1, 1, "reset")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window": 0}, "window"),
        ({"window": 2.0}, "window"),
        ({"n_features": 0}, "n_features"),
        ({"stride": 0}, "stride"),
        ({"stride": True}, "stride"),
        ({"max_gap_s": 0.0}, "max_gap_s"),
        ({"max_gap_s": float("nan")}, "max_gap_s"),
        ({"gap_policy": "interpolate"}, "gap_policy"),
        ({"max_fill": -1}, "max_fill"),
        ({"idle_ttl_s": -5.0}, "idle_ttl_s"),
        ({"max_series": 0}, "max_series"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], name: str) -> None:
    args: dict[str, Any] = {"window": 3, "n_features": 2, **kwargs}
    with pytest.raises(ValueError, match=f"^{name} must be"):
        WindowStore(**args)


# ---------------------------------------------------------------- properties


class Reference:
    """The semantics, written as plainly as possible: whole point lists per series."""

    def __init__(self, w: int, stride: int, max_gap_s: float | None, policy: str, max_fill: int,
                 max_series: int | None) -> None:  # fmt: skip
        self.w, self.stride, self.max_gap_s = w, stride, max_gap_s
        self.policy, self.max_fill, self.max_series = policy, max_fill, max_series
        self.series: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.late = 0

    def push(self, sid: str, t: float, v: list[float]) -> list[list[float]] | None:
        s = self.series.get(sid)
        if s is None:
            if self.max_series is not None and len(self.series) == self.max_series:
                self.series.popitem(last=False)
            s = self.series[sid] = {"pts": [], "step": None, "since": None}
        elif t <= s["last"]:
            self.late += 1
            return None
        else:
            self.series.move_to_end(sid)
            self._gap(s, t - s["last"])
        s["pts"].append(v)
        s["last"] = t
        if len(s["pts"]) >= self.w and (s["since"] is None or s["since"] + 1 >= self.stride):
            s["since"] = 0
            return s["pts"][-self.w :]  # type: ignore[no-any-return]
        s["since"] = None if s["since"] is None else s["since"] + 1
        return None

    def _gap(self, s: dict[str, Any], gap: float) -> None:
        if self.max_gap_s is None or gap <= self.max_gap_s:
            s["step"] = gap
            return
        n = round(gap / s["step"]) - 1 if self.policy == "ffill" and s["step"] else None
        if n is not None and n <= self.max_fill:
            s["pts"] += [s["pts"][-1]] * n
            s["since"] = None if s["since"] is None else s["since"] + n
        else:
            s["pts"], s["since"] = [], None


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], RecordBatch, list[int]]:
    kw = {
        "window": draw(st.integers(1, 4)),
        "stride": draw(st.integers(1, 3)),
        "max_gap_s": draw(st.sampled_from([None, 2.5, 4.0])),
        "gap_policy": draw(st.sampled_from(["reset", "ffill"])),
        "max_fill": draw(st.integers(0, 3)),
        "max_series": draw(st.sampled_from([None, None, 2])),
    }
    n = draw(st.integers(0, 40))
    sids = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    steps = draw(st.lists(st.sampled_from([-2.0, 0.0, 0.5, 1.0, 1.0, 2.0, 5.0]), min_size=n,
                          max_size=n))  # fmt: skip
    cuts = sorted({0, n, *draw(st.lists(st.integers(0, n), max_size=6))})
    return kw, make_batch(sids, np.cumsum(steps).tolist(), d=2), cuts


def _chunks(store: WindowStore, batch: RecordBatch, cuts: list[int]) -> Out:
    out: Out = []
    for i, j in itertools.pairwise(cuts):
        out.extend(rows(store.push_many(batch.slice(i, j))))
    return out


def _reference(kw: dict[str, Any], batch: RecordBatch) -> tuple[Reference, Out]:
    ref = Reference(kw["window"], kw["stride"], kw["max_gap_s"], kw["gap_policy"], kw["max_fill"],
                    kw["max_series"])  # fmt: skip
    want: Out = []
    for sid, t, v in zip(batch.series_ids, batch.ts.tolist(), batch.values.tolist(), strict=True):
        win = ref.push(sid, t, v)
        if win is not None:
            want.append((sid, t, win))
    return ref, want


def _eviction_order(store: WindowStore) -> list[str]:
    """The series held, least recently updated first, as ``max_series`` evicts them: new
    series, one a call, until every series held before is gone."""
    assert store.max_series is not None
    held, order = store.series(), list[str]()
    for k in range(store.max_series):
        before = store.series()
        store.push_many(make_batch([f"new{k}"], [0.0], d=2))
        order.extend(sorted(before - store.series()))
    assert set(order) == held
    return order


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_property_matches_reference_model(
    case: tuple[dict[str, Any], RecordBatch, list[int]],
) -> None:
    kw, batch, cuts = case
    store = WindowStore(n_features=2, **kw)
    got = rows(store.push_many(batch))
    ref, want = _reference(kw, batch)
    assert got == want
    assert store.counters["late"] == ref.late and store.counters["windows"] == len(want)
    assert {s: store.buffered(s) for s in "abc"} == {
        s: min(len(ref.series[s]["pts"]), kw["window"]) if s in ref.series else 0 for s in "abc"
    }
    assert _chunks(WindowStore(n_features=2, **kw), batch, cuts) == got
    assert push_each(WindowStore(n_features=2, **kw), batch) == got


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_property_a_split_stream_continues_identically_in_the_same_lru_order(
    case: tuple[dict[str, Any], RecordBatch, list[int]],
) -> None:
    # the state one call leaves (rings, steps, strides, LRU order) is all the next call needs:
    # fed in two calls, the store gives what one call gives and holds the series in the
    # reference's order of last updates (seen through what max_series evicts next)
    kw, batch, cuts = case
    mid = cuts[len(cuts) // 2]
    split = WindowStore(n_features=2, **kw)
    got = rows(split.push_many(batch.slice(0, mid)))
    got += rows(split.push_many(batch.slice(mid, len(batch))))
    whole = WindowStore(n_features=2, **kw)
    ref, want = _reference(kw, batch)
    assert got == rows(whole.push_many(batch)) == want
    assert split.series() == whole.series() == set(ref.series)
    if kw["max_series"] is not None:
        assert _eviction_order(split) == _eviction_order(whole) == list(ref.series)


def _state(store: WindowStore) -> dict[str, object]:
    """Everything a store holds per series (its ring oldest first), and its LRU order."""
    out: dict[str, object] = {"lru": list(store._slots), "counters": store.counters}
    w = store.window
    for sid, slot in store._slots.items():
        n, h = int(store._count[slot]), int(store._head[slot])
        ring = (
            store._pool[slot][(h + np.arange(w)) % w][w - n :] if n == w else store._pool[slot, :n]
        )
        out[sid] = (
            ring.tolist(),
            n,
            float(store._last_ts[slot]),
            repr(float(store._last_step[slot])),
            int(store._since[slot]),
        )
    return out


STORES = [
    {},
    {"max_gap_s": 2.5},
    {"max_gap_s": 2.5, "gap_policy": "ffill", "max_fill": 3},
    {"max_series": 6},
    {"calendar": ("day",)},
    {"stride": 3},
    {"stride": 7, "max_series": 6},
    {"stride": 2, "max_gap_s": 2.5, "gap_policy": "ffill", "max_fill": 3},
]


@pytest.mark.parametrize("kwargs", STORES)
def test_a_batch_pushed_at_once_matches_its_records_pushed_one_by_one(kwargs: dict) -> None:
    """The vectorised path of push_many (big batches, any stride) against the per-record loop,
    on interleaved series with new series, single-record runs, and batches it must hand back
    (late records, gaps, evictions)."""
    rng = np.random.default_rng(7)
    fast, slow = WindowStore(5, 2, **kwargs), WindowStore(5, 2, **kwargs)
    t = {f"s{i}": 0.0 for i in range(9)}
    for b in range(40):
        n = int(rng.integers(32, 120))
        live = [f"s{i}" for i in range(min(9, 2 + b // 4))]  # new series join as it goes
        keys = [live[int(j)] for j in rng.integers(0, len(live), n)]
        ts = []
        for k in keys:
            t[k] += float(rng.choice([1.0, 1.0, 1.0, 2.0, 4.0] if b % 5 == 4 else [1.0, 2.0]))
            ts.append(t[k])
        if b % 7 == 6:
            ts[n // 2] = ts[n // 2] - 50.0  # a late record
        vals = rng.normal(size=(n, 2)).astype(np.float32)
        batch = RecordBatch(tuple(keys), np.array(ts), vals)
        got = fast.push_many(batch)
        ref = [slow.push_many(batch.slice(i, i + 1)) for i in range(n)]
        assert got.keys == tuple(k for r in ref for k in r.keys)
        np.testing.assert_array_equal(got.ts, np.concatenate([r.ts for r in ref]))
        np.testing.assert_array_equal(got.values, np.concatenate([r.values for r in ref]))
        assert _state(fast) == _state(slow), b


@pytest.mark.parametrize("kwargs", [*STORES, {"max_series": 60}])
def test_a_batch_of_one_record_per_series_matches_its_records_pushed_one_by_one(
    kwargs: dict,
) -> None:
    """A fleet's usual batch at scale: each record the only one of its series (the path that
    writes into the rings in place), with series joining, late records and gaps that send a
    batch back to the other paths."""
    rng = np.random.default_rng(11)
    fast, slow = WindowStore(5, 2, **kwargs), WindowStore(5, 2, **kwargs)
    names = [f"s{i}" for i in range(50)]
    t = dict.fromkeys(names, 0.0)
    for b in range(40):
        live = names[: 36 + 2 * (b // 6)]  # a few series join every sixth batch
        keys = [live[int(j)] for j in rng.permutation(len(live))[: int(rng.integers(32, 37))]]
        ts = []
        for k in keys:
            t[k] += float(rng.choice([1.0, 1.0, 1.0, 2.0, 4.0] if b % 5 == 4 else [1.0, 2.0]))
            ts.append(t[k])
        if b % 7 == 6:
            ts[len(ts) // 2] -= 50.0  # a late record
        vals = rng.normal(size=(len(keys), 2)).astype(np.float32)
        batch = RecordBatch(tuple(keys), np.array(ts), vals)
        got = fast.push_many(batch)
        ref = [slow.push_many(batch.slice(i, i + 1)) for i in range(len(keys))]
        assert got.keys == tuple(k for r in ref for k in r.keys)
        np.testing.assert_array_equal(got.ts, np.concatenate([r.ts for r in ref]))
        np.testing.assert_array_equal(got.values, np.concatenate([r.values for r in ref]))
        assert _state(fast) == _state(slow), b

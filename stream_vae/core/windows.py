"""Per-series sliding windows: records in, ready windows ``(n, W, d)`` out.

A :class:`WindowStore` keeps the last ``W`` points of every series in one pooled ring buffer and
emits a window whenever a series has a full buffer and ``stride`` new points since its last
window. It also owns what can go wrong with event time: late or duplicate points are dropped,
long gaps reset the series or are forward-filled, and idle or excess series are evicted.

With ``calendar`` (e.g. ``("day",)``), each point also carries the phase of its timestamp in
those cycles, as a sine and a cosine (:func:`calendar_columns`), after its ``d`` values: the
windows are ``(n, W, d + 2·len(calendar))``. A model then sees *when* a shape happens (a flat
segment at the hour the series usually rises); the scorer counts only the ``d`` values' error
(:class:`~stream_vae.model.detector.Detector`'s ``n_context``).

The store is pure: no I/O, no asyncio, no torch.

Examples
--------
>>> import numpy as np
>>> from stream_vae.core.records import RecordBatch
>>> store = WindowStore(window=3, n_features=1)
>>> batch = RecordBatch(("a",) * 4, np.arange(4.0), np.arange(4, dtype=np.float32)[:, None])
>>> ready = store.push_many(batch)
>>> ready.keys, ready.ts.tolist(), ready.values[..., 0].tolist()
(('a', 'a'), [2.0, 3.0], [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..errors import check_shape
from .calendar import CALENDAR_PERIODS, calendar_columns
from .records import RecordBatch
from .state import KEY_BYTES

__all__ = ["ReadyWindows", "WindowStore"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Growth factor of the pool. Growing uses realloc (ndarray.resize), which for large blocks is an
# mremap without a copy, so a small factor costs little and keeps the unused tail (RSS held for
# slots nobody uses yet) under ~25%.
_GROWTH = 1.25
_MIN_CAPACITY = 64
# Batches at least this large take the vectorised path (WindowStore._push_runs) when they can:
# below it, its fixed cost is more than the per-record loop's. Above it, it is faster at any
# number of records per series (bench/windows.py: 1.1x at one record per series, 2x at two,
# 5-6x at 20 or more).
_RUNS_MIN_RECORDS = 32
_COUNTERS = ("points", "late", "gap_resets", "filled", "evicted_lru", "evicted_idle", "windows")


@dataclass(frozen=True, slots=True)
class ReadyWindows:
    """Windows that became ready in one :meth:`WindowStore.push_many` call, in that order."""

    keys: tuple[str, ...]  # series id of each window
    ts: F64  # (n,) ts of each window's last point, epoch seconds
    values: F32  # (n, W, c), oldest -> newest: c = d values, then the calendar channels

    def __len__(self) -> int:
        return len(self.keys)


class WindowStore:
    """Ring buffers of the last ``window`` points of each series.

    Parameters
    ----------
    window
        Points per window (W).
    n_features
        Values per point (d).
    calendar
        Cycles (``"day"``, ``"week"``) whose phase each point carries after its values, as
        two channels each (a filled point: at one typical step after the one before it).
    stride
        New points of a series between two of its windows; the first window comes as soon as
        the buffer is full.
    max_gap_s
        A step longer than this (event time) is a gap; ``None`` never breaks a series.
    gap_policy
        ``"reset"`` empties the series on a gap; ``"ffill"`` repeats its last point
        ``round(gap / last_step) - 1`` times, or resets when that is more than ``max_fill``
        (or when no step has been observed yet).
    max_fill
        Most points one gap may be forward-filled with.
    idle_ttl_s
        :meth:`evict_idle` removes series whose last point is older than this.
    max_series
        Most series held; a new series beyond it evicts the least recently updated one.

    Notes
    -----
    Filled points count as points (for the buffer and for the stride), but windows are only
    emitted on real points, so a window always ends on an observed point. ``last_step`` is
    updated only by steps that are not gaps, so it stays the series' typical step.

    Examples
    --------
    >>> import numpy as np
    >>> from stream_vae.core.records import RecordBatch
    >>> store = WindowStore(3, 1, max_gap_s=1.5, gap_policy="ffill", max_fill=2)
    >>> ts = np.array([0.0, 1.0, 4.0, 3.0])  # a gap of 3 steps, then a late point
    >>> ready = store.push_many(RecordBatch(("a",) * 4, ts, np.float32([[1], [2], [3], [9]])))
    >>> ready.values[..., 0].tolist(), store.counters["filled"], store.counters["late"]
    ([[2.0, 2.0, 3.0]], 2, 1)
    """

    def __init__(
        self,
        window: int,
        n_features: int,
        stride: int = 1,
        max_gap_s: float | None = None,
        gap_policy: Literal["reset", "ffill"] = "reset",
        max_fill: int = 0,
        idle_ttl_s: float | None = None,
        max_series: int | None = None,
        calendar: Iterable[str] = (),
    ) -> None:
        self.window = window
        self.n_features = n_features
        self.calendar = tuple(calendar)
        self.stride = stride
        self.max_gap_s = max_gap_s
        self.gap_policy = gap_policy
        self.max_fill = max_fill
        self.idle_ttl_s = idle_ttl_s
        self.max_series = max_series
        self._validate()
        self.n_channels = n_features + 2 * len(self.calendar)  # per point: values, then calendar
        # Slot-indexed state: the pool holds the rings, the small arrays their metadata.
        self._pool: F32 = np.zeros((0, window, self.n_channels), dtype=np.float32)  # (cap, W, c)
        self._head: I64 = np.zeros(0, dtype=np.int64)  # next write position in the ring
        self._count: I64 = np.zeros(0, dtype=np.int64)  # points held, 0 = free slot
        self._last_ts: F64 = np.zeros(0, dtype=np.float64)
        self._last_step: F64 = np.zeros(0, dtype=np.float64)  # NaN until a step is seen
        self._since: I64 = np.zeros(0, dtype=np.int64)  # points since the last window
        self._ids: list[str | None] = []  # slot -> series id
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently updated first
        self._free: list[int] = []
        self._n_used = 0  # slots ever handed out (the rest of the capacity is untouched)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._ar = np.arange(window)

    def _validate(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        def is_int(x: object) -> bool:
            return isinstance(x, int | np.integer) and not isinstance(x, bool)

        def is_pos(x: object) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < math.inf

        need(is_int(self.window) and self.window >= 1, "window", "an int >= 1")
        need(is_int(self.n_features) and self.n_features >= 1, "n_features", "an int >= 1")
        need(is_int(self.stride) and self.stride >= 1, "stride", "an int >= 1")
        ok = all(k in CALENDAR_PERIODS for k in self.calendar)
        need(
            ok and len(set(self.calendar)) == len(self.calendar),
            "calendar",
            f"distinct of {sorted(CALENDAR_PERIODS)}",
        )
        need(self.max_gap_s is None or is_pos(self.max_gap_s), "max_gap_s", "None or > 0")
        need(self.gap_policy in ("reset", "ffill"), "gap_policy", "'reset' or 'ffill'")
        need(is_int(self.max_fill) and self.max_fill >= 0, "max_fill", "an int >= 0")
        need(self.idle_ttl_s is None or is_pos(self.idle_ttl_s), "idle_ttl_s", "None or > 0")
        ok = self.max_series is None or (is_int(self.max_series) and self.max_series >= 1)
        need(ok, "max_series", "None or an int >= 1")

    # ------------------------------------------------------------------ queries

    @property
    def counters(self) -> dict[str, int]:
        """Counts since construction: points, late, gap_resets, filled, evicted_*, windows."""
        return dict(self._counts)

    @property
    def n_series(self) -> int:
        """Series currently held."""
        return len(self._slots)

    def __contains__(self, series_id: object) -> bool:
        return series_id in self._slots

    def last_ts(self, series_id: str) -> float | None:
        """Time of the series' newest accepted point (``None`` for a series not held)."""
        slot = self._slots.get(series_id)
        return None if slot is None else float(self._last_ts[slot])

    def buffered(self, series_id: str) -> int:
        """Points held for ``series_id`` (at most ``window``; 0 for an unknown series)."""
        slot = self._slots.get(series_id)
        return 0 if slot is None else int(self._count[slot])

    # ------------------------------------------------------------------ pushing

    def push_many(self, batch: RecordBatch) -> ReadyWindows:
        """Add a batch of records in order; return the windows that became ready."""
        n, w, d = len(batch.series_ids), self.window, self.n_channels
        check_shape("WindowStore.push_many ts", batch.ts.shape, (n,))
        check_shape("WindowStore.push_many values", batch.values.shape, (n, self.n_features))
        keys: list[str] = []
        ends: list[float] = []
        # At most one window per record; grown by doubling rather than reserved for all n, and
        # written in place rather than stacked from n small copies (heap churn, a second copy).
        out: F32 = np.empty((min(n, 64), w, d), dtype=np.float32)  # (cap, W, d)
        values = batch.values
        if self.calendar:
            values = np.concatenate([values, calendar_columns(batch.ts, self.calendar)], axis=1)
        if n >= _RUNS_MIN_RECORDS:
            runs = self._push_runs(batch.series_ids, batch.ts, values)
            if runs is not None:
                return runs
        for i, (sid, t) in enumerate(zip(batch.series_ids, batch.ts.tolist(), strict=True)):
            slot = self._accept(sid, t)
            if slot >= 0 and self._append(slot, values[i], t):
                if len(keys) == len(out):
                    out.resize((min(n, 2 * len(out)), w, d), refcheck=False)  # we own `out`
                self._copy_window(slot, out[len(keys)])
                keys.append(sid)
                ends.append(t)
        out.resize((len(keys), w, d), refcheck=False)  # (n_ready, W, d), shrunk in place
        self._counts["windows"] += len(keys)
        return ReadyWindows(tuple(keys), np.asarray(ends, dtype=np.float64), out)

    def _push_runs(self, sids: tuple[str, ...], ts: F64, values: F32) -> ReadyWindows | None:
        """:meth:`push_many` for the whole batch at once, series by series, when no record is
        late, bridges a gap or makes room by evicting: the same windows,
        counters and state as one record at a time (tests/test_windows.py compares them), with
        the per-record work in NumPy. None, having changed nothing, when a record needs the
        one-at-a-time path."""
        known = self._slots
        names = list(dict.fromkeys(sids))  # the batch's series, in order of first record
        is_new = np.array([s not in known for s in names], dtype=bool)  # (m,)
        n_new = int(is_new.sum())
        if n_new and self.max_series is not None and len(known) + n_new > self.max_series:
            return None
        if not n_new and len(names) == len(sids):
            return self._push_singles(sids, ts, values)
        group = {s: g for g, s in enumerate(names)}
        rec_group = np.fromiter((group[s] for s in sids), np.int64, len(sids))  # (n,)
        order = np.argsort(rec_group, kind="stable")  # by series, then arrival
        t_sorted = ts[order]
        starts = np.flatnonzero(np.r_[True, np.diff(rec_group[order]) != 0])  # (m,)
        prev = np.empty(len(order))
        prev[1:] = t_sorted[:-1]
        prev[starts] = -math.inf  # a new series' first point follows nothing
        held = np.flatnonzero(~is_new)
        prev[starts[held]] = self._last_ts[[known[names[g]] for g in held.tolist()]]
        step = t_sorted - prev  # (n,) NaN or ≤ 0: late
        ok = step > 0
        if self.max_gap_s is not None:
            gap = step > self.max_gap_s
            gap[starts[is_new]] = False
            ok &= ~gap
        if not ok.all():
            return None
        for s in names:  # in order of first record, as one record at a time allocates
            if s not in known:
                self._allocate(s)
        slot = np.array([known[s] for s in names], dtype=np.int64)  # (m,)
        out, rows = self._runs_windows(slot, starts, order, values)
        self._runs_state(slot, starts, order, is_new, t_sorted, step, out)
        keys = tuple(sids[i] for i in rows.tolist())
        self._counts["points"] += len(sids)
        self._counts["windows"] += len(keys)
        return ReadyWindows(keys, ts[rows], out[0])

    def _push_singles(self, sids: tuple[str, ...], ts: F64, values: F32) -> ReadyWindows | None:
        """:meth:`_push_runs` when each record is the only one of its series and every series
        is held (a fleet's batch smaller than the fleet, at scale the usual case): each point is
        written into its ring in place and each window read from the ring once, rather than
        the rings laid out again with the new rows. None, having changed nothing, when a record
        needs the one-at-a-time path (late, or after a gap)."""
        w, n = self.window, len(sids)
        slot = np.fromiter(map(self._slots.__getitem__, sids), np.int64, n)  # (n,)
        step = ts - self._last_ts[slot]  # (n,) NaN or ≤ 0: late
        ok = step > 0
        if self.max_gap_s is not None:
            ok &= ~(step > self.max_gap_s)
        if not ok.all():
            return None
        head = self._head[slot]
        self._pool[slot, head] = values  # as _append: the point goes where the head is
        head = (head + 1) % w
        self._head[slot] = head
        count = np.minimum(self._count[slot] + 1, w)
        self._count[slot] = count
        self._last_ts[slot] = ts
        self._last_step[slot] = step
        since = self._since[slot] + 1
        ready = (count >= w) & (since >= self.stride)  # (n,)
        self._since[slot] = np.where(ready, 0, since)
        rows = np.flatnonzero(ready)
        # each ring oldest first: it starts at the head (the next write's place)
        windows = self._pool[slot[rows, None], (head[rows, None] + self._ar) % w]  # (r, W, c)
        for sid in sids:  # least recently updated first: in arrival order
            self._slots.move_to_end(sid)
        keys = sids if len(rows) == n else tuple(sids[i] for i in rows.tolist())
        self._counts["points"] += n
        self._counts["windows"] += len(keys)
        return ReadyWindows(keys, ts[rows], windows)

    def _runs_windows(
        self, slot: I64, starts: I64, order: I64, values: F32
    ) -> tuple[tuple[F32, F32, I64], I64]:
        """The ready windows (in arrival order) and their records; each series' points laid out
        as [its ring (W rows, oldest first), its new rows] in one array ``seq``."""
        w, c, ar = self.window, self.n_channels, self._ar
        m, n = len(slot), len(order)
        k = np.diff(np.r_[starts, n])  # (m,) records per series
        rings = self._pool[slot[:, None], (self._head[slot][:, None] + ar) % w]  # (m, W, c)
        offset = w * np.arange(m) + starts  # (m,) where each series' block starts in seq
        seq = np.empty((m * w + n, c), dtype=np.float32)
        seq[(offset[:, None] + ar).ravel()] = rings.reshape(-1, c)
        g = np.repeat(np.arange(m), k)  # (n,) series of each sorted record
        rank = np.arange(n) - starts[g]  # (n,) its place among its series' new records
        seq[offset[g] + w + rank] = values[order]
        # A series' first window in this batch ends at its record `first`: the buffer is full
        # and `stride` points have come since its last window; then one every `stride` records.
        first = self._first_ready(slot)  # (m,)
        ready = (rank >= first[g]) & ((rank - first[g]) % self.stride == 0)  # (n,)
        sel = np.flatnonzero(ready)
        sel = sel[np.argsort(order[sel])]  # in arrival order
        # every W consecutive rows of seq, as a view (L - W + 1, W, c): a window is one block
        view = np.lib.stride_tricks.sliding_window_view(seq, (w, c))[:, 0]
        windows = view[offset[g[sel]] + rank[sel] + 1]  # (n_ready, W, c), copied
        tails = view[offset + k]  # (m, W, c) each series' newest W points
        return (windows, tails, k), order[sel]

    def _first_ready(self, slot: I64) -> I64:
        """Per series (its state before the batch): the rank, among its new records, of the
        first that ends a window, as :meth:`_append` decides it one record at a time."""
        fills = self.window - self._count[slot] - 1  # records until the buffer is full
        return np.maximum(np.maximum(fills, 0), self.stride - self._since[slot] - 1)

    def _runs_state(
        self,
        slot: I64,
        starts: I64,
        order: I64,
        is_new: npt.NDArray[np.bool_],
        t_sorted: F64,
        step: F64,
        out: tuple[F32, F32, I64],
    ) -> None:
        """Each series' ring, counts and times as one record at a time leaves them."""
        w = self.window
        _, tails, k = out
        first = self._first_ready(slot)  # from the state before the batch
        last = starts + k - 1  # (m,) sorted position of each series' newest record
        count = np.minimum(self._count[slot] + k, w)
        full = count == w
        self._pool[slot[full]] = tails[full]  # oldest first: the next write goes to row 0
        self._head[slot[full]] = 0
        for g in np.flatnonzero(~full).tolist():  # still filling: points at [0, count)
            n_g = int(count[g])
            self._pool[slot[g], :n_g] = tails[g, w - n_g :]
            self._head[slot[g]] = n_g
        self._count[slot] = count
        self._last_ts[slot] = t_sorted[last]
        stepped = ~(is_new & (k == 1))  # a new series' only point sets no step
        self._last_step[slot[stepped]] = step[last[stepped]]
        emitted = k > first  # (m,) a window came in this batch
        last_ready = first + (k - 1 - first) // self.stride * self.stride
        self._since[slot] = np.where(emitted, k - 1 - last_ready, self._since[slot] + k)
        for g in np.argsort(order[last]).tolist():  # least recently updated first
            self._slots.move_to_end(self._ids[int(slot[g])])  # type: ignore[arg-type]

    def _accept(self, sid: str, t: float) -> int:
        """Slot to append ``t`` to (after handling a gap), or -1 if the point is late."""
        slot = self._slots.get(sid)
        if slot is None:
            return self._allocate(sid)
        step = t - float(self._last_ts[slot])
        if not step > 0:  # out of order or duplicate (also NaN)
            self._counts["late"] += 1
            return -1
        self._slots.move_to_end(sid)
        if self.max_gap_s is not None and step > self.max_gap_s:
            self._bridge_gap(slot, step)
        else:
            self._last_step[slot] = step
        return slot

    def _append(self, slot: int, row: F32, t: float) -> bool:
        """Write one real point; return whether the series now emits a window."""
        h = int(self._head[slot])
        self._pool[slot, h] = row
        self._head[slot] = h + 1 if h + 1 < self.window else 0
        count = min(int(self._count[slot]) + 1, self.window)
        self._count[slot] = count
        self._last_ts[slot] = t
        self._counts["points"] += 1
        since = int(self._since[slot]) + 1
        ready = count >= self.window and since >= self.stride
        self._since[slot] = 0 if ready else since
        return ready

    def _copy_window(self, slot: int, dst: F32) -> None:
        """Copy the full ring of ``slot`` into ``dst`` (W, c), oldest -> newest."""
        ring, h = self._pool[slot], int(self._head[slot])  # (W, c)
        dst[: self.window - h] = ring[h:]
        dst[self.window - h :] = ring[:h]

    def _bridge_gap(self, slot: int, gap: float) -> None:
        if self.gap_policy == "ffill":
            step = float(self._last_step[slot])
            ratio = gap / step if step > 0 else math.inf  # no step seen yet: cannot fill
            if math.isfinite(ratio):
                n_fill = round(ratio) - 1
                if n_fill <= self.max_fill:
                    self._fill(slot, n_fill)
                    return
        self._reset(slot)
        self._counts["gap_resets"] += 1

    def _fill(self, slot: int, n_fill: int) -> None:
        """Append ``n_fill`` copies of the last point (only the last W matter), each at its
        own time: one typical step after the other, for the calendar channels."""
        if n_fill <= 0:
            return
        w, h = self.window, int(self._head[slot])
        k = np.arange(max(1, n_fill - w + 1), n_fill + 1)  # the filled points the ring keeps
        rows = np.repeat(self._pool[slot, (h - 1) % w][None], len(k), axis=0)  # (≤ W, c)
        if self.calendar:
            t = float(self._last_ts[slot]) + k * float(self._last_step[slot])
            rows[:, self.n_features :] = calendar_columns(t, self.calendar)
        self._pool[slot, (h + k - 1) % w] = rows
        self._head[slot] = (h + n_fill) % w
        self._count[slot] = min(int(self._count[slot]) + n_fill, w)
        self._since[slot] += n_fill
        self._counts["filled"] += n_fill

    def _reset(self, slot: int) -> None:
        self._head[slot] = 0
        self._count[slot] = 0
        # "Never emitted": the first window comes as soon as the buffer is full again.
        self._since[slot] = self.stride

    # ------------------------------------------------------------------ slots

    def _allocate(self, sid: str) -> int:
        if self.max_series is not None and len(self._slots) >= self.max_series:
            old, _ = next(iter(self._slots.items()))
            self._remove(old)
            self._counts["evicted_lru"] += 1
        if self._free:
            slot = self._free.pop()
        else:
            if self._n_used == len(self._pool):
                self._grow()
            slot = self._n_used
            self._n_used += 1
        self._slots[sid] = slot
        self._ids[slot] = sid
        self._reset(slot)
        self._last_ts[slot] = -math.inf
        self._last_step[slot] = math.nan
        return slot

    def _grow(self) -> None:
        cap = max(_MIN_CAPACITY, math.ceil(len(self._pool) * _GROWTH))
        if self.max_series is not None:
            cap = min(cap, self.max_series)
        # ndarray.resize reallocs in place (no transient second pool). refcheck=False is safe:
        # the store never hands out views of these arrays.
        self._pool.resize((cap, self.window, self.n_channels), refcheck=False)
        for a in (self._head, self._count, self._last_ts, self._last_step, self._since):
            a.resize(cap, refcheck=False)
        self._ids.extend([None] * (cap - len(self._ids)))

    def _remove(self, sid: str) -> None:
        slot = self._slots.pop(sid)
        self._ids[slot] = None
        self._count[slot] = 0
        self._free.append(slot)

    def evict_idle(self, now_ts: float) -> int:
        """Remove series whose last point is older than ``now_ts - idle_ttl_s``; return how many."""
        if self.idle_ttl_s is None:
            return 0
        n = self._n_used
        idle = (self._count[:n] > 0) & (self._last_ts[:n] < now_ts - self.idle_ttl_s)
        for slot in np.flatnonzero(idle).tolist():
            sid = self._ids[slot]
            assert sid is not None  # a slot with points is always owned
            self._remove(sid)
        n_idle = int(idle.sum())
        self._counts["evicted_idle"] += n_idle
        return n_idle

    def series(self) -> frozenset[str]:
        """The series held (:class:`~stream_vae.core.state.SeriesState`)."""
        return frozenset(self._slots)

    def nbytes(self) -> int:
        """Bytes of the pooled buffers and their metadata (capacity, not only used slots), plus
        the id index."""
        arrays = (self._pool, self._head, self._count, self._last_ts, self._last_step, self._since)
        return sum(a.nbytes for a in arrays) + KEY_BYTES * len(self._slots)

    def drop(self, series_ids: Iterable[str]) -> None:
        """Remove the given series (unknown ids are ignored)."""
        for sid in series_ids:
            if sid in self._slots:
                self._remove(sid)

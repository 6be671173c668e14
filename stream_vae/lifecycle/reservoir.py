"""The clean-data reservoir: a bounded, time-stratified sample of recent normal windows.

Retraining must learn the new normal, not the anomalies. The service offers every scored window;
the reservoir keeps those that were *clean* (their series not in an alert episode, score under
the episode's closing level), in ``n_buckets`` strata of ``bucket_s`` stream seconds each, with
a uniform reservoir sample (Algorithm R) inside each stratum and the oldest stratum dropped first.
Stratifying by time keeps a busy hour from crowding out a quiet one, and bounds the data's age.

Which windows count as clean is the caller's decision (:func:`clean_mask`); the reservoir only
stores and samples.

Examples
--------
>>> import numpy as np
>>> r = CleanReservoir(capacity=6, n_buckets=2, bucket_s=10.0, seed=0)
>>> w = np.zeros((30, 4, 2), np.float32)
>>> r.add(["a"] * 30, np.arange(30.0), w)   # strata [0, 10), [10, 20), [20, 30)
>>> oldest, newest = r.time_range()         # the two newest strata, 3 windows each
>>> len(r), oldest >= 10.0
(6, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.sample import ReservoirSample
from ..errors import check_shape

__all__ = ["CleanReservoir", "ReservoirSample", "clean_mask"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class _Stratum:
    def __init__(self, capacity: int, shape: tuple[int, int]) -> None:
        self.windows = np.empty((capacity, *shape), np.float32)  # (cap, W, d)
        self.keys: list[str] = []
        self.ts = np.empty(capacity, np.float64)
        self.n_seen = 0

    def add(self, keys: Sequence[str], ts: F64, windows: F32, rng: np.random.Generator) -> None:
        cap = len(self.ts)
        fill = min(cap - len(self.keys), len(keys))
        if fill > 0:
            at = len(self.keys)
            self.windows[at : at + fill] = windows[:fill]
            self.ts[at : at + fill] = ts[:fill]
            self.keys.extend(keys[:fill])
        rest = np.arange(fill, len(keys))
        if len(rest):
            # Algorithm R: the i-th window seen replaces a random slot with probability cap / i
            seen = self.n_seen + rest + 1
            slot = (rng.random(len(rest)) * seen).astype(np.int64)
            take = slot < cap
            for i, j in zip(rest[take].tolist(), slot[take].tolist(), strict=True):
                self.windows[j] = windows[i]
                self.ts[j] = ts[i]
                self.keys[j] = keys[i]
        self.n_seen += len(keys)


class CleanReservoir:
    """At most ``capacity`` windows over the newest ``n_buckets`` strata of ``bucket_s``."""

    def __init__(
        self, capacity: int = 20_000, n_buckets: int = 24, bucket_s: float = 3600.0, seed: int = 0
    ) -> None:
        if capacity < n_buckets:
            raise ValueError(f"capacity ({capacity}) < n_buckets ({n_buckets})")
        self.capacity = capacity
        self.n_buckets = n_buckets
        self.bucket_s = bucket_s
        self.seed = seed
        self._strata: dict[int, _Stratum] = {}
        self._shape: tuple[int, int] | None = None
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return sum(len(s.keys) for s in self._strata.values())

    def add(
        self,
        keys: Sequence[str],
        ts: npt.ArrayLike,
        windows: npt.NDArray[np.floating[Any]],
        clean: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """Offer n windows (n, W, d) ending at ``ts``; only rows where ``clean`` are kept."""
        ts_arr = np.asarray(ts, dtype=np.float64)
        n = len(keys)
        check_shape("CleanReservoir.add ts", ts_arr.shape, (n,))
        check_shape("CleanReservoir.add windows", windows.shape, (n, None, None))
        if self._shape is None and n:
            self._shape = (windows.shape[1], windows.shape[2])
        if self._shape is not None:
            check_shape("CleanReservoir.add windows", windows.shape, (n, *self._shape))
        rows = np.arange(n) if clean is None else np.flatnonzero(clean)
        if len(rows) == 0 or self._shape is None:
            return
        bucket = np.floor(ts_arr[rows] / self.bucket_s).astype(np.int64)
        for b in np.unique(bucket).tolist():
            if self._strata and b < min(self._strata) and len(self._strata) >= self.n_buckets:
                continue  # older than everything kept: late data
            sel = rows[bucket == b]
            stratum = self._strata.get(b)
            if stratum is None:
                stratum = self._strata[b] = _Stratum(self.capacity // self.n_buckets, self._shape)
            stratum.add([keys[i] for i in sel.tolist()], ts_arr[sel], windows[sel], self._rng)
            while len(self._strata) > self.n_buckets:
                del self._strata[min(self._strata)]

    def time_range(self) -> tuple[float, float] | None:
        """(oldest, newest) end time of the windows held."""
        if not len(self):
            return None
        held = [s.ts[: len(s.keys)] for s in self._strata.values() if s.keys]
        return float(min(t.min() for t in held)), float(max(t.max() for t in held))

    def n_since(self, since_ts: float) -> int:
        """Windows held that end at or after ``since_ts``."""
        return sum(int((s.ts[: len(s.keys)] >= since_ts).sum()) for s in self._strata.values())

    def sample(self, since_ts: float | None = None) -> ReservoirSample:
        """Copies of the windows held (those ending at or after ``since_ts``), in time order."""
        if self._shape is None:
            return ReservoirSample(np.empty((0, 0, 0), np.float32), (), np.empty(0))
        parts = [s for _, s in sorted(self._strata.items()) if s.keys]
        if not parts:
            return ReservoirSample(np.empty((0, *self._shape), np.float32), (), np.empty(0))
        ts = np.concatenate([s.ts[: len(s.keys)] for s in parts])
        windows = np.concatenate([s.windows[: len(s.keys)] for s in parts])
        keys = [k for s in parts for k in s.keys]
        order = np.argsort(ts, kind="stable")
        if since_ts is not None:
            order = order[ts[order] >= since_ts]
        return ReservoirSample(windows[order], tuple(keys[i] for i in order.tolist()), ts[order])


def clean_mask(
    keys: Sequence[str],
    smoothed: npt.ArrayLike,
    threshold: float,
    hysteresis: float,
    open_series: frozenset[str] | set[str],
    *,
    fleet_change_share: float = 1.0,
    fleet_min_series: int = 1,
    n_series: int = 0,
) -> npt.NDArray[np.bool_]:
    """Windows fit to learn from: their series not in an episode, score below the close level.

    Exception: when at least ``fleet_change_share`` of ``n_series`` (≥ ``fleet_min_series``)
    series are in an episode at once, the fleet changed, not a machine, and every window is
    offered (a regime change would otherwise leave the reservoir without the new normal).
    """
    s = np.asarray(smoothed, dtype=np.float64)
    check_shape("clean_mask smoothed", s.shape, (len(keys),))
    if n_series >= fleet_min_series and len(open_series) >= fleet_change_share * n_series:
        return np.ones(len(keys), bool)
    quiet: npt.NDArray[np.bool_] = s < threshold * hysteresis
    if open_series:  # usually none: skip the per-window lookup then
        quiet &= np.array([k not in open_series for k in keys], bool)
    return quiet

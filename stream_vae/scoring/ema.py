"""Per-series exponential moving average of a score stream.

``s_t = beta * s_{t-1} + (1 - beta) * x_t``; the first value of a series is its first input (no
bias toward zero, so a series that starts anomalous alerts at once).

Examples
--------
>>> import numpy as np
>>> ema = SeriesEMA(0.5)
>>> ema.update(["a", "b", "a"], np.array([2.0, 10.0, 4.0])).tolist()
[2.0, 10.0, 3.0]
>>> ema.update(["b"], np.array([0.0])).tolist()
[5.0]
>>> len(ema)
2
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from ..core.state import KEY_BYTES
from ..errors import ConfigError, DataError, check_shape

__all__ = ["SeriesEMA"]

F64 = npt.NDArray[np.float64]

# A round of the batched update touches one row of each of m distinct series. numpy's per-call
# overhead (a handful of ufunc calls, ~1 µs each) beats a Python loop (~0.3 µs per row) only from
# about this many series per round; below it the remaining rows go through the scalar loop.
# Both paths perform the same IEEE operations, so their results are bitwise identical.
_MIN_VECTOR_KEYS = 16


class SeriesEMA:
    """Exponential moving average kept separately for each series.

    Parameters
    ----------
    beta : float
        Weight of the previous smoothed value, ``0 <= beta < 1`` (0 = no smoothing).

    Examples
    --------
    >>> import numpy as np
    >>> ema = SeriesEMA(0.75)
    >>> ema.update(["x"] * 3, np.array([4.0, 0.0, 0.0])).tolist()
    [4.0, 3.0, 2.25]
    >>> ema.drop(["x"])
    >>> ema.update(["x"], np.array([1.0])).tolist()
    [1.0]
    """

    def __init__(self, beta: float) -> None:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"SeriesEMA: beta must be in [0, 1), got {beta!r}")
        self.beta = beta
        self._slot: dict[str, int] = {}  # series id -> index into _value
        self._value: F64 = np.empty(0, dtype=np.float64)  # NaN = slot allocated, no value yet

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, series_id: object) -> bool:
        return series_id in self._slot

    def update(self, keys: Sequence[str], x: npt.ArrayLike) -> F64:
        """Feed one score per row, in order, and return the smoothed scores.

        Unlike the other mutators this one returns a value: the smoothed score of each row.
        A key may repeat within a batch; each row then sees the update of the row before it.

        Parameters
        ----------
        keys : sequence of str, length n
            Series id of each row.
        x : array_like, shape (n,)
            Finite raw scores.

        Returns
        -------
        numpy.ndarray, shape (n,), float64
            Smoothed score of each row, in row order.

        Examples
        --------
        >>> import numpy as np
        >>> SeriesEMA(0.5).update(["a", "a", "a"], np.array([8.0, 0.0, 0.0])).tolist()
        [8.0, 4.0, 2.0]
        """
        xs = np.asarray(x, dtype=np.float64)
        check_shape("SeriesEMA.update x", xs.shape, (len(keys),))
        if not np.isfinite(xs).all():
            raise DataError(
                f"SeriesEMA.update: {int((~np.isfinite(xs)).sum())} non-finite scores "
                "(a NaN or inf would stick in the series' state)"
            )
        if len(keys) >= _MIN_VECTOR_KEYS:
            known = self._known_distinct(keys)
            if known is not None:  # one round: every row is its series' only one in the batch
                prev, c = self._value[known], 1.0 - self.beta
                new = np.where(np.isnan(prev), xs, self.beta * prev + c * xs)
                self._value[known] = new
                return new
        rows_of: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            rows_of.setdefault(k, []).append(i)
        # longest groups first: round r then touches a prefix of the groups
        groups = sorted(rows_of.items(), key=lambda kv: -len(kv[1]))
        slots = np.array([self._slot_of(k) for k, _ in groups], dtype=np.intp)
        out = np.empty(xs.shape[0], dtype=np.float64)
        b, c = self.beta, 1.0 - self.beta
        r = 0
        while groups and len(groups) >= _MIN_VECTOR_KEYS:
            while groups and len(groups[-1][1]) <= r:
                groups.pop()
            if len(groups) < _MIN_VECTOR_KEYS:
                break
            rows = np.array([g[r] for _, g in groups], dtype=np.intp)  # (m,)
            sl = slots[: len(groups)]
            prev, xr = self._value[sl], xs[rows]
            new = np.where(np.isnan(prev), xr, b * prev + c * xr)
            self._value[sl] = new
            out[rows] = new
            r += 1
        self._scalar_rounds(groups, slots, r, xs, out)
        return out

    def _scalar_rounds(
        self,
        groups: list[tuple[str, list[int]]],
        slots: npt.NDArray[np.intp],
        r: int,
        xs: F64,
        out: F64,
    ) -> None:
        """Rows ``r:`` of each group, one at a time (same arithmetic as the vectorised rounds)."""
        b, c = self.beta, 1.0 - self.beta
        for j, (_, g) in enumerate(groups):
            s = int(slots[j])
            p = float(self._value[s])
            for i in g[r:]:
                xi = float(xs[i])
                p = xi if math.isnan(p) else b * p + c * xi
                out[i] = p
            self._value[s] = p

    def _known_distinct(self, keys: Sequence[str]) -> npt.NDArray[np.intp] | None:
        """The slots of ``keys`` when each is a held series and none repeats (a fleet's batch
        smaller than the fleet, at scale the usual case), else None: the per-key grouping of
        :meth:`update` is then not needed."""
        try:
            slots = np.fromiter(map(self._slot.__getitem__, keys), np.intp, len(keys))
        except KeyError:  # a series not seen yet: the general path allocates its slot
            return None
        return slots if len(set(keys)) == len(keys) else None

    def _slot_of(self, key: str) -> int:
        s = self._slot.get(key)
        if s is None:
            s = len(self._slot)
            if s == self._value.shape[0]:
                grown = np.full(max(16, 2 * s), np.nan, dtype=np.float64)
                grown[:s] = self._value
                self._value = grown
            self._value[s] = np.nan
            self._slot[key] = s
        return s

    def series(self) -> frozenset[str]:
        return frozenset(self._slot)

    def nbytes(self) -> int:
        return int(self._value.nbytes) + KEY_BYTES * len(self._slot)

    def drop(self, keys: Iterable[str]) -> None:
        """Forget these series (unknown ids are ignored); their next value starts afresh.

        Examples
        --------
        >>> import numpy as np
        >>> ema = SeriesEMA(0.5)
        >>> _ = ema.update(["a", "b"], np.array([1.0, 2.0]))
        >>> ema.drop(["a", "zzz"])
        >>> len(ema), "b" in ema
        (1, True)
        """
        gone = set(keys) & self._slot.keys()
        if gone:
            kept = [k for k in self._slot if k not in gone]
            self._set_state(kept, self._value[[self._slot[k] for k in kept]])

    def _set_state(self, series: list[str], value: F64) -> None:
        self._slot = {k: i for i, k in enumerate(series)}
        self._value = np.array(value, dtype=np.float64)  # a copy, never a view

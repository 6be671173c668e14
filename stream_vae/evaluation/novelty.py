"""Per-series novelty of the smoothed score: how far it rises above its own recent values.

``y_t = max(0, s_t − R_t) / P_t``, where ``R_t`` is the largest score of the series' previous
``window`` windows (kept as the maxima of 10 blocks: between ``window`` and about ``1.1 ·
window`` windows back, never fewer than ``window``)
and ``P_t = max(s_t, peak_decay · P_{t−1})`` its slowly forgotten peak (the scale: ``y`` is in
[0, 1] and comparable across series). A run of rows with ``y > 0`` is one rise above the recent
maximum; novelty reports ``y`` only where it beats every earlier row of its run, and 0
otherwise: it is high at the onset of a new, larger-than-recent excursion, and 0 while the
excursion persists, repeats within ``window`` windows, or falls back. A series' first window
has novelty 0 (nothing to be new against). A per-row score for benchmarks that charge every
flagged row (NAB); the alert episodes play that role for alerts. O(1) work and state per row.

Why this form (NAB, 31 files; ``bench/nab_transforms.py``, docs/results.md): a recent maximum
that is forgotten completely after ``window`` windows beat one that decays geometrically (which
forgets a large peak within a few hundred windows and re-flags the series' ordinary highs), and
reporting only new maxima of a run keeps a slow rise from flagging each of its rows. The
default ``window`` (1,000) was best for early-stopped models; NAB's parameter set uses 2,000
with models trained to the end (the better pair over three seeds).

Examples
--------
>>> import numpy as np
>>> nv = SeriesNovelty(window=3, peak_decay=1.0)
>>> nv.update(["a"] * 8, np.array([1.0, 1.0, 2.0, 3.0, 3.0, 1.0, 1.0, 4.0])).tolist()
[0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.25]

Row 3 (3.0) rises further in the run row 2 opened, but by less (1/3 of its scale): not new;
row 7 is new again against the previous 3 rows' maximum, 3.0.

Censoring (``censor`` > 0): where a run's novelty reaches ``censor``, the excursion is taken
for an anomaly: from that row until the score falls back to the recent maximum, its rows stay
out of that maximum, so that one anomaly does not hide the next one in the same ``window``
(the rows still count towards the block they fall in, and the peak ``P`` still sees them;
what is reported inside the excursion is still each new step above its own highest row, as
without censoring). Three guards: an excursion that lasts ``⌈window / 10⌉`` windows (one
block) is a new level, not an anomaly, and enters the maximum then; a recurring high is not an
anomaly either: at most ``censor_runs`` censorings per ``window`` windows (counted in the
block where each starts), later excursions enter the maximum as usual; and nothing is
censored before the series has one block of history. Without it, NAB's files lose the second
and third of their anomalies to the first one's maximum (docs/results.md, "NAB: censored
novelty").

>>> x = np.array([1.0, 1.0, 4.0, 1.0, 1.0, 3.0, 1.0, 1.0])
>>> SeriesNovelty(window=20, peak_decay=1.0).update(["a"] * 8, x).tolist()[5]  # under 4.0
0.0
>>> SeriesNovelty(window=20, peak_decay=1.0, censor=0.5).update(["a"] * 8, x).tolist()[5]
0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, DataError, check_shape

__all__ = ["SeriesNovelty"]

F64 = npt.NDArray[np.float64]

# The recent maximum is kept as the maxima of (at most) this many blocks of ⌈window / _BLOCKS⌉ rows.
_BLOCKS = 10
# per-series state: peak, best novelty of the current run, max of the open block, rows in the
# open block, next ring slot, rows seen (up to one block), max of the ring, an excursion is
# censored (0/1), censorings begun in the open block, censorings in the ring, the censored
# excursion's max and its rows; then the ring of block maxima and the ring of censoring counts
_HEAD = 12


class SeriesNovelty:
    """Novelty of a per-series score stream (see the module docstring)."""

    def __init__(
        self,
        window: int = 1000,
        peak_decay: float = 0.9999,
        censor: float = 0.0,
        censor_runs: int = 4,
    ) -> None:
        if not (isinstance(window, int) and window >= 1 and 0.0 < peak_decay <= 1.0):
            raise ConfigError(
                f"SeriesNovelty: need an integer window >= 1 and 0 < peak_decay <= 1, "
                f"got {window!r} and {peak_decay!r}"
            )
        if not (0.0 <= censor <= 1.0 and isinstance(censor_runs, int) and censor_runs >= 1):
            raise ConfigError(
                f"SeriesNovelty: need 0 <= censor <= 1 (0: off) and an integer censor_runs >= 1, "
                f"got {censor!r} and {censor_runs!r}"
            )
        self.window = window
        self.peak_decay = peak_decay
        self.censor = censor
        self.censor_runs = censor_runs
        self._block = math.ceil(window / _BLOCKS)
        self._n_blocks = math.ceil(window / self._block)
        self._state: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._state)

    def update(self, keys: Sequence[str], x: npt.ArrayLike) -> F64:
        """Feed one (non-negative) score per row, in order; returns each row's novelty."""
        xs = np.asarray(x, dtype=np.float64)
        check_shape("SeriesNovelty.update x", xs.shape, (len(keys),))
        out = np.zeros(len(keys))
        pd, block, n_blocks = self.peak_decay, self._block, self._n_blocks
        censor, runs = self.censor, self.censor_runs
        maxima, counts = slice(_HEAD, _HEAD + n_blocks), slice(_HEAD + n_blocks, None)
        for i, (k, v) in enumerate(zip(keys, np.maximum(xs, 0.0).tolist(), strict=True)):
            st = self._state.get(k)
            if st is None:
                st = self._state[k] = [0.0] * (_HEAD + 2 * n_blocks)
            peak = st[0] = max(v, pd * st[0])
            if st[5] and peak > 0.0:
                recent = max(st[2], st[6])
                if st[7] and v <= recent:  # the censored excursion is over
                    st[7] = 0.0
                # a censored excursion's rows are measured against its own maximum too, as
                # they would be if they were in the recent maximum: each step, not the climb
                rise = max(0.0, v - (max(recent, st[10]) if st[7] else recent)) / peak
                if rise <= 0.0:
                    st[1] = 0.0
                elif rise > st[1]:
                    out[i] = st[1] = rise
                    if (
                        censor
                        and rise >= censor
                        and not st[7]
                        and st[5] >= block
                        and st[8] + st[9] < runs
                    ):
                        st[7], st[8], st[10], st[11] = 1.0, st[8] + 1, 0.0, 0.0
            st[5] = min(st[5] + 1, block)
            if st[7]:
                st[10], st[11] = max(st[10], v), st[11] + 1
                if st[11] >= block:  # it lasts: a new level, not an anomaly; it enters the max
                    st[7], st[2] = 0.0, max(st[2], st[10])
            else:
                st[2] = max(st[2], v)
            st[3] += 1
            if st[3] >= block:  # the block is full: it enters the ring, a new one opens
                slot = int(st[4])
                st[_HEAD + slot], st[_HEAD + n_blocks + slot] = st[2], st[8]
                st[6], st[9] = max(st[maxima]), sum(st[counts])
                st[2], st[3], st[4], st[8] = 0.0, 0, (slot + 1) % n_blocks, 0.0
        return out

    def drop(self, keys: Iterable[str]) -> None:
        for k in keys:
            self._state.pop(k, None)

    def rescale(self, factor: float) -> None:
        """Express the remembered scores in units ``factor`` times the current ones (a model
        swap: the new model's scores have another scale); novelty itself is scale-free."""
        if not (math.isfinite(factor) and factor > 0.0):
            raise ConfigError(f"SeriesNovelty.rescale: need a finite factor > 0, got {factor!r}")
        end = _HEAD + self._n_blocks
        for st in self._state.values():
            st[0] *= factor  # peak
            st[2] *= factor  # the open block's max
            st[6] *= factor  # the ring's max
            st[10] *= factor  # the censored excursion's max
            st[_HEAD:end] = [v * factor for v in st[_HEAD:end]]  # the block maxima

    def snapshot(self) -> dict[str, Any]:
        """``{"window": w, "series": [...], "state": [[...], ...]}`` (plain types)."""
        return {
            "window": self.window,
            "series": list(self._state),
            "state": [list(v) for v in self._state.values()],
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("window") != self.window:
            raise DataError(
                f"SeriesNovelty snapshot: window {snapshot.get('window')!r}, this one has "
                f"{self.window}: the block layout differs"
            )
        series = [str(k) for k in snapshot["series"]]
        width = _HEAD + 2 * self._n_blocks
        try:
            state = np.asarray(snapshot["state"], dtype=np.float64)
        except ValueError as e:  # ragged rows
            raise DataError(f"SeriesNovelty snapshot: unreadable state ({e})") from e
        if state.size and (state.ndim != 2 or state.shape[1] != width):
            raise DataError(
                f"SeriesNovelty snapshot: rows of shape {state.shape[1:]}, this layout has "
                f"{width} values per series"
            )
        state = state.reshape(-1, width)
        check_shape("SeriesNovelty snapshot state", state.shape, (len(series), width))
        if len(set(series)) != len(series) or not np.isfinite(state).all():
            raise DataError("SeriesNovelty snapshot: duplicate series ids or non-finite values")
        if len(state) and (
            (state[:, 3] >= self._block).any()
            or (state[:, 4] >= self._n_blocks).any()
            or (state[:, 5] > self._block).any()
            or (state[:, 11] >= self._block).any()
            or not np.isin(state[:, 7], (0.0, 1.0)).all()
            or (state < 0.0).any()
        ):
            raise DataError("SeriesNovelty snapshot: block position or counts out of range")
        self._state = {k: row.tolist() for k, row in zip(series, state, strict=True)}

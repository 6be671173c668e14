"""Per-series novelty of the smoothed score: how far it rises above its own recent values.

``y_t = max(0, s_t − R_t) / P_t``, where ``R_t`` is the largest score of the series' previous
``window`` windows (kept as the maxima of 10 blocks: between ``window`` and about ``1.1 ·
window`` windows back, never fewer than ``window``)
and ``P_t = max(s_t, peak_decay · P_{t−1})`` its slowly forgotten peak (the scale: ``y`` is in
[0, 1] and comparable across series). A run of rows with ``y > 0`` is one rise above the recent
maximum; novelty reports ``y`` only where it beats every earlier row of its run, and 0
otherwise: it is high at the onset of a new, larger-than-recent excursion, and 0 while the
excursion persists, repeats within ``window`` windows, or falls back. A series' first window
has novelty 0 (nothing to be new against). O(1) work and state per row.

Two uses: a per-row score for benchmarks that charge every flagged row (the NAB evaluation's
stage, ``evaluation.novelty_*``), and the service's *novelty gate* (``alerts.novelty_gate``): an
alert episode opens only on a window whose novelty reaches the gate, so a series' recurring
highs (a nightly batch job, a weekly peak) alert the first time and not again while they recur
within ``window`` windows (:class:`~stream_vae.scoring.scorer.Scorer`).

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
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ..core.state import KeyedState
from ..errors import ConfigError, check_shape

__all__ = ["SeriesNovelty"]

F64 = npt.NDArray[np.float64]

# The recent maximum is kept as the maxima of (at most) this many blocks of ⌈window / _BLOCKS⌉ rows.
_BLOCKS = 10
# A series' state: the object with 14 slots and two rings of _BLOCKS (measured ~510 B with
# their boxed numbers, tracemalloc over 2,000 series).
_STATE_BYTES = 520


@dataclass(slots=True)
class _Series:
    """One series' state."""

    ring_maxima: list[float]  # the maxima of the last closed blocks, a ring
    ring_censors: list[int]  # censorings begun in each of those blocks
    peak: float = 0.0  # P, the slowly forgotten peak
    run_best: float = 0.0  # the best novelty of the current run (0: no run)
    block_max: float = 0.0  # the open block's max (a censored excursion's rows stay out)
    block_rows: int = 0  # rows in the open block
    slot: int = 0  # the ring slot the open block goes to
    rows_seen: int = 0  # up to one block
    ring_max: float = 0.0  # max(ring_maxima)
    censoring: bool = False  # an excursion is censored
    censors_in_block: int = 0  # censorings begun in the open block
    censors_in_ring: int = 0  # sum(ring_censors)
    excursion_max: float = 0.0  # the censored excursion's max
    excursion_rows: int = 0  # and its rows (it ends at one block; the count stays)


class SeriesNovelty(KeyedState):
    """Novelty of a per-series score stream (see the module docstring)."""

    STATE_BYTES = _STATE_BYTES

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
        self._state: dict[str, _Series] = {}

    def __len__(self) -> int:
        return len(self._state)

    def update(self, keys: Sequence[str], x: npt.ArrayLike) -> F64:
        """Feed one (non-negative) score per row, in order; returns each row's novelty."""
        xs = np.asarray(x, dtype=np.float64)
        check_shape("SeriesNovelty.update x", xs.shape, (len(keys),))
        out = np.zeros(len(keys))
        pd, block, n_blocks = self.peak_decay, self._block, self._n_blocks
        censor, runs = self.censor, self.censor_runs
        for i, (k, v) in enumerate(zip(keys, np.maximum(xs, 0.0).tolist(), strict=True)):
            st = self._state.get(k)
            if st is None:
                st = self._state[k] = _Series([0.0] * n_blocks, [0] * n_blocks)
            peak = st.peak = max(v, pd * st.peak)
            if st.rows_seen and peak > 0.0:
                recent = max(st.block_max, st.ring_max)
                if st.censoring and v <= recent:  # the censored excursion is over
                    st.censoring = False
                # a censored excursion's rows are measured against its own maximum too, as
                # they would be if they were in the recent maximum: each step, not the climb
                high = max(recent, st.excursion_max) if st.censoring else recent
                rise = max(0.0, v - high) / peak
                if rise <= 0.0:
                    st.run_best = 0.0
                elif rise > st.run_best:
                    out[i] = st.run_best = rise
                    if (
                        censor
                        and rise >= censor
                        and not st.censoring
                        and st.rows_seen >= block
                        and st.censors_in_block + st.censors_in_ring < runs
                    ):
                        st.censoring, st.excursion_max, st.excursion_rows = True, 0.0, 0
                        st.censors_in_block += 1
            st.rows_seen = min(st.rows_seen + 1, block)
            if st.censoring:
                st.excursion_max = max(st.excursion_max, v)
                st.excursion_rows += 1
                # it lasts: a new level, not an anomaly; it enters the max
                if st.excursion_rows >= block:
                    st.censoring = False
                    st.block_max = max(st.block_max, st.excursion_max)
            else:
                st.block_max = max(st.block_max, v)
            st.block_rows += 1
            if st.block_rows >= block:  # the block is full: it enters the ring, a new one opens
                slot = st.slot
                st.ring_maxima[slot], st.ring_censors[slot] = st.block_max, st.censors_in_block
                st.ring_max, st.censors_in_ring = max(st.ring_maxima), sum(st.ring_censors)
                st.block_max, st.block_rows, st.censors_in_block = 0.0, 0, 0
                st.slot = (slot + 1) % n_blocks
        return out

    def carry(self, other: SeriesNovelty, factor: float) -> None:
        """Take over ``other``'s per-series history, its scores times ``factor`` (a model swap:
        new threshold / old, since the new model's scores have another scale). Without it every
        series' history starts empty, and any rise soon after the swap counts as new. A history
        kept in other blocks (another window), or a factor that is not a finite number > 0,
        is not carried: every series starts afresh."""
        self._state = {}
        if (other._block, other._n_blocks) != (self._block, self._n_blocks):
            return
        if not (math.isfinite(factor) and factor > 0.0):
            return
        self._state = {k: replace(v, ring_maxima=list(v.ring_maxima),
                                  ring_censors=list(v.ring_censors))
                       for k, v in other._state.items()}  # fmt: skip
        self.rescale(factor)

    def rescale(self, factor: float) -> None:
        """Express the remembered scores in units ``factor`` times the current ones (a model
        swap: the new model's scores have another scale); novelty itself is scale-free."""
        if not (math.isfinite(factor) and factor > 0.0):
            raise ConfigError(f"SeriesNovelty.rescale: need a finite factor > 0, got {factor!r}")
        for st in self._state.values():  # the scores; counts and flags stay
            st.peak *= factor
            st.block_max *= factor
            st.ring_max *= factor
            st.excursion_max *= factor
            st.ring_maxima = [v * factor for v in st.ring_maxima]

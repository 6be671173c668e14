"""A threshold that follows each series' normal tail as it moves: streaming peaks-over-threshold.

DSPOT (Siffer et al., KDD 2017) per series, in O(1) time and memory per window. Scores are
measured in log units of the model's calibrated threshold ``t0``, ``x = log(score/t0 + 0.05)``
(:func:`log_unit`): relative to ``t0``, a series' state means the same under any model and
carries over a swap; in logs, a drift that multiplies the scores (and their spread: a
reconstruction error's noise grows with it) moves the level only. On a drifting generated
stream that took the alert rate from 18% to 6.5% (linear units; 30% static, target 1%).
For each series:

* a *level* ``m``: the exponentially weighted mean of its recent normal scores (DSPOT's local
  mean, so a series whose score baseline moves keeps its rate);
* a *tail*: the exponentially weighted count of normal rows ``n``, of peaks ``k`` (residuals
  ``x − m`` above the peak threshold ``u``) and the sum of their excesses; the generalised Pareto
  scale follows from the mean excess, ``σ = (1 − ξ)·mean``, with the shape ``ξ`` fixed at the
  trained one (a shape is not identified from the few peaks a series sees in a day);
* the threshold ``m + u + (σ/ξ)·((q·n/k)^(−ξ) − 1)`` (``u − σ·ln(q·n/k)`` for ξ = 0) in log
  units, clipped so that it is never below ``floor·t0`` nor above ``ceiling·t0``.

A row updates the state only when its score is *below* the threshold it met: an anomaly does not
raise its own bar (its first rows count as censored peaks: they passed it, by an unknown amount;
then nothing is learned until ten rows in a row are below it again). Every series starts from
the trained calibration (:class:`TailStart`, from the held-out scores, its threshold equal to
``t0``); the level forgets at the rate ``1/depth`` per row, the tail ten times slower.

The trade-off: a threshold that adapts also adapts to a fault that grows slowly enough. A rise
that stays below the threshold moves the level with it; the ``ceiling`` bounds what can be
absorbed (a fault whose score passes ``ceiling·t0`` always alerts), and docs/scoring.md says how
slow a ramp must be to pass under it.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> held_out = rng.exponential(size=5000)
>>> t0 = float(np.quantile(held_out, 0.99))
>>> start = TailStart.fit(held_out, t0, 0.01)
>>> spot = StreamingThreshold(start, t0, 0.01, depth=500)
>>> bool(abs(spot.update(["a"], np.array([0.0]))[0] - t0) < 1e-9)  # starts at the calibration
True
>>> thr = spot.update(["a"] * 4000, 3.0 * rng.exponential(size=4000))  # the scores triple
>>> bool(2.0 * t0 < thr[-1] <= 4.0 * t0)  # the threshold followed, up to its ceiling
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.state import KeyedState
from ..errors import ConfigError, DataError, check_shape
from .threshold import Calibration, CalibrationError, fit_gpd

__all__ = ["UNITS", "StreamingThreshold", "TailStart", "log_unit", "with_stream_start"]

F64 = npt.NDArray[np.float64]

log = logging.getLogger(__name__)

# The peaks a series' tail is read from: the residuals above this share of the held-out ones
# (Siffer et al.'s 2%), or 5 target rates when the target is looser (the threshold must lie in
# the tail the peaks describe).
_PEAK_SHARE = 0.02
_PEAK_TARGETS = 5.0
_MIN_PEAKS = 10
_EPS = 0.05  # see log_unit
# What a stored start is measured in (a start in other units is not one this code can use).
UNITS = "log(score/t0+0.05)"
# The shape is kept in [0, 0.45]: a negative shape puts an end point on the tail that a series'
# few peaks would move about, and at ξ ≥ 0.5 the mean excess (what σ is read from) has no
# variance.
_XI_RANGE = (0.0, 0.45)
_XI_ZERO = 1e-9
# What a series learns around an excursion over its threshold (runs declustering, as in
# extreme-value practice for dependent data): its first rows are learned as censored peaks (they
# passed the threshold, by an unknown amount), the rest not at all, nor the rows just after it
# until this many in a row are below the threshold again. Without the censored rows the tail is
# read from scores truncated at the threshold, and it shrinks: a 1% target alerted on 6% of a
# stationary stream. Without the wait, the dips of a long anomaly below the threshold are
# learned as normal peaks, and the anomaly lifts its own bar (to 3× within 300 rows in
# tests/test_streaming_threshold.py's ramp). Three rows: an excursion of a smoothed normal score
# rarely lasts longer; ten: a plateau's noise seldom dips below for ten rows running.
_CENSORED_ROWS = 3
# The tail remembers this many times longer than the level. With one memory of 500 windows and
# 2% peaks, the tail rested on 10 peaks: the rows of a fault ramping in just below the threshold
# each added a near-maximal excess, and the threshold ran away ahead of the fault (a fault adding
# 1× the calibrated threshold over 100 windows was never alerted). At 10× the same fault alerts
# when it ramps in over up to 300 windows (docs/scoring.md has the table).
_TAIL_DEPTHS = 10
_RESUME_ROWS = 10.0
# A series' state: level, weighted rows, peaks, uncensored peaks, sum of excesses, rows still to
# wait, censored rows of this excursion (7 floats in a list, ~220 B, plus its key).
_STATE_BYTES = 220


@dataclass(frozen=True, slots=True)
class TailStart:
    """Where every series' streaming threshold starts: the held-out scores' level and tail, in
    log units of the calibrated threshold (:func:`log_unit`), fitted at training time and
    stored with the calibration."""

    level: float  # mean of the held-out log-unit scores
    peak_threshold: float  # u: residuals (log-unit score − level) above it are peaks
    peak_rate: float  # share of the held-out residuals above u
    shape: float  # ξ of the peaks' generalised Pareto tail
    scale: float  # σ, chosen so that the start's threshold is the calibrated one

    @classmethod
    def fit(cls, scores: npt.ArrayLike, threshold: float, target_fpr: float) -> TailStart:
        """The start for held-out normal ``scores`` and the ``threshold`` calibrated on them.

        Examples
        --------
        >>> import numpy as np
        >>> s = np.random.default_rng(1).exponential(size=20_000)
        >>> st = TailStart.fit(s, float(np.quantile(s, 0.999)), 1e-3)
        >>> round(st.peak_rate, 3), abs(st.shape) < 0.1
        (0.02, True)
        """
        raw = np.asarray(scores, dtype=np.float64)
        check_shape("TailStart.fit scores", raw.shape, (None,))
        if raw.size < 4 or not np.isfinite(raw).all() or not threshold > 0:
            raise CalibrationError(
                "a streaming threshold's start needs >= 4 finite scores and a threshold > 0"
            )
        s = log_unit(raw, threshold)
        # a short held-out tail (NAB's: ~90 windows) reads its tail from more of its scores
        share = min(max(_PEAK_SHARE, _PEAK_TARGETS * target_fpr, _MIN_PEAKS / s.size), 0.5)
        level = float(s.mean())
        r = s - level
        u = float(np.quantile(r, 1.0 - share))
        y = r[r > u] - u
        if y.size < 2:  # ties at the quantile
            raise CalibrationError(f"a streaming threshold's start needs peaks, got {y.size}")
        # a shape from fewer peaks is noise: an exponential tail then
        xi = min(max(fit_gpd(y)[0], _XI_RANGE[0]), _XI_RANGE[1]) if y.size >= _MIN_PEAKS else 0.0
        rate = y.size / s.size
        # Anchor the scale so the start's threshold is exactly the calibrated one (which may
        # come from another estimator: POT on raw scores, or the trimmed fit); where the
        # calibration lies at or below the peaks, fall back to the peaks' own scale.
        g = _tail_factor(xi, target_fpr / rate)
        sigma = (log_unit(threshold, threshold) - level - u) / g if g > 0 else 0.0
        if not sigma > 0:
            sigma = (1.0 - xi) * float(y.mean())
        return cls(level, u, rate, xi, sigma)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "units": UNITS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TailStart:
        return cls(**{k: float(d[k]) for k in ("level", "peak_threshold", "peak_rate",
                                                 "shape", "scale")})  # fmt: skip


def log_unit(scores: npt.ArrayLike | float, threshold: float) -> Any:
    """Scores in the streaming threshold's units: ``log(score / t0 + ε)``. A score's noise grows
    with its level (a reconstruction error is a sum of squares), so a drift multiplies the
    scores, and their spread with them: in log units it moves the level only, which the level
    follows. ε = 0.05 keeps a near-zero score from pulling the level down without bound."""
    return np.log(np.maximum(np.asarray(scores, dtype=np.float64) / threshold, 0.0) + _EPS)


def with_stream_start(calibration: Calibration, scores: npt.ArrayLike) -> Calibration:
    """``calibration`` with the start of a streaming threshold fitted on the same held-out
    ``scores`` (``details["stream"]``); unchanged, with the reason logged, where they are too
    few to give one (a service asked for ``dspot`` then says the model has none)."""
    try:
        start = TailStart.fit(scores, calibration.threshold, calibration.target_fpr)
    except CalibrationError as exc:
        log.warning("no streaming-threshold start for this calibration: %s", exc)
        return calibration
    details = {**calibration.details, "stream": start.to_dict()}
    return replace(calibration, details=details)


def _tail_factor(xi: float, ratio: float) -> float:
    """Excess over the peak threshold at exceedance ratio ``ratio = q·n/k``, per unit of σ."""
    if ratio >= 1.0:
        return 0.0
    if abs(xi) < _XI_ZERO:
        return -math.log(ratio)
    return math.expm1(-xi * math.log(ratio)) / xi


class StreamingThreshold(KeyedState):
    """Per-series DSPOT threshold: :meth:`update` gives each row the threshold it meets.

    Parameters
    ----------
    start : TailStart
        The trained calibration's tail (score units).
    threshold : float
        The calibrated threshold ``t0`` (> 0): the unit of the state, and what ``floor`` and
        ``ceiling`` are relative to.
    target_fpr : float
        ``q``: the share of normal rows meant to reach the threshold.
    depth : int
        Rows of the level's memory (>= 10): it is the EMA of normal scores with weight
        ``1/depth``; the tail's counts remember ``10·depth`` rows (the start weighs as much as
        that many, and each row's weight decays by ``1 − 1/(10·depth)`` per later normal row).
    floor, ceiling : float
        The threshold stays in ``[floor·t0, ceiling·t0]``, ``0 < floor <= 1 <= ceiling``.

    Examples
    --------
    >>> import numpy as np
    >>> st = TailStart(level=-1.0, peak_threshold=0.5, peak_rate=0.02, shape=0.0, scale=0.1)
    >>> spot = StreamingThreshold(st, 2.0, 0.002, depth=100, ceiling=2.0)
    >>> z = -1.0 + 0.5 + 0.1 * np.log(10)  # level + u + σ·ln(k/(q·n)), in log units
    >>> bool(np.isclose(spot.update(["a"], [0.1])[0], (np.exp(z) - 0.05) * 2.0))
    True
    >>> thr = spot.update(["a"] * 4, np.array([99.0, 0.1, 0.1, 0.1]))
    >>> bool(thr[1] > thr[0])  # 99 passed the bar: a censored peak, however far it went
    True
    >>> bool(thr[1] == thr[2] == thr[3])  # then ten quiet rows before it learns again
    True
    """

    STATE_BYTES = _STATE_BYTES

    def __init__(
        self,
        start: TailStart,
        threshold: float,
        target_fpr: float,
        *,
        depth: int = 200,
        floor: float = 0.5,
        ceiling: float = 3.0,
    ) -> None:
        if not threshold > 0:
            raise ConfigError(f"StreamingThreshold: threshold must be > 0, got {threshold!r}")
        if not 0.0 < target_fpr < 0.5:
            raise ConfigError(
                f"StreamingThreshold: target_fpr must be in (0, 0.5), got {target_fpr!r}"
            )
        if depth < 10 or not 0.0 < floor <= 1.0 <= ceiling:
            raise ConfigError(
                "StreamingThreshold: need depth >= 10 and 0 < floor <= 1 <= ceiling, got "
                f"{depth!r}, {floor!r}, {ceiling!r}"
            )
        self.start = start
        self.threshold = threshold
        self.target_fpr = target_fpr
        self.depth = depth
        self.floor = floor
        self.ceiling = ceiling
        # the state is in log units of t0 (log_unit), and so are the bounds
        self._u = start.peak_threshold
        self._xi = start.shape
        self._lo, self._hi = float(log_unit(floor, 1.0)), float(log_unit(ceiling, 1.0))
        tail = depth * _TAIL_DEPTHS
        self._new = (
            start.level,
            float(tail),
            start.peak_rate * tail,
            start.peak_rate * tail,
            start.peak_rate * tail * start.scale / (1.0 - start.shape),
            0.0,
            0.0,
        )
        self._state: dict[str, list[float]] = {}

    def update(self, keys: Sequence[str], scores: npt.ArrayLike) -> F64:
        """Feed one score per row, in order; returns the threshold each row met (n,), in score
        units. A row below its threshold updates its series' level and tail.

        Unlike the other mutators this one returns a value: the thresholds.
        """
        s = np.asarray(scores, dtype=np.float64)
        check_shape("StreamingThreshold.update scores", s.shape, (len(keys),))
        if not np.isfinite(s).all():
            raise DataError("StreamingThreshold.update: non-finite scores")
        t0 = self.threshold
        x = log_unit(s, t0).tolist()
        out = [0.0] * len(x)
        lam = 1.0 - 1.0 / (self.depth * _TAIL_DEPTHS)
        a = 1.0 / self.depth
        u, xi, q = self._u, self._xi, self.target_fpr
        lo, hi = self._lo, self._hi
        state, new = self._state, self._new
        for i, k in enumerate(keys):
            st = state.get(k)
            if st is None:
                st = state[k] = list(new)
            m, wn, wk, wd, wy, hold, n_censored = st
            z = m + u + (1.0 - xi) * wy / wd * _tail_factor(xi, q * wn / wk)
            z = lo if z < lo else hi if z > hi else z
            out[i] = z
            r = x[i] - m
            if x[i] >= z:  # it passed the threshold: by how much is not learned
                st[5] = _RESUME_ROWS
                if n_censored < _CENSORED_ROWS:
                    st[1], st[6] = lam * wn + 1.0, n_censored + 1.0
                    if r > u:
                        st[2], st[3] = lam * wk + 1.0, lam * wd
                        st[4] = lam * wy + max(z - m - u, 0.0)
            elif hold > 0.0:  # just after an excursion: not normal yet
                st[5] = hold - 1.0
                st[6] = n_censored if hold > 1.0 else 0.0
            else:  # a normal row: it moves the level and the tail
                st[0] = m + a * r
                st[1] = lam * wn + 1.0
                if r > u:
                    st[2], st[3], st[4] = lam * wk + 1.0, lam * wd + 1.0, lam * wy + (r - u)
                else:
                    st[2], st[3], st[4] = lam * wk, lam * wd, lam * wy
        return (np.exp(np.asarray(out, dtype=np.float64)) - _EPS) * t0

    def ratios(self, keys: Iterable[str]) -> dict[str, float]:
        """Each known series' current threshold over ``t0`` (a query: nothing changes)."""
        u, xi, q = self._u, self._xi, self.target_fpr
        out = {}
        for k in keys:
            st = self._state.get(k)
            if st is not None:
                m, wn, wk, wd, wy, _, _ = st
                z = m + u + (1.0 - xi) * wy / wd * _tail_factor(xi, q * wn / wk)
                out[k] = math.exp(min(max(z, self._lo), self._hi)) - _EPS
        return out

    def carry(self, other: StreamingThreshold) -> None:
        """Take over ``other``'s per-series state (a model swap: both are in units of their
        own ``t0``, so each series keeps where its threshold stood against the calibration)."""
        self._state = {k: list(v) for k, v in other._state.items()}

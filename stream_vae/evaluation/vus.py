"""VUS-PR: the volume under the range-based precision-recall surface.

Paparrizos et al., "Volume Under the Surface: a new accuracy evaluation measure for time-series
anomaly detection" (VLDB 2022). This module follows ``RangeAUC_volume_opt`` of TSB-AD
(``TSB_AD/evaluation/basic_metrics.py``, also in TSB-UAD and TheDatumOrg/VUS), the code behind
the published VUS-PR tables, re-derived with the thresholds vectorised (no code copied). For
each buffer length ``l = 0 .. max_buffer``:

* every labelled run ``[s, e]`` gains ``h = l // 2`` points on each side, the point at distance
  ``d`` weighted ``sqrt(1 - d / l)``; overlapping weights add and are capped at 1;
* runs whose buffered spans overlap merge into one *range* (the unit of the existence reward);
* at a threshold ``τ`` (predict ``score >= τ``): ``TP`` = summed weight of the predicted points,
  ``P_l = P + (TP - TP_0) / 2`` (``P`` labelled points, ``TP_0`` of them predicted; the
  reference's midway between counting and not counting the buffer), ``recall = min(TP / P_l,
  1)``, ``TPR = recall × (ranges holding a prediction / ranges)``, ``precision = TP / #pred``;
* ``AP_l = Σ_t (TPR_t − TPR_{t−1}) · precision_t`` over thresholds from high to low,
  ``TPR_0 = 0``.

VUS-PR is the mean of ``AP_l`` over ``l``. Like TSB-AD, the thresholds are the scores at
``n_thresholds`` (default 250) evenly spaced ranks of the descending sort: a fixed cost per
series, and with ``n <= n_thresholds`` every distinct score is a threshold. With
``max_buffer=0`` and a single labelled run it is the step-wise average precision.

Examples
--------
>>> scores, labels = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7], [0, 1, 1, 0, 0, 0]
>>> vus_pr(scores, labels, max_buffer=0)  # = average_precision(scores, labels)
0.7
>>> round(vus_pr(scores, labels, max_buffer=2), 4)  # 0.8 next to the run earns some credit
0.747
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..errors import DataError, ShapeError

__all__ = ["label_runs", "vus_pr"]

F64 = npt.NDArray[np.float64]
Idx = npt.NDArray[np.intp]

# TSB-AD's fixed threshold count: enough for a smooth curve, and the cost stays O(n) per buffer.
DEFAULT_N_THRESHOLDS = 250


def label_runs(labels: npt.ArrayLike) -> tuple[Idx, Idx]:
    """First and last index (inclusive, unlike ``events.Segment``) of every run of nonzeros.

    Examples
    --------
    >>> starts, ends = label_runs([1, 1, 0, 0, 1, 0, 1])
    >>> starts.tolist(), ends.tolist()
    ([0, 4, 6], [1, 4, 6])
    """
    y = np.asarray(labels).astype(bool).astype(np.int8)
    edges = np.diff(np.concatenate(([0], y, [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def vus_pr(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    max_buffer: int | None = None,
    *,
    n_thresholds: int = DEFAULT_N_THRESHOLDS,
) -> float:
    """VUS-PR of per-point ``scores`` against 0/1 ``labels`` (higher score = more anomalous).

    Parameters
    ----------
    scores, labels
        One value per time step, same length; ``labels`` must hold at least one 1.
    max_buffer
        Largest total buffer length ``L`` (``windowSize`` in TSB-AD; each side gets ``l // 2``).
        TSB-AD passes twice its sliding window; a window model should pass ``2 * window`` so a
        detection up to one window away from a run still earns partial credit. ``None``: twice
        the median labelled-run length (the rule of TheDatumOrg/VUS's ``get_sliding_window``).
    n_thresholds
        How many score quantiles serve as thresholds (TSB-AD: 250).

    Returns
    -------
    float
        The mean over ``l = 0 .. L`` of the range-based area under the PR curve, in [0, 1].

    Examples
    --------
    >>> vus_pr([0.9, 0.1, 0.2], [1, 0, 0])
    1.0
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ShapeError(f"scores {s.shape} and labels {y.shape} must be 1-D and equal in length")
    if not np.isfinite(s).all():
        raise DataError("vus_pr: scores must be finite")
    if not y.any():
        raise DataError("vus_pr needs at least one positive label")
    if n_thresholds < 1:
        raise ValueError(f"n_thresholds must be >= 1, got {n_thresholds}")
    starts, ends = label_runs(y)
    if max_buffer is None:
        max_buffer = 2 * int(np.median(ends - starts + 1))
    if max_buffer < 0:
        raise ValueError(f"max_buffer must be >= 0, got {max_buffer}")
    first = _first_threshold(s, n_thresholds)
    n_pred = np.cumsum(np.bincount(first, minlength=n_thresholds))
    tp_labelled = np.cumsum(np.bincount(first[y], minlength=n_thresholds))
    aps = [
        _range_ap(first, y, starts, ends, buffer, n_pred, tp_labelled)
        for buffer in range(max_buffer + 1)
    ]
    return float(np.mean(aps))


def _first_threshold(s: F64, n_thresholds: int) -> Idx:
    """Per point, the index of the first (highest-first) threshold that predicts it."""
    ranks = np.linspace(0, len(s) - 1, n_thresholds).astype(int)
    thresholds = np.sort(s)[::-1][ranks]  # descending
    # predicted from the first threshold <= its score on: count the thresholds above it
    return np.searchsorted(-thresholds, -s, side="left")


def _range_ap(
    first: Idx,
    y: npt.NDArray[np.bool_],
    starts: Idx,
    ends: Idx,
    buffer: int,
    n_pred: Idx,
    tp_labelled: Idx,
) -> float:
    """Range-based average precision for one buffer length (arrays indexed by threshold)."""
    n_t = len(n_pred)
    weight = _buffered_labels(y, starts, ends, buffer)
    tp = np.cumsum(np.bincount(first, weights=weight, minlength=n_t))
    n_ranges, range_first = _ranges_first_hit(first, starts, ends, buffer // 2)
    existence = np.cumsum(np.bincount(range_first, minlength=n_t))[:n_t] / n_ranges
    positives = y.sum() + (tp - tp_labelled) / 2
    tpr = np.minimum(tp / positives, 1.0) * existence
    precision = tp / n_pred
    return float(np.dot(np.diff(tpr, prepend=0.0), precision))


def _buffered_labels(y: npt.NDArray[np.bool_], starts: Idx, ends: Idx, buffer: int) -> F64:
    """Labels as weights: 1 on the runs, ``sqrt(1 - d / buffer)`` at distance d <= buffer // 2."""
    n, half = len(y), buffer // 2
    weight = y.astype(np.float64)
    if half == 0:
        return weight
    d = np.arange(1, half + 1)
    ramp = np.sqrt(1.0 - d / buffer)  # (half,)
    pos = np.concatenate([(ends[:, None] + d).ravel(), (starts[:, None] - d).ravel()])
    ramps = np.tile(ramp, 2 * len(starts))  # matches pos: run-major, distance-minor
    inside = (pos >= 0) & (pos < n)
    weight += np.bincount(pos[inside], weights=ramps[inside], minlength=n)
    return np.minimum(weight, 1.0)


def _ranges_first_hit(first: Idx, starts: Idx, ends: Idx, half: int) -> tuple[int, Idx]:
    """Merge the runs' buffered spans; return their count and each one's first hit threshold."""
    n = len(first)
    # TSB-AD keeps two runs apart while e_i + half < s_{i+1} - half (unclipped)
    new = np.concatenate(([True], ends[:-1] + half < starts[1:] - half))
    lo = np.maximum(starts[new] - half, 0)
    hi = np.minimum(ends[np.concatenate((new[1:], [True]))] + half, n - 1)
    # a sentinel past the end lets the last span's reduction stop at hi + 1 == n
    bounds = np.column_stack([lo, hi + 1]).ravel()
    hit = np.minimum.reduceat(np.concatenate((first, [len(first)])), bounds)[::2]
    return len(lo), hit

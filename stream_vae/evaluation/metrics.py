"""Detection metrics over per-point scores or 0/1 predictions and 0/1 labels.

Threshold-free: :func:`roc_auc`, :func:`average_precision`, :func:`vus_pr` (from :mod:`.vus`).
At one threshold, the product's own: :func:`point_prf`, :func:`event_prf`,
:func:`detection_delays`, :func:`attribution_hit_rate`. Label-peeking, never the headline:
:func:`best_f1` (an oracle threshold) and :func:`point_adjusted_f1` (inflated).

An *event* is a maximal run of 1s (:func:`~.vus.label_runs` gives first and last indices;
interpretation segments are half-open, ``[start, end)``, like the rest of the package). Precision
with nothing predicted is 0 (scikit-learn's ``zero_division=0``); metrics that need a recall
raise :class:`~stream_vae.errors.DataError` when the labels hold no 1.

Examples
--------
>>> average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
0.8333333333333333
>>> point_prf([0, 1, 1, 0, 0, 1], [0, 1, 0, 0, 1, 1])
PRF(precision=0.6666666666666666, recall=0.6666666666666666, f1=0.6666666666666666)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import DataError, ShapeError
from ..scoring.hybrid import roc_auc as _roc_auc
from .vus import label_runs, vus_pr

__all__ = [
    "PRF",
    "InterpretationSegment",
    "attribution_hit_rate",
    "average_precision",
    "best_f1",
    "detection_delays",
    "event_prf",
    "false_alarms",
    "parse_interpretation",
    "point_adjusted_f1",
    "point_prf",
    "read_interpretation",
    "roc_auc",
    "vus_pr",
]

Bools = npt.NDArray[np.bool_]
Idx = npt.NDArray[np.intp]
# (first row, one past the last row, 0-based metric indices) of one labelled anomaly segment:
# half-open like events.Segment and LabelledSeries.interpretation
InterpretationSegment = tuple[int, int, frozenset[int]]


@dataclass(frozen=True, slots=True)
class PRF:
    """Precision, recall and their harmonic mean."""

    precision: float
    recall: float
    f1: float


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """ROC-AUC of scores against 0/1 labels (ties count one half)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    return _roc_auc(s[~y], s[y])


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    Tied scores are taken as one threshold, so the result does not depend on the order of ties.
    """
    tp_at, n_at, _, n_pos = _ranked(scores, labels, "average_precision")
    precision = tp_at / n_at
    recall_step = np.diff(np.r_[0, tp_at]) / n_pos
    return float((precision * recall_step).sum())


def best_f1(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """Oracle: the best point-wise F1 over every threshold, and that threshold.

    The threshold is chosen *with the test labels*, so this is an upper bound on what any
    threshold rule reaches, not a result: report it beside, never instead of, the F1 at the
    threshold the product chose. Prediction is ``score >= threshold``; among equal F1s the
    highest threshold wins.

    Examples
    --------
    >>> best_f1([0.9, 0.2, 0.7, 0.4], [1, 0, 1, 0])
    (1.0, 0.7)
    """
    tp_at, n_at, thresholds, n_pos = _ranked(scores, labels, "best_f1")
    f1 = 2 * tp_at / (n_at + n_pos)  # 2PR/(P+R) with P = tp/n_at, R = tp/n_pos
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def _ranked(
    scores: npt.ArrayLike, labels: npt.ArrayLike, who: str
) -> tuple[Idx, Idx, npt.NDArray[np.float64], int]:
    """True positives and predicted counts at each distinct threshold, highest first."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise DataError(f"{who} needs at least one positive label")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # the last index of each run of equal scores is where a threshold can sit
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    return tp[last], last + 1, s[last], n_pos


def point_prf(predictions: npt.ArrayLike, labels: npt.ArrayLike) -> PRF:
    """Point-wise precision, recall and F1 of 0/1 predictions.

    Examples
    --------
    >>> point_prf([1, 1, 0, 0], [1, 0, 0, 0])
    PRF(precision=0.5, recall=1.0, f1=0.6666666666666666)
    """
    p, y = _pair(predictions, labels, need_positive=True)
    tp = int((p & y).sum())
    return _prf(tp, int(p.sum()), tp, int(y.sum()))


def event_prf(predictions: npt.ArrayLike, labels: npt.ArrayLike, tolerance: int = 0) -> PRF:
    """Event-wise precision, recall and F1.

    A true event (run of 1s in ``labels``) ``[s, e]`` is detected when a predicted point falls
    in ``[s, e + tolerance]`` (a window detector keeps seeing an anomaly for up to W − 1 steps
    after it ends). Recall = detected events / true events. Precision = predicted events (runs
    of 1s in ``predictions``) touching any such span / predicted events: one long alarm counts
    once, however many points it has.

    Examples
    --------
    >>> y = [0, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    >>> event_prf([0, 0, 1, 1, 0, 1, 0, 0, 0, 0], y)
    PRF(precision=0.5, recall=0.5, f1=0.5)
    >>> event_prf([0, 0, 1, 1, 0, 1, 0, 0, 0, 1], y, tolerance=2)
    PRF(precision=0.6666666666666666, recall=1.0, f1=0.8)
    """
    p, y = _pair(predictions, labels, need_positive=True)
    starts, ends = label_runs(y)
    reach = np.minimum(ends + _check_tolerance(tolerance), len(y) - 1)
    n_before = np.r_[0, np.cumsum(p)]  # predicted points before each index
    detected = n_before[reach + 1] > n_before[starts]
    covered = np.r_[0, np.cumsum(_cover(starts, reach, len(y)))]
    p_starts, p_ends = label_runs(p)
    true_alarms = covered[p_ends + 1] > covered[p_starts]
    return _prf(int(true_alarms.sum()), len(p_starts), int(detected.sum()), len(starts))


def false_alarms(predictions: npt.ArrayLike, labels: npt.ArrayLike) -> int:
    """Predicted events (runs of 1s) that touch no labelled point: the alerts a person would
    have looked into for nothing.

    Examples
    --------
    >>> false_alarms([1, 0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 1, 0, 0])
    2
    """
    p, y = _pair(predictions, labels, need_positive=False)
    starts, ends = label_runs(p)
    hit = np.r_[0, np.cumsum(y)]
    return int((hit[ends + 1] == hit[starts]).sum())


def point_adjusted_f1(predictions: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Point-adjusted F1 (Xu et al. 2018): one hit inside a true event marks the whole event hit.

    Inflated by construction (a random score reaches ~0.76 on SMD; Kim et al., AAAI 2022):
    print it only labelled as such and beside :func:`point_prf` / :func:`event_prf`, never
    alone.

    Examples
    --------
    >>> point_adjusted_f1([0, 0, 0, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0])
    1.0
    """
    p, y = _pair(predictions, labels, need_positive=True)
    starts, ends = label_runs(y)
    n_before = np.r_[0, np.cumsum(p)]
    hit = n_before[ends + 1] > n_before[starts]
    return point_prf(p | _cover(starts[hit], ends[hit], len(y)), y).f1


def detection_delays(
    predictions: npt.ArrayLike, labels: npt.ArrayLike, tolerance: int = 0
) -> list[int]:
    """Steps from each detected true event's start to its first predicted point, in order.

    Missed events are left out (report recall beside the delays). ``tolerance`` has the meaning
    of :func:`event_prf`: a prediction up to that many steps after the end still counts.

    Examples
    --------
    >>> detection_delays([0, 0, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 1, 1])
    [1]
    """
    p, y = _pair(predictions, labels, need_positive=False)
    starts, ends = label_runs(y)
    first = _next_true(p)[starts]
    detected = first <= ends + _check_tolerance(tolerance)
    return [int(d) for d in (first - starts)[detected]]


def attribution_hit_rate(
    predictions: npt.ArrayLike,
    top_features: npt.ArrayLike,
    segments: Sequence[InterpretationSegment],
) -> float:
    """Share of detected segments whose first detection blames a ground-truth metric.

    Parameters
    ----------
    predictions
        0/1 per time step, shape ``(n,)``.
    top_features
        The detector's top-k blamed feature indices (0-based) per time step, shape ``(n, k)``;
        only rows where ``predictions`` is 1 are read.
    segments
        ``(start, end, dims)``: rows ``start <= i < end`` carry the anomaly in the 0-based
        features ``dims``, as from :func:`read_interpretation`.

    Returns
    -------
    float
        Among segments holding a predicted point, the fraction where the top-k features at
        the *first* such point meet ``dims``; NaN when no segment is detected.

    Examples
    --------
    >>> segs = [(1, 3, frozenset({0})), (4, 6, frozenset({2})), (7, 8, frozenset({1}))]
    >>> top = [[0, 1]] * 4 + [[1, 0]] * 4
    >>> attribution_hit_rate([0, 0, 1, 0, 0, 1, 0, 0], top, segs)
    0.5
    """
    p = _binary(predictions, "predictions")
    top = np.asarray(top_features)
    if top.ndim != 2 or len(top) != len(p):
        raise ShapeError(f"top_features: expected shape ({len(p)}, k), got {top.shape}")
    first_after = _next_true(p)
    hits: list[bool] = []
    for start, end, dims in segments:
        if not 0 <= start < end <= len(p):
            raise DataError(f"segment [{start}, {end}) is empty or outside {len(p)} predictions")
        first = int(first_after[start])
        if first < end:
            hits.append(not dims.isdisjoint(top[first].tolist()))
    return sum(hits) / len(hits) if hits else math.nan


def parse_interpretation(lines: Iterable[str]) -> list[InterpretationSegment]:
    """Parse SMD/ASD ``interpretation_label`` lines ``start-end:dim,dim,...``.

    In the file ``start`` and ``end`` are 0-based test rows, *both inclusive*: in all 12 ASD
    files the union of the segments is exactly the set of rows labelled 1 in ``test_label``
    (``760-765`` is rows 760..765). They are returned half-open, ``(start, end + 1)``, like
    Python slices and :class:`~stream_vae.evaluation.events.Segment`; dims are 1-based in the
    file and returned 0-based. Adjacent segments stay apart (omi-11 splits one labelled run).

    Examples
    --------
    >>> parse_interpretation(["760-765:4,5,7", "", "1064-1298:6"])
    [(760, 766, frozenset({3, 4, 6})), (1064, 1299, frozenset({5}))]
    """
    out: list[InterpretationSegment] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            span, dims_text = line.strip().split(":")
            first, last = (int(v) for v in span.split("-"))
            dims = frozenset(int(d) - 1 for d in dims_text.split(","))
        except ValueError as exc:
            raise DataError(f"interpretation line {number}: {line.strip()!r}: {exc}") from exc
        if not 0 <= first <= last or min(dims) < 0:
            raise DataError(f"interpretation line {number}: {line.strip()!r} is out of range")
        out.append((first, last + 1, dims))
    return out


def read_interpretation(path: str | os.PathLike[str]) -> list[InterpretationSegment]:
    """Read one ``interpretation_label/<series>.txt`` file (see :func:`parse_interpretation`)."""
    return parse_interpretation(Path(path).read_text().splitlines())


def _binary(x: npt.ArrayLike, name: str) -> Bools:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ShapeError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise DataError(f"{name}: expected 0/1 values (threshold scores first)")
    return a.astype(bool)


def _pair(
    predictions: npt.ArrayLike, labels: npt.ArrayLike, need_positive: bool
) -> tuple[Bools, Bools]:
    p, y = _binary(predictions, "predictions"), _binary(labels, "labels")
    if p.shape != y.shape:
        raise ShapeError(f"predictions {p.shape} and labels {y.shape} differ in length")
    if need_positive and not y.any():
        raise DataError("recall needs at least one positive label")
    return p, y


def _check_tolerance(tolerance: int) -> int:
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return tolerance


def _prf(hit_pred: int, n_pred: int, hit_true: int, n_true: int) -> PRF:
    precision = hit_pred / n_pred if n_pred else 0.0
    recall = hit_true / n_true
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1)


def _cover(starts: Idx, ends: Idx, n: int) -> Bools:
    """Mask of the points inside any ``[start, end]`` (inclusive, possibly overlapping)."""
    step = np.zeros(n + 1, dtype=np.int64)
    np.add.at(step, starts, 1)
    np.add.at(step, ends + 1, -1)
    return np.cumsum(step[:n]) > 0


def _next_true(p: Bools) -> Idx:
    """Per index i, the first j >= i with ``p[j]``; ``len(p)`` when there is none."""
    idx = np.where(p, np.arange(len(p)), len(p))
    return np.minimum.accumulate(idx[::-1])[::-1]

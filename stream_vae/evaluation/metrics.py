"""Threshold-free detection metrics over per-point scores and 0/1 labels.

Examples
--------
>>> average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
0.8333333333333333
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..scoring.hybrid import roc_auc as _roc_auc

__all__ = ["average_precision", "roc_auc"]


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """ROC-AUC of scores against 0/1 labels (ties count one half)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    return _roc_auc(s[~y], s[y])


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    Tied scores are taken as one threshold, so the result does not depend on the order of ties.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("average_precision needs at least one positive label")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # the last index of each run of equal scores is where a threshold can sit
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp_at, n_at = tp[last], last + 1
    precision = tp_at / n_at
    recall_step = np.diff(np.r_[0, tp_at]) / n_pos
    return float((precision * recall_step).sum())

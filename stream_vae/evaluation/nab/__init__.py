"""The Numenta Anomaly Benchmark (NAB v1.1): its files, its scorer and its threshold sweep.

:func:`read_nab` loads NAB's layout (``data/<category>/<file>.csv``,
``labels/combined_windows.json``), :func:`read_profiles` its cost profiles and
:func:`read_reference_scores` a published detector's per-row scores. :func:`score_detector`
scores per-row anomaly scores (in ``[0, 1]``, one per data row) under each profile at the
threshold that maximises the score over all files together, as NAB's optimiser does;
:func:`score_at_threshold` scores them at a threshold chosen beforehand (the product's own).

The rules are NAB's (its ``sweeper.py``): the first ``min(floor(0.15 n), 750)`` rows of each
file are not scored; a row is detected when its score is ``>= threshold``; the earliest detection
in a window earns ``A_TP`` scaled by :func:`scaled_sigmoid` of its relative position (1 at the
window's first row, near 0 at its last); later detections in the same window earn nothing more;
a window with no detection costs ``A_FN``; a detection outside every window costs ``A_FP``, less
when it comes soon after a window's end. Scores are normalised over all files together: 0 for the
null detector (never detects), 100 for the perfect one (detects each window at its first row).

The reading is in :mod:`.reader`, the scoring in :mod:`.scoring`; both are re-exported here.

Examples
--------
>>> import numpy as np
>>> ts = np.arange(100.0) * 300  # 100 rows, 5 minutes apart: rows 0-14 are probationary
>>> f = NabFile("demo/x.csv", ts, np.zeros(100), ((ts[50], ts[59]),))
>>> standard = CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
>>> scores = np.zeros(100)
>>> scores[50] = 0.9  # at the window's first row
>>> scores[80] = 0.6  # a false positive, 21 rows after the window
>>> r = score_detector([f], {"demo/x.csv": scores}, {"standard": standard})["standard"]
>>> round(r.score, 2), r.threshold  # the sweep keeps the hit and drops the false positive
(100.0, 0.9)
>>> round(score_at_threshold([f], {"demo/x.csv": scores}, standard, 0.5), 2)  # 1 - 0.11
94.5
"""

from __future__ import annotations

from .reader import CostProfile, NabFile, read_nab, read_profiles, read_reference_scores
from .scoring import (
    NO_DETECTION_THRESHOLD,
    FileOutcome,
    NabResult,
    file_outcome,
    per_file_best,
    probation_rows,
    scaled_sigmoid,
    score_at_threshold,
    score_detector,
)

__all__ = [
    "NO_DETECTION_THRESHOLD",
    "CostProfile",
    "FileOutcome",
    "NabFile",
    "NabResult",
    "file_outcome",
    "per_file_best",
    "probation_rows",
    "read_nab",
    "read_profiles",
    "read_reference_scores",
    "scaled_sigmoid",
    "score_at_threshold",
    "score_detector",
]

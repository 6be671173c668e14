"""NAB's scorer and its threshold sweep, over the files of :mod:`.reader`.

:func:`score_detector` scores per-row anomaly scores (in ``[0, 1]``, one per data row) under each
profile at the threshold that maximises the score over all files together, as NAB's optimiser
does; :func:`score_at_threshold` scores them at a threshold chosen beforehand (the product's own);
:func:`per_file_best` gives each file its own best threshold (an upper bound on per-file
calibration) and :func:`file_outcome` breaks a threshold down on one file. The rules are those
listed in :mod:`stream_vae.evaluation.nab`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ...errors import DataError
from .reader import CostProfile, NabFile

__all__ = [
    "NO_DETECTION_THRESHOLD",
    "FileOutcome",
    "NabResult",
    "file_outcome",
    "per_file_best",
    "probation_rows",
    "scaled_sigmoid",
    "score_at_threshold",
    "score_detector",
]

F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]

# NAB's probationary period: 15 % of a file's rows, at most 15 % of 5000 rows.
PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750
# The threshold NAB's sweep starts from: above every score in [0, 1], so nothing is detected.
NO_DETECTION_THRESHOLD = 1.1


@dataclass(frozen=True, slots=True)
class NabResult:
    """A detector's NAB score under one profile, at the best threshold over all files."""

    profile: str
    score: float  # normalised: 0 = null detector, 100 = perfect detector
    threshold: float  # rows scoring >= threshold are detections; 1.1 when none is best
    raw_score: float
    null_score: float  # raw score of a detector that never detects
    perfect_score: float  # raw score of one that detects every window at its first row


def scaled_sigmoid(position: npt.ArrayLike) -> F64:
    """NAB's ``scaledSigmoid``: ``2 / (1 + exp(5 x)) - 1``, and ``-1`` beyond ``x = 3``.

    ``x = -1`` is a window's first row (0.9866), ``x = 0`` just past its end (0); positive ``x``
    measures how far past a window's end a false positive lies, in window widths.

    Examples
    --------
    >>> scaled_sigmoid([-1.0, -0.5, 0.0, 1.0, 3.5]).round(5).tolist()
    [0.98661, 0.84828, 0.0, -0.98661, -1.0]
    """
    x = np.asarray(position, dtype=np.float64)
    # exp(5 x) overflows only where the result is clamped to -1 anyway
    with np.errstate(over="ignore"):
        s = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, s)


def probation_rows(n_rows: int) -> int:
    """Number of leading rows NAB does not score: ``min(floor(0.15 n), 750)``.

    Examples
    --------
    >>> probation_rows(4032), probation_rows(22695)
    (604, 750)
    """
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_MAX_ROWS)


@dataclass(frozen=True, slots=True, eq=False)
class _Layout:
    """Where each row of one file lies relative to its windows; independent of the profile."""

    scored: npt.NDArray[np.bool_]  # (n,) past the probationary period
    window: Ints  # (n,) index of the window holding the row, -1 outside every window
    tp_unit: F64  # (n,) inside a window: sigmoid of its position / sigmoid(-1), in (0, 1]
    fp_unit: F64  # (n,) outside: sigmoid of the distance past the preceding window, in [-1, 0]
    n_windows: int  # every labelled window, scorable or not (NAB's perfect score counts them)


def _window_rows(f: NabFile) -> tuple[Ints, Ints]:
    """First and last row of each window that holds rows, as two (k,) arrays.

    A window spans the rows from the first at or after its start to the last at or before its
    end; with NAB's labels both ends are row timestamps, which makes this NAB's exact-match rule.
    """
    bounds = [
        (int(np.argmax(f.ts >= a)), int(f.n_rows - 1 - np.argmax(f.ts[::-1] <= b)))
        for a, b in f.windows
        if (f.ts >= a).any() and (f.ts <= b).any()
    ]
    bounds = [(lo, hi) for lo, hi in bounds if lo <= hi]
    first = np.array([lo for lo, _ in bounds], dtype=np.intp)
    last = np.array([hi for _, hi in bounds], dtype=np.intp)
    if (first[1:] <= last[:-1]).any():
        raise DataError(f"{f.name}: anomaly windows overlap")
    return first, last


def _layout(f: NabFile) -> _Layout:
    """Each row's window, probation and unit TP / FP weight, per NAB's ``calcSweepScore``."""
    first, last = _window_rows(f)
    # a one-row sentinel window after the last row keeps the indexing below valid with no window
    first, last = np.append(first, f.n_rows), np.append(last, f.n_rows)
    rows = np.arange(f.n_rows)
    k = np.searchsorted(first, rows, side="right") - 1  # last window starting at or before row
    inside = (k >= 0) & (rows <= last[np.maximum(k, 0)])
    window = np.where(inside, k, -1)
    width = (last - first + 1).astype(np.float64)
    kk = np.maximum(k, 0)
    # NAB: -(last - i + 1) / width, so the window's first row sits at -1 and none reaches 0
    tp_unit = scaled_sigmoid(-(last[kk] - rows + 1) / width[kk]) / scaled_sigmoid(-1.0)
    # After a one-row window NAB divides by zero; such a false positive is taken as far away.
    with np.errstate(divide="ignore", invalid="ignore"):
        past = np.where(width[kk] > 1, (rows - last[kk]) / (width[kk] - 1), np.inf)
    # before the first window a false positive costs the full A_FP
    fp_unit = np.where(k >= 0, scaled_sigmoid(past), -1.0)
    return _Layout(
        scored=rows >= probation_rows(f.n_rows),
        window=window,
        tp_unit=np.where(inside, tp_unit, 0.0),
        fp_unit=np.where(inside, 0.0, fp_unit),
        n_windows=len(f.windows),
    )


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What a threshold does on one file: windows detected (of those past probation), the
    detections outside every window (false positives) and the first detection's delay in rows
    from the start of each detected window."""

    windows: int
    detected: int
    false_positives: int
    delays: tuple[int, ...]


def file_outcome(f: NabFile, scores: npt.ArrayLike, threshold: float) -> FileOutcome:
    """Per-file breakdown of a score at ``threshold`` (rows scoring >= it are detections): where
    a NAB score comes from.

    Examples
    --------
    >>> ts = np.arange(100.0) * 300
    >>> f = NabFile("demo/x.csv", ts, np.zeros(100), ((ts[50], ts[59]),))
    >>> s = np.zeros(100); s[53] = s[80] = s[81] = 0.9
    >>> file_outcome(f, s, 0.5)
    FileOutcome(windows=1, detected=1, false_positives=2, delays=(3,))
    """
    s, lay = _check_scores(f, scores), _layout(f)
    hit = lay.scored & (s >= threshold)
    delays = []
    windows = 0
    for w in range(int(lay.window.max(initial=-1)) + 1):
        rows = np.flatnonzero(lay.scored & (lay.window == w))
        if rows.size == 0:
            continue
        windows += 1
        found = rows[hit[rows]]
        if found.size:
            delays.append(int(found[0] - np.flatnonzero(lay.window == w)[0]))
    return FileOutcome(windows, len(delays), int((hit & (lay.window < 0)).sum()), tuple(delays))


def _check_scores(f: NabFile, scores: npt.ArrayLike) -> F64:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (f.n_rows,):
        raise DataError(f"{f.name}: expected scores of shape ({f.n_rows},), got {s.shape}")
    if not np.isfinite(s).all() or (s < 0).any() or (s > 1).any():
        raise DataError(f"{f.name}: scores must be finite and in [0, 1]")
    return s


def _events(f: NabFile, scores: npt.ArrayLike, p: CostProfile) -> tuple[F64, F64, int, int]:
    """The raw score as a step function of the threshold, for one file.

    Returns ``(score, change, n_scorable, n_windows)``: lowering the threshold to ``score[j]``
    adds ``change[j]`` to the raw score, which starts at ``-A_FN * n_scorable`` (nothing
    detected). A false positive's change is its own cost; in a window the changes telescope to
    the best detection so far, which is the earliest (the weight falls along the window).
    """
    s, lay = _check_scores(f, scores), _layout(f)
    outside = lay.scored & (lay.window < 0)
    parts_s, parts_d = [s[outside]], [p.fp_weight * lay.fp_unit[outside]]
    n_scorable = 0
    for w in range(int(lay.window.max(initial=-1)) + 1):
        rows = np.flatnonzero(lay.scored & (lay.window == w))
        if rows.size == 0:
            continue  # inside the probationary period: NAB neither rewards nor charges it
        n_scorable += 1
        order = rows[np.argsort(-s[rows], kind="stable")]
        gain = np.concatenate(([-p.fn_weight], p.tp_weight * lay.tp_unit[order]))
        parts_s.append(s[order])
        parts_d.append(np.diff(np.maximum.accumulate(gain)))
    return np.concatenate(parts_s), np.concatenate(parts_d), n_scorable, lay.n_windows


@dataclass(frozen=True, slots=True, eq=False)
class _Corpus:
    """Every file's steps under one profile, pooled, with the normalisation's two ends."""

    score: F64  # (m,) the score of each step
    change: F64  # (m,) the raw score's change when the threshold reaches it
    null: float
    perfect: float

    def normalise(self, raw: float) -> float:
        """NAB's 0 (null) .. 100 (perfect) scale."""
        return 100.0 * (raw - self.null) / (self.perfect - self.null)


def _corpus(
    files: Sequence[NabFile], scores_by_file: Mapping[str, npt.ArrayLike], p: CostProfile
) -> _Corpus:
    missing = [f.name for f in files if f.name not in scores_by_file]
    if missing:
        raise DataError(f"no scores for {len(missing)} file(s), e.g. {missing[0]}")
    parts = [_events(f, scores_by_file[f.name], p) for f in files]
    null = -p.fn_weight * sum(part[2] for part in parts)
    perfect = p.tp_weight * sum(part[3] for part in parts)
    if perfect <= null:
        raise DataError(f"profile {p.name}: the files hold no anomaly window to score")
    score = np.concatenate([part[0] for part in parts])
    change = np.concatenate([part[1] for part in parts])
    return _Corpus(score, change, null, perfect)


def _best_threshold(c: _Corpus) -> tuple[float, float]:
    """``(threshold, raw score)`` maximising the raw score over every distinct score.

    One sort and one cumulative sum instead of a rescoring per threshold. Ties go to the highest
    threshold, as in NAB (a stable sort of thresholds listed from the highest).
    """
    order = np.argsort(-c.score, kind="stable")
    s, total = c.score[order], np.cumsum(c.change[order])
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last step at each distinct score
    thresholds = np.concatenate(([NO_DETECTION_THRESHOLD], s[ends]))
    raw = c.null + np.concatenate(([0.0], total[ends]))
    best = int(np.argmax(raw))
    return float(thresholds[best]), float(raw[best])


def score_detector(
    files: Sequence[NabFile],
    scores_by_file: Mapping[str, npt.ArrayLike],
    profiles: Mapping[str, CostProfile],
) -> dict[str, NabResult]:
    """NAB score per profile at that profile's best threshold over all ``files`` together.

    ``scores_by_file`` maps each file's name to its per-row scores, (n,) in ``[0, 1]``.
    """
    out = {}
    for name, p in profiles.items():
        c = _corpus(files, scores_by_file, p)
        threshold, raw = _best_threshold(c)
        out[name] = NabResult(name, c.normalise(raw), threshold, raw, c.null, c.perfect)
    return out


def per_file_best(
    files: Sequence[NabFile], scores_by_file: Mapping[str, npt.ArrayLike], profile: CostProfile
) -> float:
    """Normalised NAB score with each file at its own best threshold (labels used): an upper
    bound on any per-file calibration of the same scores. When it is close to the swept score,
    the points are lost to the ranking within files, not to the scale across them; far above,
    it may be either (each file picks its best of its own candidate rows, so a score with many
    distinct rises per file gains here without any calibration being able to find them).
    """
    c = _corpus(files, scores_by_file, profile)
    gain = 0.0
    for f in files:
        score, change, _, _ = _events(f, scores_by_file[f.name], profile)
        steps = _Corpus(score, change, 0.0, 1.0)  # a file without windows: its best is 0
        gain += _best_threshold(steps)[1]
    return c.normalise(c.null + gain)


def score_at_threshold(
    files: Sequence[NabFile],
    scores_by_file: Mapping[str, npt.ArrayLike],
    profile: CostProfile,
    threshold: float,
) -> float:
    """Normalised NAB score (0 null .. 100 perfect) with detections where score >= threshold."""
    c = _corpus(files, scores_by_file, profile)
    return c.normalise(c.null + float(c.change[c.score >= threshold].sum()))

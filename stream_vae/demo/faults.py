"""Anomalies for the synthetic fleet: where they go, what they do to a clean series, and the
labels of the windows over them.

:func:`place` lays out one series' injections (non-overlapping, at least :data:`MIN_GAP` rows
apart) and :func:`inject` applies one of them, in place, to the values of a :class:`CleanSeries`.
:func:`window_labels` turns row labels into the labels of the windows a detector scores.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> spans = place(rng, ["spike", "level_shift"], start=100, n_steps=300)
>>> len(spans), all(100 <= s < e <= 300 for s, e in spans)
(2, True)
>>> spans[1][0] - spans[0][1] >= MIN_GAP
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, ShapeError

__all__ = ["MIN_GAP", "CleanSeries", "inject", "place", "window_labels"]

F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

# Rows between two injections of one series, so an episode tracker sees separate episodes.
MIN_GAP = 10

# Inclusive length ranges in rows. Spikes are points; the others must outlast a typical window
# (20-50 rows) so that a window-based detector can see them whole.
_LENGTHS = {
    "spike": (1, 3),
    "level_shift": (20, 60),
    "variance_burst": (20, 60),
    "stuck_sensor": (30, 80),
    "correlation_break": (30, 80),
}
# Magnitudes in channel standard deviations (spike, level shift) or noise multiples (burst):
# large enough to be found, small enough that a threshold on the raw value is not enough.
_SPIKE_STDS = (4.0, 6.0)
_SHIFT_STDS = (2.0, 3.0)
_BURST_NOISE = (4.0, 6.0)


@dataclass(frozen=True, slots=True)
class CleanSeries:
    """The parts of one clean series; value = offset + scale * (signal + noise)."""

    offset: F64  # (T, d) includes the regime shift
    scale: F64  # (d,)
    signal: F64  # (T, d) latent mix, about unit variance per channel
    noise: F64  # (T, d) Gaussian, std = noise

    @property
    def values(self) -> F64:
        return self.offset + self.scale * (self.signal + self.noise)


def place(
    rng: np.random.Generator, kinds: list[str], start: int, n_steps: int
) -> list[tuple[int, int]]:
    """Non-overlapping spans in [start, n_steps), MIN_GAP apart, in a random uniform layout."""
    m = len(kinds)
    if m == 0:
        return []
    lengths = np.array([rng.integers(lo, hi + 1) for lo, hi in (_LENGTHS[k] for k in kinds)])
    room = n_steps - start - MIN_GAP * (m - 1)
    if room < m:
        raise ConfigError(
            f"{m} anomalies do not fit in rows [{start}, {n_steps}) with {MIN_GAP}-row gaps"
        )
    if lengths.sum() > room:  # shrink to fit a short anomaly region
        lengths = np.maximum(1, np.floor(lengths * room / lengths.sum())).astype(np.int64)
    slack = room - int(lengths.sum())
    offsets = np.sort(rng.integers(0, slack + 1, m))
    starts = (
        start + offsets + np.concatenate([[0], np.cumsum(lengths)[:-1]]) + MIN_GAP * np.arange(m)
    )
    return [(int(s), int(s + n)) for s, n in zip(starts, lengths, strict=True)]


def inject(
    rng: np.random.Generator, kind: str, x: F64, normal: CleanSeries, std: F64, s: int, e: int
) -> tuple[int, ...]:
    """Apply one anomaly to ``x`` (T, d) in place; return the channels involved."""
    d = x.shape[1]
    if kind == "correlation_break":
        feats = _partners(rng, x[s:e])  # still clean: spans never overlap
        _break_correlation(rng, x, normal, feats, s, e)
        return feats
    feats = tuple(sorted(int(c) for c in rng.choice(d, rng.integers(1, min(3, d) + 1), False)))
    cols = list(feats)
    sign = rng.choice([-1.0, 1.0], len(cols))
    if kind == "spike":
        x[s:e, cols] += sign * rng.uniform(*_SPIKE_STDS, len(cols)) * std[cols]
    elif kind == "level_shift":
        x[s:e, cols] += sign * rng.uniform(*_SHIFT_STDS, len(cols)) * std[cols]
    elif kind == "variance_burst":
        extra = rng.uniform(*_BURST_NOISE, len(cols)) - 1.0
        x[s:e, cols] += extra * normal.scale[cols] * normal.noise[s:e, cols]
    elif kind == "stuck_sensor":
        x[s:e, cols] = x[s, cols]
    else:  # pragma: no cover - kinds are validated up front
        raise ConfigError(f"unknown anomaly kind {kind!r}")
    return feats


def _partners(rng: np.random.Generator, span: F64) -> tuple[int, ...]:
    """The most correlated pair of channels over the clean ``span`` (L, d), in random order,
    then maybe one more channel at random.

    A break is only visible where there was a correlation to break, and over a short span the
    correlation of two channels can differ a lot from their long-run one (or drown in noise where
    a channel is nearly flat), hence the observed values over the span.
    """
    d = span.shape[1]
    centred = span - span.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)  # (d,)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.abs(centred.T @ centred) / np.outer(norms, norms)  # (d, d)
    corr = np.nan_to_num(corr, nan=0.0)
    np.fill_diagonal(corr, -1.0)
    pair = [int(c) for c in np.unravel_index(np.argmax(corr), corr.shape)]
    c0, c1 = (pair[0], pair[1]) if rng.random() < 0.5 else (pair[1], pair[0])
    rest = [c for c in range(d) if c not in (c0, c1)]
    if rest and rng.random() < 0.5:
        return (c0, c1, int(rng.choice(rest)))
    return (c0, c1)


def _break_correlation(
    rng: np.random.Generator, x: F64, normal: CleanSeries, feats: tuple[int, ...], s: int, e: int
) -> None:
    """Replace the signal of ``feats[0]`` on s:e by one uncorrelated with the partners' signals.

    The replacement is a fresh sine, orthogonalised against the partners over the span and
    rescaled to the original's mean and std there, so the marginal range stays the same.
    """
    c0, partners = feats[0], list(feats[1:])
    orig = normal.signal[s:e, c0]
    t = np.arange(e - s)
    u = np.sin(2 * math.pi * t / rng.uniform(20.0, 80.0) + rng.uniform(0, 2 * math.pi))
    basis = normal.signal[s:e, partners] - normal.signal[s:e, partners].mean(axis=0)
    u = u - u.mean()
    if basis.size:
        coef, *_ = np.linalg.lstsq(basis, u, rcond=None)
        u = u - basis @ coef
    norm = float(np.std(u))
    # A degenerate span (a few rows) leaves nothing to orthogonalise: fall back to a sign flip.
    new = 2 * orig.mean() - orig if norm < 1e-9 else orig.mean() + u * (orig.std() / norm)
    x[s:e, c0] = normal.offset[s:e, c0] + normal.scale[c0] * (new + normal.noise[s:e, c0])


def window_labels(
    labels: npt.ArrayLike, window: int, stride: int = 1, *, mode: Literal["last", "any"] = "last"
) -> Bools:
    """Labels of the windows over one series' row labels ``(T,)``.

    Window ``k`` covers rows ``[k * stride, k * stride + window)``; there are
    ``(T - window) // stride + 1`` of them (none if ``T < window``). ``mode="last"`` labels a
    window by its last row (the row a streaming score is attributed to); ``mode="any"`` labels it
    anomalous if any of its rows is.

    Examples
    --------
    >>> y = np.array([0, 0, 1, 0, 0, 0], bool)
    >>> window_labels(y, 3).tolist(), window_labels(y, 3, mode="any").tolist()
    ([True, False, False, False], [True, True, True, False])
    >>> window_labels(y, 2, stride=2, mode="any").tolist()
    [False, True, False]
    """
    y = np.asarray(labels, dtype=np.bool_)
    if y.ndim != 1:
        raise ShapeError(f"window_labels: expected shape (T,), got {y.shape}")
    if window < 1 or stride < 1:
        raise ConfigError(f"window and stride must be >= 1, got {window}, {stride}")
    if mode not in ("last", "any"):
        raise ConfigError(f"mode must be 'last' or 'any', got {mode!r}")
    n_windows = (y.shape[0] - window) // stride + 1 if y.shape[0] >= window else 0
    ends = window - 1 + stride * np.arange(n_windows)  # last row of each window
    if mode == "last":
        return np.asarray(y[ends], np.bool_)
    counts = np.concatenate([[0], np.cumsum(y)])  # counts[i] = labelled rows before row i
    return np.asarray(counts[ends + 1] - counts[ends + 1 - window] > 0, np.bool_)

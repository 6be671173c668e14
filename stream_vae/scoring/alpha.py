"""Choosing the components' weights (α: reconstruction vs latent, and the linear residual's
share when the model has one) without labels.

Validation windows are normal by construction; we corrupt copies of them with the kinds of
faults telemetry shows (spike, level shift, variance burst, stuck sensor) and pick the weights
whose hybrid score best separates corrupted from clean copies (ROC-AUC), on a grid of step 0.25.
Ties (within 0.01 of the best AUC) go to the larger reconstruction weight: the reconstruction
term is the one an operator can read (attribution), so it needs no excuse. α = 1
(reconstruction only) is a legitimate outcome.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> w = rng.normal(size=(10, 16, 3)).astype(np.float32)
>>> c = corrupt_windows(w, np.ones(3, np.float32), rng)
>>> c.shape == w.shape and bool((c != w).any())
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .hybrid import HybridScore, ScoreParts, Weights, roc_auc

__all__ = ["ALPHA_GRID", "choose_alpha", "choose_weights", "corrupt_windows", "weight_grid"]

F32 = npt.NDArray[np.float32]

ALPHA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# AUCs within this of the best are a tie: about two standard errors of an AUC near 0.85 on
# 4,000 + 4,000 windows. Within it, which weighting wins is noise, and a mix that wins by noise
# on synthetic faults lost to reconstruction alone on real ones (a small generated fleet:
# weights 0.25/0.5/0.25 won by 0.006, ROC-AUC 0.72 on its faults against 0.77).
_TIE = 0.01


def weight_grid(n_components: int, grid: Sequence[float] = ALPHA_GRID) -> list[Weights]:
    """Every (reconstruction, latent, linear) weight triple on ``grid`` that sums to 1; the
    linear weight is 0 unless there are 3 components."""
    out = []
    for a in grid:
        for b in grid:
            c = 1.0 - a - b
            if c < -1e-9 or (n_components < 3 and c > 1e-9):
                continue
            out.append((float(a), float(b), max(0.0, round(c, 9))))
    return out


def corrupt_windows(windows: F32, std: F32, rng: np.random.Generator) -> F32:
    """Return a copy of ``windows`` (n, W, d) with one synthetic fault in the last quarter each.

    ``std`` (d,) is each feature's scale in data units, so faults are a few stds large; only
    the first ``len(std)`` channels are faulted (the rest are context: the calendar).
    """
    out = windows.copy()  # (n, W, c)
    n, w, d = out.shape[0], out.shape[1], len(std)
    span = max(2, w // 4)
    kinds = np.asarray(rng.integers(0, 4, size=n))
    feats = np.asarray(rng.integers(0, d, size=n))
    signs = np.asarray(rng.choice(np.array([-1.0, 1.0]), size=n))
    for i in range(n):
        f = int(feats[i])
        s = float(std[f])
        seg = out[i, w - span :, f]  # (span,) view
        if kinds[i] == 0:  # spike on the last point
            out[i, -1, f] += signs[i] * 5.0 * s
        elif kinds[i] == 1:  # level shift
            seg += signs[i] * 2.5 * s
        elif kinds[i] == 2:  # variance burst
            seg += rng.normal(0.0, 3.0 * s, size=span)
        else:  # stuck sensor
            seg[:] = seg[0]
    return out


def choose_alpha(
    hybrid: HybridScore,
    clean: ScoreParts,
    corrupted: ScoreParts,
    grid: Sequence[float] = ALPHA_GRID,
) -> tuple[float, dict[float, float]]:
    """Pick α from ``grid`` by ROC-AUC of corrupted vs clean windows; returns (α, AUC by α)."""
    weights, aucs = choose_weights(hybrid, clean, corrupted, [(a, 1.0 - a, 0.0) for a in grid])
    return weights[0], {w[0]: v for w, v in aucs.items()}


def choose_weights(
    hybrid: HybridScore,
    clean: ScoreParts,
    corrupted: ScoreParts,
    grid: Sequence[Weights] | None = None,
) -> tuple[Weights, dict[Weights, float]]:
    """Pick the weights by ROC-AUC of corrupted vs clean windows (default grid: every triple
    of :func:`weight_grid` for the components the score has); returns (weights, AUC by weights)."""
    if grid is None:
        grid = weight_grid(3 if hybrid.has_linear else 2)
    c_clean, c_corrupt = hybrid.components(clean), hybrid.components(corrupted)
    aucs: dict[Weights, float] = {}
    for w in grid:
        aucs[w] = roc_auc(hybrid.mix(c_clean, w), hybrid.mix(c_corrupt, w))
    best = max(aucs.values())
    # Ties (within noise of the AUC estimate) go to the larger reconstruction weight.
    chosen = max((w for w, v in aucs.items() if v >= best - _TIE), key=lambda w: w[0])
    return chosen, aucs

"""Choosing α (reconstruction vs latent weight) without labels.

Validation windows are normal by construction; we corrupt copies of them with the kinds of
faults telemetry shows (spike, level shift, variance burst, stuck sensor) and pick the α whose
hybrid score best separates corrupted from clean copies (ROC-AUC). Ties go to the larger α:
the reconstruction term is the one an operator can read (attribution), so it needs no excuse.
α = 1 (reconstruction only) is a legitimate outcome.

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

from .hybrid import HybridScore, ScoreParts, roc_auc

__all__ = ["ALPHA_GRID", "choose_alpha", "corrupt_windows"]

F32 = npt.NDArray[np.float32]

ALPHA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


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
    aucs: dict[float, float] = {}
    for a in grid:
        aucs[float(a)] = roc_auc(hybrid.raw(clean, a).raw, hybrid.raw(corrupted, a).raw)
    best = max(aucs.values())
    # Ties (within noise of the AUC estimate) go to the larger α.
    tol = 1e-3
    alpha = max(a for a, v in aucs.items() if v >= best - tol)
    return alpha, aucs

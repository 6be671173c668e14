"""The hybrid score: reconstruction and latent components → one normalised number per window.

``raw = α·T(R̂) + (1 − α)·T(L̂)`` (or the product ``T(R̂)^α · T(L̂)^(1−α)``), where R is the mean
per-feature reconstruction error of a window, L the latent term, ^ the normaliser fitted on
validation windows and T the transform (softplus by default).

Examples
--------
>>> import numpy as np
>>> parts = ScoreParts(np.ones((4, 2), np.float32), np.arange(4, dtype=np.float32))
>>> h = HybridScore(alpha=1.0).fit(parts)
>>> h.raw(parts).recon.shape
(4,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import check_shape
from .normalise import Normaliser, apply_transform

__all__ = ["HybridParts", "HybridScore", "ScoreParts", "roc_auc"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# Floor on a feature's typical validation error (scaled units²): a feature reconstructed
# perfectly would otherwise turn any later error into an infinite score.
_MIN_FEATURE_SCALE = 1e-6


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """What the model says about n windows, before any normalisation."""

    recon_features: F32  # (n, d) reconstruction error per feature (scaled units)
    latent: F32  # (n,) latent term (KL in nats, or −log p(μ))

    def __len__(self) -> int:
        return int(self.latent.shape[0])

    def __post_init__(self) -> None:
        n = self.latent.shape[0]
        check_shape("ScoreParts.latent", self.latent.shape, (n,))
        check_shape("ScoreParts.recon_features", self.recon_features.shape, (n, None))

    def take(self, idx: npt.NDArray[np.intp]) -> ScoreParts:
        return ScoreParts(self.recon_features[idx], self.latent[idx])

    @staticmethod
    def concat(parts: list[ScoreParts]) -> ScoreParts:
        return ScoreParts(
            np.concatenate([p.recon_features for p in parts]),
            np.concatenate([p.latent for p in parts]),
        )


@dataclass(frozen=True, slots=True)
class HybridParts:
    raw: F64  # (n,) combined score
    recon: F64  # (n,) transformed, normalised reconstruction component
    latent: F64  # (n,) transformed, normalised latent component


class HybridScore:
    """Fitted normalisers + α: turns :class:`ScoreParts` into one raw score per window."""

    def __init__(
        self,
        alpha: float = 0.5,
        normaliser: Literal["robust", "standard"] = "robust",
        transform: Literal["softplus", "sigmoid"] = "softplus",
        combine: Literal["sum", "product"] = "sum",
    ) -> None:
        self.alpha = alpha
        self.normaliser = normaliser
        self.transform = transform
        self.combine = combine
        self._feature_scale: F64 = np.ones(0)
        self._recon_norm = Normaliser(normaliser)
        self._latent_norm = Normaliser(normaliser)

    def fit(self, parts: ScoreParts) -> HybridScore:
        """Fit both normalisers on validation (normal) windows; returns self."""
        # Each feature's error is measured against its own typical error on normal windows, so
        # a feature the model always reconstructs loosely does not drown the others.
        med = np.median(parts.recon_features.astype(np.float64), axis=0)  # (d,)
        self._feature_scale = np.maximum(med, _MIN_FEATURE_SCALE)
        self._recon_norm.fit(self.recon(parts))
        self._latent_norm.fit(parts.latent)
        return self

    def feature_errors(self, parts: ScoreParts) -> F64:
        """Per-feature errors relative to their typical value on validation windows: (n, d)."""
        return parts.recon_features / self._feature_scale

    def recon(self, parts: ScoreParts) -> F64:
        """The reconstruction component R before normalisation: (n,)."""
        return self.feature_errors(parts).mean(axis=1)  # type: ignore[no-any-return]

    def components(self, parts: ScoreParts) -> tuple[F64, F64]:
        r = apply_transform(self._recon_norm.transform(self.recon(parts)), self.transform)
        lat = apply_transform(self._latent_norm.transform(parts.latent), self.transform)
        return r, lat

    def raw(self, parts: ScoreParts, alpha: float | None = None) -> HybridParts:
        a = self.alpha if alpha is None else alpha
        r, lat = self.components(parts)
        return HybridParts(combine(r, lat, a, self.combine), r, lat)

    def with_alpha(self, alpha: float) -> HybridScore:
        clone = HybridScore.from_dict({**self.to_dict(), "alpha": alpha})
        return clone

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "normaliser": self.normaliser,
            "transform": self.transform,
            "combine": self.combine,
            "feature_scale": self._feature_scale.tolist(),
            "recon_norm": self._recon_norm.to_dict(),
            "latent_norm": self._latent_norm.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HybridScore:
        h = cls(float(d["alpha"]), d["normaliser"], d["transform"], d["combine"])
        h._feature_scale = np.asarray(d["feature_scale"], dtype=np.float64)
        h._recon_norm = Normaliser.from_dict(d["recon_norm"])
        h._latent_norm = Normaliser.from_dict(d["latent_norm"])
        return h


def combine(r: F64, lat: F64, alpha: float, how: str) -> F64:
    """α-combination of two non-negative components."""
    if how == "product":
        # Geometric weighting; the small floor keeps log(0) out when a component is exactly 0.
        return np.exp(alpha * np.log(r + 1e-12) + (1.0 - alpha) * np.log(lat + 1e-12))
    return alpha * r + (1.0 - alpha) * lat


def roc_auc(negative: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """ROC-AUC by ranks (Mann–Whitney U), ties counted as one half."""
    neg = np.asarray(negative, dtype=np.float64)
    pos = np.asarray(positive, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError("roc_auc needs at least one negative and one positive")
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty_like(allv)
    sorted_v = allv[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))

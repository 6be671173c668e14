"""The hybrid score: the model's components → one normalised number per window.

``raw = w_R·T(R̂) + w_L·T(L̂) + w_P·T(P̂)`` (or the weighted geometric mean with
``combine = "product"``), where R is the mean per-feature reconstruction error of a window, L
the latent term, P the linear residual (when the model has a linear reference), ^ the
normaliser fitted on validation windows and T the transform (softplus by default; none after the
``tail`` normaliser, whose output is already a surprise in nats). With two components the weights
are ``(α, 1 − α, 0)``. With a repeats term (``scoring.repeats``, the ``tail`` normaliser only) the
score is ``max(raw, Q̂)``, Q the exact repeats beyond training (a stuck sensor) as a surprise
(:class:`~stream_vae.scoring.normalise.CountSurprise`): a window is as surprising as its most
surprising part, and the weights are chosen without it.

Examples
--------
>>> import numpy as np
>>> parts = ScoreParts(np.ones((4, 2), np.float32), np.arange(4, dtype=np.float32))
>>> h = HybridScore(alpha=1.0).fit(parts)
>>> h.raw(parts).recon.shape
(4,)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import check_shape
from .normalise import (
    AnyNormaliser,
    CountSurprise,
    apply_transform,
    make_normaliser,
    normaliser_from_dict,
)

__all__ = ["HybridParts", "HybridScore", "ScoreParts", "Weights", "combine", "roc_auc"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# Floor on a feature's typical validation error (scaled units²): a feature reconstructed
# perfectly would otherwise turn any later error into an infinite score.
_MIN_FEATURE_SCALE = 1e-6


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """What the model says about n windows, before any normalisation."""

    recon_features: F32  # (n, d) reconstruction error per feature (scaled units)
    latent: F32  # (n,) latent term (see ScoringSettings.latent_mode)
    linear: F32 | None = None  # (n,) residual off the normal subspace, if the model has one
    # (n, d) the model's reconstruction of each window's newest point, in the data's units (what
    # an alert shows beside the observed value); None where the caller did not ask for it
    expected: F32 | None = None
    repeats: F32 | None = None  # (n,) exact repeats beyond training (scoring.repeats)

    def __len__(self) -> int:
        return int(self.latent.shape[0])

    def __post_init__(self) -> None:
        n = self.latent.shape[0]
        check_shape("ScoreParts.latent", self.latent.shape, (n,))
        check_shape("ScoreParts.recon_features", self.recon_features.shape, (n, None))
        if self.linear is not None:
            check_shape("ScoreParts.linear", self.linear.shape, (n,))
        if self.expected is not None:
            check_shape("ScoreParts.expected", self.expected.shape, self.recon_features.shape)
        if self.repeats is not None:
            check_shape("ScoreParts.repeats", self.repeats.shape, (n,))

    def take(self, idx: npt.NDArray[np.intp]) -> ScoreParts:
        def part(a: F32 | None) -> F32 | None:
            return None if a is None else a[idx]

        return ScoreParts(
            self.recon_features[idx],
            self.latent[idx],
            part(self.linear),
            part(self.expected),
            part(self.repeats),
        )

    @staticmethod
    def concat(parts: list[ScoreParts]) -> ScoreParts:
        return ScoreParts(
            np.concatenate([p.recon_features for p in parts]),
            np.concatenate([p.latent for p in parts]),
            _concat_optional([p.linear for p in parts]),
            _concat_optional([p.expected for p in parts]),
            _concat_optional([p.repeats for p in parts]),
        )


def _concat_optional(arrays: list[F32 | None]) -> F32 | None:
    """One array from every part's, or None where any part has none."""
    have = [a for a in arrays if a is not None]
    return np.concatenate(have) if have and len(have) == len(arrays) else None


@dataclass(frozen=True, slots=True)
class HybridParts:
    raw: F64  # (n,) combined score
    recon: F64  # (n,) transformed, normalised reconstruction component
    latent: F64  # (n,) transformed, normalised latent component
    linear: F64 | None = None  # (n,) transformed, normalised linear residual, if any
    repeats: F64 | None = None  # (n,) the repeats term's surprise, if the score has one


Weights = tuple[float, float, float]  # reconstruction, latent, linear


class HybridScore:
    """Fitted normalisers + weights: turns :class:`ScoreParts` into one raw score per window."""

    def __init__(
        self,
        alpha: float = 0.5,
        normaliser: Literal["robust", "standard", "tail"] = "robust",
        transform: Literal["softplus", "sigmoid"] = "softplus",
        combine: Literal["sum", "product"] = "sum",
        *,
        weights: Sequence[float] | None = None,
    ) -> None:
        w = (alpha, 1.0 - alpha, 0.0) if weights is None else tuple(float(x) for x in weights)
        if len(w) != 3 or min(w) < 0 or abs(sum(w) - 1.0) > 1e-6:
            raise ValueError(f"weights must be 3 non-negative numbers summing to 1, got {w}")
        self.weights: Weights = (w[0], w[1], w[2])
        self.normaliser = normaliser
        self.transform = transform
        self.combine = combine
        self._feature_scale: F64 = np.ones(0)
        self._recon_norm: AnyNormaliser = make_normaliser(normaliser)
        self._latent_norm: AnyNormaliser = make_normaliser(normaliser)
        self._linear_norm: AnyNormaliser | None = None
        self._repeats_norm: CountSurprise | None = None

    @property
    def alpha(self) -> float:
        """The reconstruction component's weight."""
        return self.weights[0]

    @property
    def has_linear(self) -> bool:
        return self._linear_norm is not None

    @property
    def has_repeats(self) -> bool:
        return self._repeats_norm is not None

    def fit(self, parts: ScoreParts) -> HybridScore:
        """Fit the normalisers on validation (normal) windows; returns self."""
        # Each feature's error is measured against its own typical error on normal windows, so
        # a feature the model always reconstructs loosely does not drown the others.
        med = np.median(parts.recon_features.astype(np.float64), axis=0)  # (d,)
        self._feature_scale = np.maximum(med, _MIN_FEATURE_SCALE)
        self._recon_norm.fit(self.recon(parts))
        self._latent_norm.fit(parts.latent)
        if parts.linear is not None:
            self._linear_norm = make_normaliser(self.normaliser).fit(parts.linear)
        if parts.repeats is not None:
            if self.normaliser != "tail":
                raise ValueError("a repeats term needs the tail normaliser")
            self._repeats_norm = CountSurprise().fit(parts.repeats)
        return self

    def feature_errors(self, parts: ScoreParts) -> F64:
        """Per-feature errors relative to their typical value on validation windows: (n, d)."""
        return parts.recon_features / self._feature_scale

    def recon(self, parts: ScoreParts) -> F64:
        """The reconstruction component R before normalisation: (n,)."""
        return self.feature_errors(parts).mean(axis=1)  # type: ignore[no-any-return]

    def _unit(self, norm: AnyNormaliser, x: npt.ArrayLike) -> F64:
        z = norm.transform(x)
        return z if self.normaliser == "tail" else apply_transform(z, self.transform)

    def components(self, parts: ScoreParts) -> tuple[F64, F64, F64 | None]:
        """The normalised components (reconstruction, latent, linear or None): each (n,)."""
        r = self._unit(self._recon_norm, self.recon(parts))
        lat = self._unit(self._latent_norm, parts.latent)
        lin = None
        if self._linear_norm is not None:
            if parts.linear is None:
                raise ValueError("this score has a linear component: ScoreParts.linear is None")
            lin = self._unit(self._linear_norm, parts.linear)
        return r, lat, lin

    def raw(
        self,
        parts: ScoreParts,
        alpha: float | None = None,
        *,
        weights: Sequence[float] | None = None,
    ) -> HybridParts:
        """The combined score; ``alpha`` or ``weights`` override the fitted weights."""
        w = self.weights if weights is None else tuple(weights)
        if alpha is not None:
            w = (alpha, 1.0 - alpha, 0.0)
        r, lat, lin = self.components(parts)
        mixed = HybridParts(self.mix((r, lat, lin), w), r, lat, lin)
        if self._repeats_norm is None:
            return mixed
        if parts.repeats is None:
            raise ValueError("this score has a repeats term: ScoreParts.repeats is None")
        rep = self._repeats_norm.transform(parts.repeats)
        return replace(mixed, raw=np.maximum(mixed.raw, rep), repeats=rep)

    def mix(self, components: tuple[F64, F64, F64 | None], weights: Sequence[float]) -> F64:
        """Weighted combination of normalised components (as :meth:`components` returns them)."""
        r, lat, lin = components
        weighted = [(weights[0], r), (weights[1], lat)]
        if lin is not None:
            weighted.append((weights[2], lin))
        return combine(weighted, self.combine)

    def with_weights(self, weights: Sequence[float]) -> HybridScore:
        return HybridScore.from_dict({**self.to_dict(), "weights": list(weights)})

    def with_alpha(self, alpha: float) -> HybridScore:
        return self.with_weights((alpha, 1.0 - alpha, 0.0))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "alpha": self.alpha,
            "normaliser": self.normaliser,
            "transform": self.transform,
            "combine": self.combine,
            "feature_scale": self._feature_scale.tolist(),
            "recon_norm": self._recon_norm.to_dict(),
            "latent_norm": self._latent_norm.to_dict(),
        }
        # Written only where α does not say it all, so that a model's content (and its version
        # id) reads the same as before the weights existed.
        if self.weights[2] or self._linear_norm is not None:
            d["weights"] = list(self.weights)
        if self._linear_norm is not None:
            d["linear_norm"] = self._linear_norm.to_dict()
        if self._repeats_norm is not None:
            d["repeats_norm"] = self._repeats_norm.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HybridScore:
        # models saved before the weights hold only α
        weights = d.get("weights") or (float(d["alpha"]), 1.0 - float(d["alpha"]), 0.0)
        h = cls(normaliser=d["normaliser"], transform=d["transform"], combine=d["combine"],
                weights=weights)  # fmt: skip
        h._feature_scale = np.asarray(d["feature_scale"], dtype=np.float64)
        h._recon_norm = normaliser_from_dict(d["recon_norm"])
        h._latent_norm = normaliser_from_dict(d["latent_norm"])
        if "linear_norm" in d:
            h._linear_norm = normaliser_from_dict(d["linear_norm"])
        if "repeats_norm" in d:
            h._repeats_norm = CountSurprise.from_dict(d["repeats_norm"])
        return h


def combine(weighted: Sequence[tuple[float, F64]], how: str) -> F64:
    """Weighted combination of non-negative components: ``[(weight, values (n,)), ...]``."""
    if how == "product":
        # Geometric weighting; the small floor keeps log(0) out when a component is exactly 0.
        return np.exp(sum(w * np.log(c + 1e-12) for w, c in weighted))
    return sum(w * c for w, c in weighted)  # type: ignore[return-value]


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

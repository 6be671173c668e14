"""What normal windows look like, fitted at training and stored with the model: the reference
that two score components are measured against.

* :class:`LatentReference` — the *aggregate posterior* of the normal training windows: the
  posterior means μ of those windows. A window's latent term is how far its μ lies from them:
  ``"aggregate"`` is the Mahalanobis distance under one Gaussian fitted to them (½·d², nats up to
  a constant), ``"knn"`` the mean distance to the nearest ``k`` of them (a nearest-neighbour
  density estimate: normal windows form several clusters, which one Gaussian blurs into one),
  ``"knn_whitened"`` the same in the space that Gaussian whitens (the Mahalanobis metric: a
  latent dimension counts by how much it varies across normal windows, not by its raw scale).
  The KL of q(z|x) to N(0, I) says how far a window is from the prior; these say how far it is
  from normal.
* :class:`LinearReference` — the principal subspace of the normal scaled windows (flattened,
  W·d values): a window's linear component is its mean squared residual off that subspace. It
  is PCA's view of the same window, and catches broken correlations between features that the
  recurrent model reconstructs too well.
* :class:`RepeatsReference` — how many steps of a window each channel repeated its value
  exactly, at most, in training: a stuck sensor repeats its value, which a live channel with
  continuous values almost never does, and a frozen value at a plausible level is reconstructed
  well (``scoring.repeats``).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = LatentReference.fit(rng.normal(size=(500, 2)), rng)
>>> near, far = ref.knn(np.array([[0.0, 0.0], [6.0, 6.0]]))
>>> bool(far > 5 * near)
True
>>> lin = LinearReference.fit(np.outer(rng.normal(size=300), [1.0, 2.0, 3.0]), 0.99, rng)
>>> lin.residual(np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])).round(3).tolist()
[0.0, 2.286]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..errors import check_shape

__all__ = [
    "FLAT_POINTS",
    "KNN_K",
    "REFERENCE_MODES",
    "LatentReference",
    "LinearReference",
    "PriorReference",
    "QualityReference",
    "RepeatsReference",
    "ScoreReference",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# The latent modes measured against the normal windows' μ (they need ``LatentReference``).
REFERENCE_MODES = ("aggregate", "knn", "knn_whitened")
# Neighbours averaged by the kNN latent term: few enough to follow a small cluster of normal
# windows, enough that one odd training window does not make its neighbourhood look normal.
KNN_K = 10
# Reference points kept for the kNN term (μ of training windows, sampled): the cost is one
# (batch × points × latent) product per batch, ~4% of the LSTM's forward pass at the defaults.
MAX_POINTS = 2048
# Rows the principal subspace is fitted on (sampled): enough for a W·d of a few hundred.
MAX_LINEAR_ROWS = 4000
# Ridge on the latent covariance, relative to its mean variance: a latent dimension the model
# does not use has (nearly) zero variance and would make any movement along it infinite.
_RIDGE = 1e-3
_CHUNK = 1024  # query rows per distance matrix (bounds its memory at 8 MiB)


def _sample(x: F64, n: int, rng: np.random.Generator) -> F64:
    if len(x) <= n:
        return x
    return x[np.sort(rng.choice(len(x), size=n, replace=False))]


@dataclass(frozen=True, slots=True)
class LatentReference:
    """The posterior means of normal windows: their Gaussian (mean, precision) and a sample."""

    mean: F64  # (k,)
    precision: F64  # (k, k)
    points: F32  # (m, k) reference μ for the kNN term
    # derived, not stored: a whitening map L (precision = L·Lᵀ) and the points through it
    _whiten: F32 = field(init=False, repr=False, compare=False)
    _white: F32 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # From the eigendecomposition, not a Cholesky factor: any L with L·Lᵀ = precision gives
        # the same distances, and this one cannot fail on a stored precision that rounding left
        # a hair short of positive definite (a model must load whatever its latent mode).
        values, vectors = np.linalg.eigh(self.precision)
        whiten = (vectors * np.sqrt(np.maximum(values, 0.0))).astype(np.float32)
        object.__setattr__(self, "_whiten", whiten)
        object.__setattr__(self, "_white", (self.points - self.mean.astype(np.float32)) @ whiten)

    @classmethod
    def fit(cls, mu: npt.ArrayLike, rng: np.random.Generator) -> LatentReference:
        m = np.asarray(mu, dtype=np.float64)
        check_shape("LatentReference.fit mu", m.shape, (None, None))
        if len(m) < 2 or not np.isfinite(m).all():
            raise ValueError("LatentReference.fit needs at least two finite posterior means")
        cov = np.atleast_2d(np.cov(m.T))
        cov += _RIDGE * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
        points = _sample(m, MAX_POINTS, rng).astype(np.float32)
        return cls(m.mean(axis=0), np.asarray(np.linalg.inv(cov), np.float64), points)

    def mahalanobis(self, mu: npt.ArrayLike) -> F64:
        """½ · squared Mahalanobis distance of each μ (n, k) from the normal μ: (n,)."""
        d = np.asarray(mu, dtype=np.float64) - self.mean
        return 0.5 * np.einsum("ij,jk,ik->i", d, self.precision, d)  # type: ignore[no-any-return]

    def knn(self, mu: npt.ArrayLike, k: int = KNN_K, *, whitened: bool = False) -> F64:
        """Mean Euclidean distance of each μ (n, k) to its ``k`` nearest reference points: (n,);
        ``whitened``: in the space where the normal μ have unit covariance."""
        q = np.asarray(mu, dtype=np.float32)
        ref = self.points
        if whitened:
            q = (q - self.mean.astype(np.float32)) @ self._whiten
            ref = self._white
        k = min(k, len(ref))
        ref_sq = (ref * ref).sum(axis=1)  # (m,)
        out = np.empty(len(q), dtype=np.float64)
        for i in range(0, len(q), _CHUNK):
            b = q[i : i + _CHUNK]  # (c, k)
            d2 = b @ ref.T  # (c, m), then ‖r‖² − 2 b·r in place; a row's own ‖b‖² does not
            d2 *= -2.0  # change which points are nearest, so it is added to the k kept only
            d2 += ref_sq
            # in place: a partitioned copy of d2 cost three times the rest (a fresh 2 MiB
            # array a batch, its pages faulted in on every call)
            d2.partition(k - 1, axis=1)
            nearest = d2[:, :k] + (b * b).sum(axis=1)[:, None]  # (c, k), unordered
            out[i : i + _CHUNK] = np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1)
        return out


@dataclass(frozen=True, slots=True)
class LinearReference:
    """The principal subspace of normal flattened windows: centre (D,), orthonormal basis (r, D)."""

    centre: F32
    basis: F32

    @classmethod
    def fit(cls, x: npt.ArrayLike, variance: float, rng: np.random.Generator) -> LinearReference:
        """Keep the fewest components that explain ``variance`` of the rows of ``x`` (n, D)."""
        a = _sample(np.asarray(x, dtype=np.float64), MAX_LINEAR_ROWS, rng)
        check_shape("LinearReference.fit x", a.shape, (None, None))
        if not 0.0 < variance < 1.0:
            raise ValueError(f"variance must be in (0, 1), got {variance}")
        centre = a.mean(axis=0)
        c = a - centre
        # eigh of the (D, D) scatter: stable where an SVD of a near-degenerate matrix can fail
        ev, vec = np.linalg.eigh(c.T @ c)
        ev, vec = np.maximum(ev[::-1], 0.0), vec[:, ::-1]
        total = float(ev.sum())
        r = len(ev) if total <= 0 else int(np.searchsorted(np.cumsum(ev) / total, variance) + 1)
        return cls(centre.astype(np.float32), np.ascontiguousarray(vec[:, :r].T, np.float32))

    def residual(self, x: npt.ArrayLike) -> F64:
        """Mean squared residual of each row of ``x`` (n, D) off the subspace: (n,)."""
        c = np.asarray(x, dtype=np.float32) - self.centre
        # The basis is orthonormal: |c − Bᵀ·B·c|² = |c|² − |B·c|². One product instead of two,
        # and no (n, D) projection (9 against 13.5 µs a window at W·d = 512, 460 components).
        # The difference loses float32's relative precision (~1e-6) of |c|², far below what a
        # residual must be to matter against the validation windows' own.
        inside = c @ self.basis.T  # (n, r)
        total = np.einsum("ij,ij->i", c, c, dtype=np.float64)
        kept = np.einsum("ij,ij->i", inside, inside, dtype=np.float64)
        return np.maximum(total - kept, 0.0) / c.shape[1]  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class PriorReference:
    """A VampPrior's components, read off the model once: μ and log σ² of its pseudo-windows'
    posteriors, (K, k) each. The latent mode ``kl`` of such a model measures against them."""

    mu: F32
    logvar: F32


# A flatline is judged on the newest points of a window, not all of them: a sensor stuck for 30
# points hides in a window of 64 that still holds its last movements. Eight points: enough for a
# standard deviation, few enough that a stuck sensor shows within a few windows.
FLAT_POINTS = 8


@dataclass(frozen=True, slots=True)
class QualityReference:
    """The training data's range and movement per feature, in its own units, for the data-quality
    alerts that do not ask the model (:mod:`stream_vae.scoring.quality`): the lowest and highest
    value seen, and the median over training windows of a feature's standard deviation over a
    window's newest ``FLAT_POINTS`` points (how much it moves in a normal stretch).

    Examples
    --------
    >>> import numpy as np
    >>> w = np.stack([np.c_[np.arange(4.0), np.full(4, 2.0)]] * 3)  # (3 windows, 4 points, 2)
    >>> q = QualityReference.fit(w)
    >>> q.low.tolist(), q.high.tolist(), [round(float(s), 3) for s in q.window_std]
    ([0.0, 2.0], [3.0, 2.0], [1.118, 0.0])
    """

    low: F32  # (d,)
    high: F32  # (d,)
    window_std: F32  # (d,)

    @classmethod
    def fit(cls, windows: npt.ArrayLike) -> QualityReference:
        """From raw training windows (n, W, d): the data's features only, no context."""
        w = np.asarray(windows, dtype=np.float64)
        check_shape("QualityReference.fit windows", w.shape, (None, None, None))
        return cls(
            w.min(axis=(0, 1)).astype(np.float32),
            w.max(axis=(0, 1)).astype(np.float32),
            np.median(w[:, -FLAT_POINTS:, :].std(axis=1), axis=0).astype(np.float32),
        )


def window_repeats(windows: npt.ArrayLike) -> F64:
    """How many of each window's W − 1 steps repeat the value exactly, per channel: (n, d).

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([[[1.0, 5.0], [2.0, 5.0], [2.0, 5.0], [3.0, 5.0]]])  # (1 window, 4, 2)
    >>> window_repeats(w).tolist()
    [[1.0, 3.0]]
    """
    w = np.asarray(windows)
    check_shape("window_repeats windows", w.shape, (None, None, None))
    return (w[:, 1:, :] == w[:, :-1, :]).sum(axis=1).astype(np.float64)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class RepeatsReference:
    """The most steps each channel repeated its value in a training window: (d,). A window's
    repeats term is the most any channel repeats beyond that (0 for every training window; a
    channel constant or coarsely quantised in training counts for nothing).

    Examples
    --------
    >>> import numpy as np
    >>> train = np.stack([np.c_[np.arange(4.0), np.full(4, 2.0)]] * 3)  # moving, constant
    >>> ref = RepeatsReference.fit(train)
    >>> ref.most.tolist()
    [0.0, 3.0]
    >>> stuck = np.array([[[7.0, 2.0], [7.0, 2.0], [7.0, 2.0], [8.0, 2.0]]])
    >>> ref.excess(np.concatenate([train[:1], stuck])).tolist()
    [0.0, 2.0]
    """

    most: F32  # (d,)

    @classmethod
    def fit(cls, windows: npt.ArrayLike) -> RepeatsReference:
        """From training windows (n, W, d): the data's features only, no context."""
        return cls(window_repeats(windows).max(axis=0).astype(np.float32))

    def excess(self, windows: npt.ArrayLike) -> F32:
        """The repeats term of windows (n, W, d): repeats beyond the training most, max over
        channels (n,)."""
        r = window_repeats(windows)
        check_shape("RepeatsReference.excess windows", r.shape, (None, len(self.most)))
        return np.maximum(r - self.most, 0.0).max(axis=1).astype(np.float32)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ScoreReference:
    """The references a model's score components need (each may be absent)."""

    latent: LatentReference | None = None
    linear: LinearReference | None = None
    prior: PriorReference | None = None
    quality: QualityReference | None = None  # models trained before it have none
    repeats: RepeatsReference | None = None  # scoring.repeats only

    def to_arrays(self) -> dict[str, F32]:
        """Named float32 arrays (stored beside the weights)."""
        out: dict[str, F32] = {}
        if self.latent is not None:
            out["latent.mean"] = self.latent.mean.astype(np.float32)
            out["latent.precision"] = self.latent.precision.astype(np.float32)
            out["latent.points"] = self.latent.points
        if self.linear is not None:
            out["linear.centre"] = self.linear.centre
            out["linear.basis"] = self.linear.basis
        if self.prior is not None:
            out["prior.mu"] = self.prior.mu
            out["prior.logvar"] = self.prior.logvar
        if self.quality is not None:
            out["quality.low"] = self.quality.low
            out["quality.high"] = self.quality.high
            out["quality.window_std"] = self.quality.window_std
        if self.repeats is not None:
            out["repeats.most"] = self.repeats.most
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.floating]]) -> ScoreReference:
        latent = linear = prior = quality = None
        if "quality.low" in arrays:
            quality = QualityReference(
                *(
                    np.asarray(arrays[f"quality.{k}"], np.float32)
                    for k in ("low", "high", "window_std")
                )
            )
        if "prior.mu" in arrays:
            prior = PriorReference(
                np.asarray(arrays["prior.mu"], np.float32),
                np.asarray(arrays["prior.logvar"], np.float32),
            )
        if "latent.mean" in arrays:
            latent = LatentReference(
                np.asarray(arrays["latent.mean"], np.float64),
                np.asarray(arrays["latent.precision"], np.float64),
                np.asarray(arrays["latent.points"], np.float32),
            )
        if "linear.centre" in arrays:
            linear = LinearReference(
                np.asarray(arrays["linear.centre"], np.float32),
                np.asarray(arrays["linear.basis"], np.float32),
            )
        repeats = None
        if "repeats.most" in arrays:
            repeats = RepeatsReference(np.asarray(arrays["repeats.most"], np.float32))
        return cls(latent, linear, prior, quality, repeats)

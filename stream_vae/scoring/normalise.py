"""Normalise a score component on validation windows, then squash it to a common scale.

Examples
--------
>>> import numpy as np
>>> n = Normaliser("robust").fit(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
>>> float(n.center), round(float(n.scale), 3)
(3.0, 1.483)
>>> apply_transform(np.array([0.0]), "sigmoid").tolist()
[0.5]
>>> t = TailNormaliser().fit(np.arange(1000.0))
>>> t.transform(np.array([-5.0, 499.0, 999.0, 2000.0])).round(2).tolist()
[0.0, 0.69, 4.3, 24.53]
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["CountSurprise", "Normaliser", "TailNormaliser", "apply_transform", "make_normaliser"]

Array = npt.NDArray[np.float64]

# IQR / 1.349 is the std of a normal distribution: a robust scale on the same footing as std.
_IQR_TO_STD = 1.349
# A component that is constant on validation data would divide by zero; this floor keeps it
# finite (and makes any deviation large, which is what an unseen change should be).
_MIN_SCALE = 1e-6
# TailNormaliser: the ECDF holds up to this quantile, the exponential tail beyond it; the
# smallest tail probability (a score of 690 nats, past any threshold); the ECDF points stored.
_TAIL_FROM = 0.9
_MIN_P = 1e-300
_ECDF_POINTS = 1001


class Normaliser:
    """Centre and scale one score component: (x − centre) / scale, fitted on normal windows.

    ``method="robust"`` uses the median and IQR/1.349 (anomalies leaking into validation data
    barely move it); ``"standard"`` uses mean and std.
    """

    def __init__(self, method: Literal["robust", "standard"] = "robust") -> None:
        self.method = method
        self._center = 0.0
        self._scale = 1.0

    @property
    def center(self) -> float:
        return self._center

    @property
    def scale(self) -> float:
        return self._scale

    def fit(self, x: npt.ArrayLike) -> Normaliser:
        """Fit on a 1-d array of component values from normal windows (returns self)."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
            raise ValueError("Normaliser.fit needs a non-empty finite 1-d array")
        if self.method == "robust":
            q25, q50, q75 = np.percentile(a, [25, 50, 75])
            center, scale = float(q50), float(q75 - q25) / _IQR_TO_STD
        else:
            center, scale = float(a.mean()), float(a.std())
        self._center, self._scale = center, max(scale, _MIN_SCALE)
        return self

    def transform(self, x: npt.ArrayLike) -> Array:
        return (np.asarray(x, dtype=np.float64) - self._center) / self._scale

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "center": self._center, "scale": self._scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normaliser:
        n = cls(d["method"])
        n._center, n._scale = float(d["center"]), float(d["scale"])
        return n


class TailNormaliser:
    """A component as its surprise on normal windows: ``−log P(X ≥ x)``, in nats.

    Below the 90th percentile of the validation values P comes from their ECDF; beyond it from an
    exponential tail fitted to the excesses (mean excess), so values past anything seen in
    validation keep growing, linearly in x. Every component fitted this way is in the same unit
    with no hand-set scale: a sum of them is −log of a product of tail probabilities, and a
    component that says nothing (its values on faults look like its normal values) adds little.
    """

    method = "tail"

    def __init__(self) -> None:
        self._x: Array = np.zeros(1)  # up to _ECDF_POINTS order statistics of the values
        self._cdf: Array = np.ones(1)  # the ECDF at each of them
        self._u = 0.0  # where the exponential tail starts
        self._p_u = 1.0  # P(X > u) on validation values
        self._scale = 1.0  # the tail's mean excess

    def fit(self, x: npt.ArrayLike) -> TailNormaliser:
        a = np.sort(np.asarray(x, dtype=np.float64))
        if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
            raise ValueError("TailNormaliser.fit needs a non-empty finite 1-d array")
        n = len(a)
        idx = np.unique(np.linspace(0, n - 1, min(n, _ECDF_POINTS)).astype(np.int64))
        self._x, self._cdf = a[idx], (idx + 1.0) / (n + 1.0)  # type: ignore[assignment]
        i = int(_TAIL_FROM * n)
        self._u = float(a[i])
        self._p_u = (n - i) / (n + 1.0)
        excess = float((a[i:] - self._u).mean())
        self._scale = max(excess, _MIN_SCALE * max(1.0, abs(self._u)))
        return self

    def transform(self, x: npt.ArrayLike) -> Array:
        v = np.asarray(x, dtype=np.float64)
        p = 1.0 - np.interp(v, self._x, self._cdf, left=0.0)  # ECDF, linear between points
        tail = self._p_u * np.exp(-np.maximum(v - self._u, 0.0) / self._scale)
        p = np.where(v > self._u, tail, np.maximum(p, self._p_u))
        # 0.0 - …: a surprise of exactly 0 is 0.0, not -0.0
        return 0.0 - np.log(np.maximum(p, _MIN_P))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "x": self._x.tolist(),
            "cdf": self._cdf.tolist(),
            "u": self._u,
            "p_u": self._p_u,
            "scale": self._scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TailNormaliser:
        t = cls()
        t._x = np.asarray(d["x"], dtype=np.float64)
        t._cdf = np.asarray(d["cdf"], dtype=np.float64)
        t._u, t._p_u, t._scale = float(d["u"]), float(d["p_u"]), float(d["scale"])
        return t


class CountSurprise:
    """A count that is 0 on nearly every normal window, as a surprise in nats: 0 for 0, and
    ``−log P(X ≥ 1) + (x − 1)`` beyond, P from the validation windows (smoothed by one), one
    nat a unit after the first. (The tail normaliser gives a point mass the tail probability at
    its top, not 1: every 0 would be a surprise of ~2.3 nats.)

    Examples
    --------
    >>> c = CountSurprise().fit(np.r_[np.zeros(98), 1.0])  # 1 of 99 normal windows above 0
    >>> c.transform(np.array([0.0, 1.0, 3.0])).round(2).tolist()
    [0.0, 3.91, 5.91]
    """

    method = "count"

    def __init__(self) -> None:
        self._p_any = 1.0

    def fit(self, x: npt.ArrayLike) -> CountSurprise:
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
            raise ValueError("CountSurprise.fit needs a non-empty finite 1-d array")
        self._p_any = (float((a >= 1.0).sum()) + 1.0) / (a.size + 1.0)
        return self

    def transform(self, x: npt.ArrayLike) -> Array:
        v = np.asarray(x, dtype=np.float64)
        return np.where(v >= 1.0, -np.log(self._p_any) + (v - 1.0), 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "p_any": self._p_any}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CountSurprise:
        c = cls()
        c._p_any = float(d["p_any"])
        return c


AnyNormaliser = Normaliser | TailNormaliser


def make_normaliser(method: str) -> AnyNormaliser:
    if method == "tail":
        return TailNormaliser()
    if method in ("robust", "standard"):
        return Normaliser(method)  # type: ignore[arg-type]
    raise ValueError(f"unknown normaliser {method!r}")


def normaliser_from_dict(d: dict[str, Any]) -> AnyNormaliser:
    if d["method"] == "tail":
        return TailNormaliser.from_dict(d)
    return Normaliser.from_dict(d)


def apply_transform(z: Array, kind: Literal["softplus", "sigmoid"]) -> Array:
    """Map a normalised component onto a common non-negative scale.

    softplus keeps the upper tail linear (large deviations stay large, so a threshold far in the
    tail still separates) and sends typical values to about log 2; sigmoid bounds the score in
    (0, 1) at the cost of compressing the tail.
    """
    if kind == "softplus":
        return np.logaddexp(0.0, z)
    if kind == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # numerically stable logistic
    raise ValueError(f"unknown transform {kind!r}")

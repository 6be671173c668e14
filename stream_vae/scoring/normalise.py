"""Normalise a score component on validation windows, then squash it to a common scale.

Examples
--------
>>> import numpy as np
>>> n = Normaliser("robust").fit(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
>>> float(n.center), round(float(n.scale), 3)
(3.0, 1.483)
>>> apply_transform(np.array([0.0]), "sigmoid").tolist()
[0.5]
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Normaliser", "apply_transform"]

Array = npt.NDArray[np.float64]

# IQR / 1.349 is the std of a normal distribution: a robust scale on the same footing as std.
_IQR_TO_STD = 1.349
# A component that is constant on validation data would divide by zero; this floor keeps it
# finite (and makes any deviation large, which is what an unseen change should be).
_MIN_SCALE = 1e-6


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

"""Per-feature standardisation fitted on training data.

Examples
--------
>>> import numpy as np
>>> s = Scaler.fit(np.array([[0.0, 5.0], [2.0, 5.0]]), std_floor=0.5)
>>> s.mean.tolist(), s.std.tolist()
([1.0, 5.0], [1.0, 0.5])
>>> s.transform(np.array([[1.0, 6.0]], np.float32)).tolist()
[[0.0, 2.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Scaler"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Scaler:
    """(x − mean) / max(std, floor), per feature."""

    mean: F32  # (d,)
    std: F32  # (d,) already floored

    @classmethod
    def fit(cls, values: npt.ArrayLike, std_floor: float) -> Scaler:
        """Fit on raw training rows (n, d) (float64 accumulation)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"Scaler.fit: expected (n, d) rows, got shape {x.shape}")
        std = np.maximum(x.std(axis=0), std_floor)
        return cls(x.mean(axis=0).astype(np.float32), std.astype(np.float32))

    def passing(self, n: int) -> Scaler:
        """This scaler with ``n`` more features passed through as they are (mean 0, std 1): the
        calendar channels (:func:`stream_vae.core.calendar.calendar_columns`), already in [-1, 1].

        >>> Scaler(np.float32([3.0]), np.float32([2.0])).passing(2).std.tolist()
        [2.0, 1.0, 1.0]
        """
        if n == 0:
            return self
        return Scaler(
            np.concatenate([self.mean, np.zeros(n, np.float32)]),
            np.concatenate([self.std, np.ones(n, np.float32)]),
        )

    def transform(self, x: npt.NDArray[np.floating[Any]]) -> F32:
        """Scale an array whose last axis is the feature axis: (…, d) → (…, d) float32."""
        out: F32 = np.subtract(x, self.mean, dtype=np.float32)
        out /= self.std
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))

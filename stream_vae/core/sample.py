"""A sample of windows to learn from: windows (n, W, d) with their series and end times, in time
order (what the clean reservoir hands a retraining job, and what the gate splits)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ReservoirSample"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ReservoirSample:
    """Windows (n, W, d) with their series and end times, in time order."""

    windows: F32
    keys: tuple[str, ...]
    ts: F64

    def __len__(self) -> int:
        return len(self.keys)

    def split(self, newest_fraction: float) -> tuple[ReservoirSample, ReservoirSample]:
        """(older part, newest ``newest_fraction``), by time."""
        cut = len(self) - max(1, round(len(self) * newest_fraction))
        return self._take(slice(0, cut)), self._take(slice(cut, len(self)))

    def _take(self, s: slice) -> ReservoirSample:
        return ReservoirSample(self.windows[s], self.keys[s], self.ts[s])

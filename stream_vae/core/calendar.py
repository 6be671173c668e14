"""The calendar channels: a point's phase in the day or week, as a sine and a cosine.

With ``window.calendar`` (e.g. ``("day",)``) every point of a window carries these after its
values, so the model sees *when* a shape happens; only the values' error is scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["CALENDAR_PERIODS", "calendar_columns"]

F32 = npt.NDArray[np.float32]

# The cycles a point's timestamp can be placed in (seconds per cycle).
CALENDAR_PERIODS = {"day": 86_400.0, "week": 7 * 86_400.0}


def calendar_columns(ts: npt.ArrayLike, calendar: Iterable[str]) -> F32:
    """(n,) epoch seconds → (n, 2·len(calendar)): sin and cos of each cycle's phase.

    >>> calendar_columns([0.0, 21_600.0], ["day"]).round(6).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    t = np.asarray(ts, dtype=np.float64)
    cols = []
    for kind in calendar:
        phase = (2.0 * math.pi / CALENDAR_PERIODS[kind]) * np.mod(t, CALENDAR_PERIODS[kind])
        cols += [np.sin(phase), np.cos(phase)]
    return np.stack(cols, axis=-1).astype(np.float32) if cols else np.empty((len(t), 0), np.float32)

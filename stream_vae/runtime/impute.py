"""Missing values filled with the model's: ``stream-vae score --impute``.

A missing cell (NaN) is first carried forward from its series' last observed value of that
feature (the feature's training mean before any), so that every window can be scored; then,
where the row completed a window, the cell gets the model's reconstruction of it (the window's
newest point, in the data's units: what the model expects the sensor to read given the window).
A row that completed no window (a series' first W − 1 rows) keeps the carried-forward value, and
says so.

Examples
--------
>>> import numpy as np
>>> filled, by = carry_forward(["a", "a", "b", "a"], np.array([[1.0], [np.nan], [np.nan], [3.0]]),
...                            np.array([0.5]))
>>> filled[:, 0].tolist(), by.tolist()
([1.0, 1.0, 0.5, 3.0], [[False], [True], [True], [False]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..core.records import RecordBatch
from ..scoring.scorer import ScoredBatch
from .live import LiveModel

__all__ = ["Imputed", "carry_forward", "impute"]

F32 = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Imputed:
    """A batch with its missing values filled: ``values`` (n, d); ``missing`` (n, d) marks
    the cells that were missing, ``by_model`` (n, d) those of them the model filled (the rest
    were carried forward)."""

    batch: RecordBatch
    missing: Bools
    by_model: Bools


def carry_forward(
    series_ids: Sequence[str], values: npt.ArrayLike, fallback: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], Bools]:
    """Each NaN replaced by its series' last observed value of the feature, in row order
    (``fallback`` (d,) before any); returns the filled values and where they were NaN."""
    x = np.array(values, dtype=np.float64)  # a copy
    missing = np.isnan(x)
    last: dict[str, np.ndarray] = {}
    fb = np.asarray(fallback, dtype=np.float64)
    for i, s in enumerate(series_ids):
        prev = last.get(s)
        if missing[i].any():
            x[i, missing[i]] = (fb if prev is None else prev)[missing[i]]
        last[s] = x[i]
    return x, missing


def impute(
    live: LiveModel,
    batch: RecordBatch,
    chunk: int = 2048,
    on_scored: Callable[[ScoredBatch], None] | None = None,
) -> Imputed:
    """Fill ``batch``'s missing values (NaN) with the model's (see the module's text); the
    batch must hold each series in time order. ``live`` scores the filled batch on the way (its
    state moves as for any stream); ``on_scored`` sees each chunk's scores."""
    d = len(live.artifact.feature_names)
    mean = live.artifact.scaler.mean[:d]
    filled, missing = carry_forward(batch.series_ids, batch.values, mean)
    complete = RecordBatch(batch.series_ids, batch.ts, filled.astype(np.float32))
    by_model = np.zeros_like(missing)
    want = {
        (s, float(t)): i
        for i, (s, t) in enumerate(zip(batch.series_ids, batch.ts, strict=True))
        if missing[i].any()
    }
    for scored in live.stream(complete, chunk):
        if on_scored is not None:
            on_scored(scored)
        if not want or scored.expected is None:
            continue
        for j, (s, t) in enumerate(zip(scored.keys, scored.ts.tolist(), strict=True)):
            i = want.pop((s, t), None)
            if i is not None:
                filled[i, missing[i]] = scored.expected[j, :d][missing[i]]
                by_model[i] = missing[i]
    out = RecordBatch(batch.series_ids, batch.ts, filled.astype(np.float32))
    return Imputed(out, missing, by_model)

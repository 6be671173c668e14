"""Scoring without state: whole windows in, their scores out, nothing remembered between calls
(what the HTTP endpoint and embedding callers need; the stream keeps its state in
:class:`~stream_vae.runtime.live.LiveModel`).

Each call cuts the windows of the records it is given, per series and in time order, with a
fresh window store of the model's shape (size, stride, gaps, calendar channels): W records of a
series give one window, W + k give k + 1. The score is the raw hybrid score of each window. The
service smooths it per series (EMA) before comparing it to the threshold; a stateless call has
no history to smooth with, so ``over_threshold`` compares the raw score (a caller that keeps a
series' history can smooth it itself, with ``scoring.ema_beta``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.records import RecordBatch, parse_ts
from ..errors import DataError, RecordError
from ..model.detector import Detector
from ..scoring.alerts import top_features_many
from ..storage.artifact import Artifact
from .live import window_store

__all__ = ["WindowScores", "score_records", "score_table"]


@dataclass(frozen=True, slots=True)
class WindowScores:
    """The scores of n windows, in the order they were cut (by series, then time)."""

    series_ids: tuple[str, ...]  # (n,) each window's series
    ts: npt.NDArray[np.float64]  # (n,) each window's newest timestamp
    score: npt.NDArray[np.float64]  # (n,) raw hybrid score
    recon: npt.NDArray[np.float64]  # (n,) normalised reconstruction component
    latent: npt.NDArray[np.float64]  # (n,) normalised latent component
    top_features: tuple[tuple[tuple[str, float], ...], ...]  # (n,) (feature, share of error)
    expected: npt.NDArray[np.float32] | None  # (n, d) newest point's reconstruction, data units
    threshold: float  # the model's calibrated threshold
    model_version: str

    def __len__(self) -> int:
        return len(self.series_ids)


def score_records(
    artifact: Artifact,
    detector: Detector,
    batch: RecordBatch,
    *,
    top_k: int = 3,
    reconstruction: bool = False,
) -> WindowScores:
    """The windows ``batch`` holds, scored by ``artifact`` through ``detector``."""
    ordered, _ = batch.in_series_time_order()
    ready = window_store(artifact).push_many(ordered)
    parts = detector.infer(ready.values)
    hybrid = artifact.hybrid.raw(parts)
    errors = artifact.hybrid.feature_errors(parts)  # (n, d)
    names = artifact.feature_names
    return WindowScores(
        ready.keys,
        ready.ts,
        hybrid.raw,
        hybrid.recon,
        hybrid.latent,
        tuple(top_features_many(errors, names, top_k)),
        parts.expected if reconstruction else None,
        float(artifact.threshold),
        artifact.version,
    )


def _columns(table: Any) -> dict[str, np.ndarray[Any, Any]]:
    """The columns of a pyarrow Table, a pandas DataFrame, or a mapping of name → sequence."""
    if hasattr(table, "column_names") and hasattr(table, "column"):  # pyarrow.Table
        return {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
    if hasattr(table, "columns") and hasattr(table, "to_numpy"):  # pandas.DataFrame
        return {str(c): table[c].to_numpy() for c in table.columns}
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    raise DataError(
        f"score_table takes a pyarrow Table, a pandas DataFrame or a mapping of columns, "
        f"not {type(table).__name__}"
    )


def _epoch_s(ts: np.ndarray[Any, Any]) -> npt.NDArray[np.float64]:
    if np.issubdtype(ts.dtype, np.datetime64):
        return ts.astype("datetime64[ns]").astype(np.int64) / 1e9
    if np.issubdtype(ts.dtype, np.number):
        return ts.astype(np.float64)
    try:
        return np.array([parse_ts(t) for t in ts.tolist()], dtype=np.float64)
    except RecordError as exc:
        raise DataError(f"column ts: {exc.message}") from None


def score_table(
    artifact: Artifact | str | Path,
    table: Any,
    *,
    detector: Detector | None = None,
    reconstruction: bool = False,
    top_k: int = 3,
) -> Any:
    """Score the windows of an in-memory table, for callers that embed the detector.

    ``table`` has the training files' columns: ``series_id``, ``ts`` (epoch seconds, ISO-8601
    strings or datetimes) and one column per feature of the model; rows need not be in order.
    The answer has one row per window (cut per series in time order, as the service cuts them):
    ``series_id``, ``ts``, ``score`` (the raw hybrid score), ``recon_score``, ``latent_score``,
    ``over_threshold``, ``top_feature`` and, with ``reconstruction``, ``expected_<feature>``.
    It is the same kind of table as ``table`` (pyarrow, pandas, or a dict of NumPy arrays).

    Examples
    --------
    >>> import stream_vae as sv
    >>> out = sv.score_table("models/m1", df)  # doctest: +SKIP
    """
    from ..storage.files import load_artifact
    from .live import build_detector

    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    names = art.feature_names
    cols = _columns(table)
    missing = [c for c in ("series_id", "ts", *names) if c not in cols]
    if missing:
        raise DataError(f"score_table: missing column(s) {missing}; the model reads {list(names)}")
    values = np.column_stack([np.asarray(cols[n], dtype=np.float64) for n in names])
    if not np.isfinite(values).all():
        raise DataError("score_table: the feature columns hold NaN or infinity")
    if np.abs(values).max(initial=0.0) > np.finfo(np.float32).max:  # would become infinity
        raise DataError("score_table: a feature value does not fit in float32")
    batch = RecordBatch(
        tuple(str(s) for s in cols["series_id"].tolist()),
        _epoch_s(cols["ts"]),
        values.astype(np.float32),
    )
    scores = score_records(
        art,
        detector or build_detector(art),
        batch,
        top_k=max(top_k, 1),
        reconstruction=reconstruction,
    )
    out: dict[str, Any] = {
        "series_id": np.array(scores.series_ids, dtype=object),
        "ts": scores.ts,
        "score": scores.score,
        "recon_score": scores.recon,
        "latent_score": scores.latent,
        "over_threshold": scores.score >= scores.threshold,
        "top_feature": np.array([t[0][0] if t else "" for t in scores.top_features], dtype=object),
    }
    if scores.expected is not None:
        out |= {f"expected_{n}": scores.expected[:, j] for j, n in enumerate(names)}
    if hasattr(table, "column_names"):
        import pyarrow as pa

        return pa.table(out)
    if hasattr(table, "to_numpy") and hasattr(table, "columns"):
        return type(table)(out)  # a pandas DataFrame (pandas is not a dependency)
    return out

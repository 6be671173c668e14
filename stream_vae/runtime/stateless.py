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

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..core.records import RecordBatch
from ..model.detector import Detector
from ..scoring.alerts import top_features_many
from ..storage.artifact import Artifact
from .live import window_store

__all__ = ["WindowScores", "score_records"]


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

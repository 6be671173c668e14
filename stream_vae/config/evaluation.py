"""The evaluation's settings: the per-row stage NAB scores, off the product's path."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .model import FROZEN

__all__ = ["EvaluationSettings"]


class EvaluationSettings(BaseModel):
    """The per-row stage the NAB evaluation scores (:mod:`stream_vae.evaluation.novelty`); the
    service does not compute it."""

    model_config = FROZEN

    # A per-row score that rises at the onset of a new, larger-than-recent excursion of the
    # smoothed score. "Recent": the series' last novelty_window windows.
    novelty_window: int = Field(1000, ge=1)
    novelty_peak_decay: float = Field(0.9999, gt=0, le=1)
    # An excursion whose novelty reaches novelty_censor (0: off) is taken for an anomaly and
    # stays out of the recent maximum (until it falls back, or for a tenth of the window at
    # most: longer, it is a new level), so it cannot hide the next one; at most
    # novelty_censor_runs such excursions per novelty_window windows (more are a pattern).
    novelty_censor: float = Field(0.0, ge=0, le=1)
    novelty_censor_runs: int = Field(4, ge=1)

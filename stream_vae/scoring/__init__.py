"""Scoring: hybrid score, normalisation, EMA, threshold calibration, episodes, attribution."""

from __future__ import annotations

from .alerts import Alert, alert_id, top_features
from .ema import SeriesEMA
from .episodes import EpisodeEvent, EpisodeTracker
from .hybrid import HybridParts, HybridScore, ScoreParts, roc_auc
from .normalise import Normaliser, apply_transform
from .scorer import ScoredBatch, Scorer
from .threshold import Calibration, calibrate

__all__ = [
    "Alert",
    "Calibration",
    "EpisodeEvent",
    "EpisodeTracker",
    "HybridParts",
    "HybridScore",
    "Normaliser",
    "ScoreParts",
    "ScoredBatch",
    "Scorer",
    "SeriesEMA",
    "alert_id",
    "apply_transform",
    "calibrate",
    "roc_auc",
    "top_features",
]

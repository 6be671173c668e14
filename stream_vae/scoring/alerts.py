"""Alert values: one event (open/close) of one episode, with what caused it.

``alert_id`` is a hash of (series, episode start, model version): the open and close events of one
episode share it, and a replay after a restart produces the same id, so consumers can de-duplicate
on ``(alert_id, event)``.

Examples
--------
>>> import numpy as np
>>> alert_id("pump-1", 1700000000.0, "v1") == alert_id("pump-1", 1700000000.0, "v1")
True
>>> top_features(np.array([1.0, 3.0, 0.0]), ("a", "b", "c"), k=2)
(('b', 0.75), ('a', 0.25))
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Alert", "alert_id", "top_features", "top_features_many"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert event as published to the alert topic (see DESIGN.md, Contracts)."""

    alert_id: str
    series_id: str
    event: str  # "open" | "close"
    ts: float  # epoch seconds of the window that caused the event
    episode_start_ts: float
    score: float  # smoothed (EMA) score
    threshold: float
    raw_score: float
    recon_score: float
    latent_score: float
    peak_score: float
    top_features: tuple[tuple[str, float], ...]  # (feature, share of recon error)
    model_version: str
    # why a close happened other than the score falling: "model_swap" (the model that opened
    # the episode was replaced), "evicted" (the series left the window store: idle, or over
    # the series bound); see Scorer.close. Empty for score-driven events.
    reason: str = ""
    # "anomaly" (the model's score), or a data-quality kind that does not ask the model:
    # "flatline", "out_of_range" (stream_vae.scoring.quality). For those, score and threshold
    # are the check's own measure and limit, and top_features the features it flagged.
    kind: str = "anomaly"
    # For the top features: (feature, observed, expected): the window's newest value and the
    # model's reconstruction of it, in the data's units. Empty where the scorer had no windows.
    expected: tuple[tuple[str, float, float], ...] = ()
    # An incident's series: (series id, open ts, suppressed: its own open was not published)
    members: tuple[tuple[str, float, bool], ...] = ()
    # The recurring kind of anomaly this episode is (stream_vae.scoring.clusters), and how many
    # episodes of that kind there have been, this one included; "" where not clustered.
    cluster: str = ""
    cluster_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = {
            "alert_id": self.alert_id,
            "series_id": self.series_id,
            "event": self.event,
            "ts": self.ts,
            "episode_start_ts": self.episode_start_ts,
            "score": self.score,
            "threshold": self.threshold,
            "raw_score": self.raw_score,
            "recon_score": self.recon_score,
            "latent_score": self.latent_score,
            "peak_score": self.peak_score,
            "top_features": [{"feature": f, "share": s} for f, s in self.top_features],
            "model_version": self.model_version,
            "kind": self.kind,
        }
        if self.reason:
            d["reason"] = self.reason
        if self.expected:
            d["expected"] = [
                {"feature": f, "observed": o, "expected": e} for f, o, e in self.expected
            ]
        if self.cluster:
            d["cluster"] = self.cluster
            d["cluster_count"] = self.cluster_count
        if self.members:
            d["members"] = [
                {"series_id": m, "ts": t, "suppressed": sup} for m, t, sup in self.members
            ]
        return d


def alert_id(
    series_id: str, episode_start_ts: float, model_version: str, kind: str = "anomaly"
) -> str:
    """Deterministic id of an episode: 16 hex chars of SHA-256 over its identity (an anomaly's
    id reads as it did before alerts had kinds)."""
    key = f"{series_id}\x1f{episode_start_ts!r}\x1f{model_version}"
    if kind != "anomaly":
        key += f"\x1f{kind}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def top_features(
    errors: npt.NDArray[np.floating[Any]], names: Sequence[str], k: int
) -> tuple[tuple[str, float], ...]:
    """The k features with the largest share of one window's reconstruction error."""
    return top_features_many(errors[None, :], names, k)[0]


def top_features_many(
    errors: npt.NDArray[np.floating[Any]], names: Sequence[str], k: int
) -> list[tuple[tuple[str, float], ...]]:
    """:func:`top_features` of each row of ``errors`` (n, d), sorted once for all rows."""
    errors = np.asarray(errors, dtype=np.float64)
    totals = errors.sum(axis=1)  # (n,)
    order = np.argsort(-errors, axis=1, kind="stable")[:, :k]  # (n, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = (np.take_along_axis(errors, order, axis=1) / totals[:, None]).tolist()
    return [
        tuple((names[i], round(share, 4)) for i, share in zip(idx, row, strict=True))
        if total > 0.0
        else ()
        for idx, row, total in zip(order.tolist(), shares, totals.tolist(), strict=True)
    ]

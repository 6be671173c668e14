"""What the demo's alerts amount to as a user lives them, at the product's own threshold (no
labels used to pick it): event precision, recall and F1, false alerts per series per day, and
the alert rate on normal windows against the calibrated target. And the same fleet drifting
slowly, without retraining, under each threshold mode (``alerts.threshold_mode``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Settings
from ..core.records import RecordBatch
from ..evaluation.events import EventReport, Segment, match_events
from ..runtime.live import DetectorOptions, LiveModel
from ..storage.artifact import Artifact

__all__ = ["OwnThreshold", "drifting_fleet", "own_threshold", "report_drift", "stream_offline"]

# The drifting fleet: every sensor's level moves by this many training standard deviations,
# linearly over the stream (the calibrated threshold then alerts on much of its second half).
DRIFT_STDS = 1.0


@dataclass(frozen=True, slots=True)
class OwnThreshold:
    """The alerts of one stream, scored against its injected faults."""

    events: EventReport
    false_per_series_day: float
    normal_rate: float  # share of normal (series, step) inside an alert episode
    target: float  # the calibrated false-positive rate

    def line(self) -> str:
        e, ratio = self.events, self.normal_rate / self.target
        f1 = 2 * e.precision * e.recall / (e.precision + e.recall) if e.n_detected else 0.0
        return (
            f"precision {e.precision:.2f}, recall {e.recall:.2f}, F1 {f1:.2f}; "
            f"{self.false_per_series_day:.2f} false alerts per series per day; alert rate on "
            f"normal windows {self.normal_rate:.2%} (target {self.target:.2%}, {ratio:.1f}×)"
        )


def own_threshold(
    alerts: Iterable[Mapping[str, Any]],
    segments: Sequence[Segment],
    *,
    series_ids: Sequence[str],
    t0: float,
    step_s: float,
    steps: tuple[int, int],
    tolerance: int,
    target: float,
) -> OwnThreshold:
    """Score alert messages (``Alert.to_dict()``, as on the topic) of a stream whose steps
    ``steps = (first, end)`` count from ``t0`` in ``step_s``. An open matches a fault when it
    falls inside it or within ``tolerance`` steps after; a normal step is one outside every
    fault (and that tolerance) of its series. A fleet incident (series ``*``) is not a series'
    alert: its members' own episodes are counted."""
    first, end = steps
    n = end - first
    inside = {sid: np.zeros(n, dtype=bool) for sid in series_ids}
    normal = {sid: np.ones(n, dtype=bool) for sid in series_ids}
    for s in segments:
        normal[s.series_id][max(s.start - first, 0) : max(s.end + tolerance - first, 0)] = False
    opened: dict[tuple[str, str], int] = {}
    opens = []
    for a in alerts:
        if a["series_id"] not in inside:
            continue
        step = round((a["ts"] - t0) / step_s)
        key = (a["series_id"], a["alert_id"])
        if a["event"] == "open":
            opened[key] = step
            opens.append((a["series_id"], step))
        elif key in opened:
            inside[a["series_id"]][max(opened.pop(key) - first, 0) : step - first + 1] = True
    for (sid, _), step in opened.items():  # still open at the end
        inside[sid][max(step - first, 0) :] = True
    events = match_events(opens, segments, tolerance=tolerance)
    flagged = sum(int((inside[s] & normal[s]).sum()) for s in series_ids)
    n_normal = sum(int(normal[s].sum()) for s in series_ids)
    days = n * step_s / 86_400.0
    return OwnThreshold(
        events,
        events.n_false / (len(series_ids) * days),
        flagged / max(n_normal, 1),
        target,
    )


def drifting_fleet(stream: RecordBatch, art: Artifact) -> RecordBatch:
    """``stream`` with every sensor's level moving by :data:`DRIFT_STDS` training standard
    deviations, linearly from its first timestamp to its last (the faults stay in it)."""
    ts = stream.ts
    share = (ts - ts.min()) / max(float(np.ptp(ts)), 1e-9)  # (n,)
    drift = DRIFT_STDS * share[:, None] * art.scaler.std[None, :]  # (n, d)
    return RecordBatch(stream.series_ids, ts, stream.values + drift)


def stream_offline(
    art: Artifact, settings: Settings, batch: RecordBatch, mode: str
) -> list[dict[str, Any]]:
    """The alert messages of ``batch`` scored by ``art`` with ``alerts.threshold_mode = mode``,
    through the service's own path (window store, model, scorer), without Kafka."""
    alerts = settings.alerts.model_copy(update={"threshold_mode": mode})
    live = LiveModel(art, DetectorOptions(device="cpu"), alerts=alerts)
    return [a.to_dict() for scored in live.stream(batch) for a in scored.alerts]


def report_drift(
    art: Artifact,
    settings: Settings,
    stream: RecordBatch,
    score: Callable[[list[dict[str, Any]]], OwnThreshold],
    say: Callable[[str], None],
) -> dict[str, OwnThreshold]:
    """Stream the drifting fleet under each threshold mode and say what each alerted."""
    drifting = drifting_fleet(stream, art)
    say(
        f"\nthe same fleet drifting {DRIFT_STDS:g} std per sensor over the stream, no "
        "retraining (offline, the service's path):"
    )
    out = {}
    for mode in ("static", "dspot"):
        out[mode] = score(stream_offline(art, settings, drifting, mode))
        say(f"  {mode:6}  {out[mode].line()}")
    return out

"""Event-level scoring of alert episodes against labelled anomaly segments.

An alert *detects* a segment when it opens on the same series between the segment's start and
``tolerance`` steps after its end (a window keeps seeing an anomaly for W − 1 steps after it
ends). An opened alert that detects no segment is a false alarm. Delay is counted in steps from
the segment's start to the first alert that detects it.

Examples
--------
>>> segs = [Segment("a", 10, 20, "spike"), Segment("b", 5, 8, "stuck")]
>>> r = match_events([("a", 12), ("a", 50), ("c", 1)], segs, tolerance=3)
>>> (r.n_detected, r.n_segments, r.n_false, r.mean_delay)
(1, 2, 2, 2.0)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["EventReport", "Segment", "match_events"]


@dataclass(frozen=True, slots=True)
class Segment:
    series_id: str
    start: int  # first anomalous step
    end: int  # one past the last anomalous step
    kind: str = ""


@dataclass(frozen=True, slots=True)
class EventReport:
    n_segments: int
    n_detected: int
    n_alerts: int
    n_false: int
    delays: tuple[int, ...]
    recall_by_kind: dict[str, float] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return self.n_detected / self.n_segments if self.n_segments else float("nan")

    @property
    def precision(self) -> float:
        return (self.n_alerts - self.n_false) / self.n_alerts if self.n_alerts else float("nan")

    @property
    def mean_delay(self) -> float:
        return statistics.fmean(self.delays) if self.delays else float("nan")


def match_events(
    opens: Sequence[tuple[str, int]], segments: Sequence[Segment], tolerance: int
) -> EventReport:
    """Match alert openings ``(series_id, step)`` to labelled segments."""
    first_hit: dict[int, int] = {}
    n_false = 0
    for sid, step in opens:
        hits = [
            i
            for i, s in enumerate(segments)
            if s.series_id == sid and s.start <= step < s.end + tolerance
        ]
        if not hits:
            n_false += 1
        for i in hits:
            first_hit[i] = min(first_hit.get(i, step), step)
    kinds: dict[str, list[bool]] = {}
    for i, s in enumerate(segments):
        kinds.setdefault(s.kind, []).append(i in first_hit)
    return EventReport(
        n_segments=len(segments),
        n_detected=len(first_hit),
        n_alerts=len(opens),
        n_false=n_false,
        delays=tuple(first_hit[i] - segments[i].start for i in sorted(first_hit)),
        recall_by_kind={k: sum(v) / len(v) for k, v in sorted(kinds.items())},
    )

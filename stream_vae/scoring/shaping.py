"""Alert shaping: fleet incidents instead of alert storms, and a per-series alert budget.

Applied to the anomaly alerts of a stream, in order (data-quality alerts pass unshaped):

* **Fleet incident.** When at least ``incident_share`` of the active series (and at least
  ``incident_min_series``) open an episode within ``incident_window_s`` of stream time, one
  ``incident`` event opens (series id ``*``, kind ``incident``): it names the series that opened
  in that window (``members``) and their most shared top features. While it is open, further
  opens are not published on their own: they join the incident as suppressed members (their
  closes are dropped too). It closes, with its own ``close`` event, when none of its members is
  in an episode any more. The opens that led up to it were published before it existed (holding
  every open back for ``incident_window_s`` in case a fleet event follows would delay every
  alert): the incident lists them, unsuppressed.
* **Budget.** A series publishes at most ``max_opens_per_hour`` opens in any hour of stream time;
  an open past it is suppressed with its close, and counted.

Nothing is dropped silently: :attr:`AlertShaper.counters` counts what was suppressed and why
(the service exports them as ``stream_vae_alerts_suppressed_total{reason}``).

Examples
--------
>>> from stream_vae.scoring.alerts import Alert
>>> def opened(s, t):
...     return Alert(f"id-{s}", s, "open", t, t, 2.0, 1.0, 2.0, 2.0, 0.1, 2.0,
...                  (("temp", 0.9),), "v1")
>>> shaper = AlertShaper(incident_share=0.5, incident_min_series=2, incident_window_s=60)
>>> out = shaper.shape([opened("a", 0.0), opened("b", 10.0), opened("c", 20.0)], n_active=4)
>>> [(a.series_id, a.kind) for a in out]
[('a', 'anomaly'), ('*', 'incident')]
>>> [(m, s) for m, _, s in out[1].members], shaper.counters["incident"]  # c joined it later
([('a', False), ('b', True)], 2)
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ..core.state import KEY_BYTES
from ..errors import ConfigError
from .alerts import Alert, alert_id

__all__ = ["FLEET", "AlertShaper"]

FLEET = "*"  # the series id of an incident event (it belongs to no one series)
_HOUR_S = 3600.0


@dataclass(slots=True)
class _Incident:
    start_ts: float
    model_version: str
    members: dict[str, tuple[float, bool]]  # series -> (open ts, suppressed)
    open_now: set[str]  # members in an episode now
    features: Counter[str] = field(default_factory=Counter)

    @property
    def alert_id(self) -> str:
        return alert_id(FLEET, self.start_ts, self.model_version, "incident")


class AlertShaper:
    """Fleet incidents and a per-series budget over a stream's anomaly alerts.

    Parameters
    ----------
    max_opens_per_hour : int
        >= 0; a series' published opens per hour of stream time (0: no budget).
    incident_share : float
        In [0, 1]; the share of active series whose opens within ``incident_window_s`` make a
        fleet incident (0: no incidents).
    incident_window_s : float
        > 0; how close in stream time those opens must be.
    incident_min_series : int
        >= 2; the fewest series that make an incident, however few are active.
    top_k : int
        Features named by an incident.
    """

    def __init__(
        self,
        *,
        max_opens_per_hour: int = 0,
        incident_share: float = 0.0,
        incident_window_s: float = 900.0,
        incident_min_series: int = 5,
        top_k: int = 3,
    ) -> None:
        if max_opens_per_hour < 0 or not 0.0 <= incident_share <= 1.0:
            raise ConfigError("AlertShaper: need max_opens_per_hour >= 0 and 0 <= share <= 1")
        if incident_window_s <= 0 or incident_min_series < 2:
            raise ConfigError("AlertShaper: need incident_window_s > 0, incident_min_series >= 2")
        self.max_opens_per_hour = max_opens_per_hour
        self.incident_share = incident_share
        self.incident_window_s = incident_window_s
        self.incident_min_series = incident_min_series
        self.top_k = top_k
        self.counters: dict[str, int] = {"budget": 0, "incident": 0}
        self._recent: deque[Alert] = deque()  # anomaly opens within the incident window
        self._published: dict[str, deque[float]] = {}  # series -> its opens' ts, last hour
        self._suppressed: set[str] = set()  # alert ids whose open was not published
        self._open: set[str] = set()  # series in an anomaly episode now
        self._incident: _Incident | None = None

    def shape(self, alerts: Sequence[Alert], n_active: int) -> tuple[Alert, ...]:
        """The alerts to publish, in order: ``alerts`` less what is suppressed, plus incident
        events. ``n_active``: the series held now (what ``incident_share`` is a share of)."""
        out: list[Alert] = []
        for a in alerts:
            if a.kind != "anomaly":
                out.append(a)
            elif a.event == "open":
                out.extend(self._opened(a, n_active))
            else:
                out.extend(self._close(a))
        return tuple(out)

    def _opened(self, a: Alert, n_active: int) -> list[Alert]:
        self._open.add(a.series_id)
        recent = self._recent
        recent.append(a)
        while recent and recent[0].ts < a.ts - self.incident_window_s:
            recent.popleft()
        inc = self._incident
        if inc is not None:
            self._suppress(a, "incident")
            inc.members.setdefault(a.series_id, (a.ts, True))
            inc.open_now.add(a.series_id)
            inc.features.update(f for f, _ in a.top_features)
            return []
        if self.incident_share > 0:
            need = max(self.incident_min_series, self.incident_share * n_active)
            if len({r.series_id for r in recent}) >= need:
                return [self._start_incident(a)]
        if self.max_opens_per_hour:
            times = self._published.setdefault(a.series_id, deque())
            while times and times[0] <= a.ts - _HOUR_S:
                times.popleft()
            if len(times) >= self.max_opens_per_hour:
                self._suppress(a, "budget")
                return []
            times.append(a.ts)
        return [a]

    def _start_incident(self, a: Alert) -> Alert:
        """The incident ``a`` tips over: the series that opened in the window are its members
        (published before it: unsuppressed; ``a`` itself: suppressed)."""
        self._suppress(a, "incident")
        inc = _Incident(a.ts, a.model_version, {}, set())
        for r in self._recent:
            inc.members.setdefault(r.series_id, (r.ts, r is a))
            inc.features.update(f for f, _ in r.top_features)
            if r.series_id in self._open:  # one that opened and closed already is not waited for
                inc.open_now.add(r.series_id)
        self._incident = inc
        return self._incident_event(inc, "open", a.ts, a)

    def _close(self, a: Alert) -> list[Alert]:
        self._open.discard(a.series_id)
        out: list[Alert] = []
        if a.alert_id in self._suppressed:
            self._suppressed.discard(a.alert_id)
        else:
            out.append(a)
        inc = self._incident
        if inc is not None and a.series_id in inc.open_now:
            inc.open_now.discard(a.series_id)
            if not inc.open_now:
                out.append(self._incident_event(inc, "close", a.ts, a))
                self._incident = None
                self._recent.clear()  # a new incident needs new opens
        return out

    def _suppress(self, a: Alert, reason: str) -> None:
        self._suppressed.add(a.alert_id)
        self.counters[reason] += 1

    def _incident_event(self, inc: _Incident, event: str, ts: float, cause: Alert) -> Alert:
        n = sum(inc.features.values()) or 1
        top = tuple((f, round(c / n, 4)) for f, c in inc.features.most_common(self.top_k))
        members = tuple((s, t, sup) for s, (t, sup) in sorted(inc.members.items()))
        return replace(
            cause,
            alert_id=inc.alert_id,
            series_id=FLEET,
            event=event,
            ts=ts,
            episode_start_ts=inc.start_ts,
            top_features=top,
            kind="incident",
            reason=cause.reason if event == "close" else "",  # e.g. its members' model_swap
            expected=(),
            members=members,
            cluster="",
            cluster_count=0,
        )

    def series(self) -> frozenset[str]:
        return frozenset(self._published)

    def nbytes(self) -> int:
        per = KEY_BYTES + 100
        return per * (len(self._published) + len(self._suppressed) + len(self._recent))

    def drop(self, keys: Iterable[str]) -> None:
        inc = self._incident
        for k in keys:
            self._published.pop(k, None)
            self._open.discard(k)
            if inc is not None:
                inc.open_now.discard(k)
        if inc is not None and not inc.open_now:
            # its members left this replica (their partition was revoked): no close of theirs
            # will come here to end it, and an incident left open would hold every later open
            self._incident = None

"""People's verdicts on alerts, turned into data the next retrain learns from.

A feedback message names an alert and says what it was (``stream_vae.contracts.FeedbackMessage``,
read by :mod:`stream_vae.service.feedback`):

- ``false_positive``: the episode's windows were normal. They join every later retrain's
  training windows (repeated up to ``feedback.share`` of them), so the pattern is learned.
- ``confirmed``: the episode was a real anomaly. Its windows join the gate's shadow set: a
  candidate that no longer finds them is rejected (``retrain.max_recall_drop``).
- ``ignore``: counted, nothing learned.

The windows come from :class:`AlertWindows`, which holds a thinned copy of each recent anomaly
episode's windows by ``alert_id`` while the service scores them. It is memory, not storage: an
alert held by another replica, closed long ago (past ``feedback.alerts_held`` newer alerts), or
scored before a restart (except an episode still open, which the replay rebuilds) is not there,
and its feedback is counted as ``unknown_alert``.

Examples
--------
>>> import numpy as np
>>> held = AlertWindows(per_alert=4, n_alerts=10, lead=1)
>>> w = np.arange(10, dtype=np.float32).reshape(10, 1, 1)  # ten windows of series "a"
>>> held.hold(["a"] * 10, np.arange(10.0), w, opened={"a": ("id-1", 3.0)})
>>> held.take("id-1")[:, 0, 0].tolist()   # windows 2..9 (one before the open), thinned
[2.0, 4.0, 6.0, 8.0]
>>> held.take("id-1") is None             # taken once
True
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.state import KEY_BYTES
from ..errors import check_shape

__all__ = ["VERDICTS", "AlertWindows", "Feedback", "FeedbackSet"]

F32 = npt.NDArray[np.float32]
VERDICTS = ("false_positive", "confirmed", "ignore")


@dataclass(frozen=True, slots=True)
class Feedback:
    """One person's verdict on one alert."""

    alert_id: str
    verdict: str  # one of VERDICTS
    by: str  # who said it ("" when not given)
    ts: float | None  # when, epoch seconds (None when not given)


class _Held:
    """One episode's windows, thinned evenly to at most ``cap``: every ``stride``-th window
    offered is kept, and when ``cap`` is reached every other one goes and the stride doubles
    (O(1) amortised per window, and the whole episode stays covered)."""

    __slots__ = ("cap", "n_seen", "stride", "windows")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.windows: list[F32] = []  # (W, d) each
        self.stride = 1
        self.n_seen = 0

    def add(self, windows: F32) -> None:
        for w in windows:  # a handful per batch: the rows of one series
            if self.n_seen % self.stride == 0:
                if len(self.windows) == self.cap:
                    self.windows = self.windows[::2]
                    self.stride *= 2
                if self.n_seen % self.stride == 0:
                    self.windows.append(w)
            self.n_seen += 1


class AlertWindows:
    """The windows (W, d) of the newest ``n_alerts`` anomaly episodes, at most ``per_alert``
    of each, by ``alert_id``, for feedback to find; with up to ``lead`` windows before each
    open (those of the batch that opened it)."""

    def __init__(self, per_alert: int = 32, n_alerts: int = 500, lead: int = 8) -> None:
        self.per_alert = per_alert
        self.n_alerts = n_alerts
        self.lead = lead
        self._open: dict[str, tuple[str, float]] = {}  # series -> (alert id, episode start ts)
        self._held: OrderedDict[str, _Held] = OrderedDict()  # oldest episode first

    def __len__(self) -> int:
        return len(self._held)

    def hold(
        self,
        keys: Sequence[str],
        ts: npt.ArrayLike,
        windows: npt.NDArray[np.floating[Any]],
        *,
        opened: Mapping[str, tuple[str, float]] = {},
        closed: Mapping[str, float] = {},
    ) -> None:
        """Keep the windows (n, W, d) of series in an anomaly episode: those opened before, and
        ``opened`` in this batch (series → (alert id, start ts)); a series in ``closed``
        (series → close ts) keeps its windows up to that time, then stops."""
        ts_arr = np.asarray(ts, dtype=np.float64)
        check_shape("AlertWindows.hold windows", windows.shape, (len(keys), None, None))
        was_open = dict(self._open)  # the episodes open when the batch began
        for aid, _ in opened.values():
            if aid not in self._held:
                self._held[aid] = _Held(self.per_alert)
            while len(self._held) > self.n_alerts:
                self._held.popitem(last=False)
        if not was_open and not opened:
            return  # usually: then no per-window lookup
        rows: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k in was_open or k in opened:
                rows.setdefault(k, []).append(i)
        for series, idx in rows.items():
            for aid, sel in self._spans(series, idx, ts_arr, was_open, opened, closed):
                held = self._held.get(aid)
                if held is not None and sel:
                    held.add(np.asarray(windows[sel], dtype=np.float32))
        for series in closed:  # an episode that closed in the batch, and none opened after it
            new = opened.get(series)
            if new is None or closed[series] >= new[1]:
                self._open.pop(series, None)
        for series, (aid, start) in opened.items():
            if series not in closed or closed[series] < start:
                self._open[series] = (aid, start)

    def _spans(
        self,
        series: str,
        idx: list[int],
        ts: npt.NDArray[np.float64],
        was_open: Mapping[str, tuple[str, float]],
        opened: Mapping[str, tuple[str, float]],
        closed: Mapping[str, float],
    ) -> list[tuple[str, list[int]]]:
        """The rows of one series that belong to each of its episodes in this batch: the one
        open before it (to its close, if it closed), and one opened in it (from up to ``lead``
        rows before its open, to its close, if it closed too)."""
        out = []
        close, new = closed.get(series), opened.get(series)
        if series in was_open:
            last = close if close is not None and (new is None or close < new[1]) else np.inf
            out.append((was_open[series][0], [i for i in idx if ts[i] <= last]))
        if new is not None:
            aid, start = new
            last = close if close is not None and close >= start else np.inf
            # the score rose before the smoothed one crossed: the windows leading into the
            # open that this batch still has belong to the pattern too
            before = [
                i
                for i in idx
                if ts[i] < start and (series not in was_open or close is None or ts[i] > close)
            ]
            sel = before[max(0, len(before) - self.lead) :]
            out.append((aid, sel + [i for i in idx if start <= ts[i] <= last]))
        return out

    def take(self, alert_id: str) -> F32 | None:
        """The windows (m, W, d) held for ``alert_id``, removed; None when none are held."""
        held = self._held.pop(alert_id, None)
        if held is None or not held.windows:
            return None
        for series, (aid, _) in list(self._open.items()):
            if aid == alert_id:  # fed back while open: the rest of the episode is not kept
                del self._open[series]
        return np.stack(held.windows)

    # -- the per-series state protocol (stream_vae.core.state) --------------------------------
    def drop(self, series: Iterable[str]) -> None:
        """Series leaving this replica: their open episodes are no longer followed (what was
        held stays findable)."""
        for s in series:
            self._open.pop(s, None)

    def series(self) -> frozenset[str]:
        """The series in an episode whose windows are being held."""
        return frozenset(self._open)

    def nbytes(self) -> int:
        held = sum(w.nbytes for h in self._held.values() for w in h.windows)
        return held + KEY_BYTES * (len(self._open) + len(self._held))


class FeedbackSet:
    """Windows fed back with one verdict: at most ``capacity``, the oldest alert's first out.

    Examples
    --------
    >>> import numpy as np
    >>> fs = FeedbackSet(capacity=5)
    >>> fs.add("a1", np.zeros((3, 2, 1), np.float32))
    >>> fs.add("a2", np.ones((4, 2, 1), np.float32))   # a1 goes: 7 > 5
    >>> fs.n_alerts, fs.windows().shape
    (1, (4, 2, 1))
    """

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self._alerts: OrderedDict[str, F32] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(w) for w in self._alerts.values())

    @property
    def n_alerts(self) -> int:
        return len(self._alerts)

    def add(self, alert_id: str, windows: F32) -> None:
        """Add one alert's windows (m, W, d); the same alert twice keeps its newest copy."""
        self._alerts.pop(alert_id, None)
        self._alerts[alert_id] = windows[-self.capacity :]
        n = len(self)
        while n > self.capacity:
            n -= len(self._alerts.popitem(last=False)[1])

    def get(self, alert_id: str) -> F32 | None:
        return self._alerts.get(alert_id)

    def discard(self, alert_id: str) -> None:
        self._alerts.pop(alert_id, None)

    def windows(self) -> F32 | None:
        """Every window held (m, W, d), oldest alert first; None when empty."""
        if not self._alerts:
            return None
        return np.concatenate(list(self._alerts.values()))

    def alert_ids(self) -> tuple[str, ...]:
        """The alert each of :meth:`windows` came from."""
        return tuple(a for a, w in self._alerts.items() for _ in range(len(w)))

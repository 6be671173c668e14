"""Data-quality alerts that do not ask the model: a channel that flat-lines, a value out of range.

A frozen sensor at a plausible level is reconstructed well, and a value far outside anything
seen in training is only "very anomalous" to the model; both are among the commonest faults of
sensor telemetry, and both are plain to see in the raw window. Measured against the training
data's :class:`~stream_vae.scoring.reference.QualityReference`, per window of a series:

* ``flatline``: a feature's standard deviation over the window's newest ``FLAT_POINTS`` (8)
  points is below ``flatline_ratio`` × its typical one in training windows, for
  ``flatline_windows`` windows in a row (a feature that does not move over 8 points of a typical
  training window is never flagged); the episode closes at the first window where every
  feature moves again.
* ``out_of_range``: the window's newest value of a feature lies beyond the training range by
  more than ``range_margin`` × that range; the episode closes after ``close_after`` windows back
  in range.

Each kind has its own episodes (:class:`~stream_vae.scoring.episodes.EpisodeTracker`), apart
from the anomaly score's: a flat-lined channel is one alert of kind ``flatline``, whatever the
score does.

Examples
--------
>>> import numpy as np
>>> from stream_vae.scoring.reference import QualityReference
>>> rng = np.random.default_rng(0)
>>> ref = QualityReference.fit(rng.normal(size=(50, 8, 2)))
>>> mon = QualityMonitor(ref, flatline_windows=2)
>>> w = rng.normal(size=(4, 8, 2))
>>> w[1:, :, 1] = 0.3  # feature 1 freezes from the second window on
>>> w[3, -1, 0] = 40.0  # and feature 0 jumps far out of range in the last one
>>> [(e.row, e.kind, e.event, e.features) for e in mon.update(["a"] * 4, np.arange(4.0), w)]
[(2, 'flatline', 'open', (1,)), (3, 'out_of_range', 'open', (0,))]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..core.state import KEY_BYTES, KeyedState
from ..errors import ConfigError, check_shape
from .episodes import EpisodeTracker
from .reference import FLAT_POINTS, QualityReference

__all__ = ["QUALITY_KINDS", "QualityEvent", "QualityMonitor", "StaleMonitor"]

F64 = npt.NDArray[np.float64]
QualityKind = Literal["flatline", "out_of_range", "stale"]
QUALITY_KINDS: tuple[QualityKind, ...] = ("flatline", "out_of_range")


@dataclass(frozen=True, slots=True)
class QualityEvent:
    """One open or close of a data-quality episode of one series."""

    row: int  # index of the causing window in the batch given to QualityMonitor.update
    series_id: str
    kind: QualityKind
    event: Literal["open", "close"]
    ts: float
    episode_start_ts: float
    # flatline: how many times flatter than in training the flattest flagged feature is;
    # out_of_range: how far beyond the training range the farthest value is, in ranges
    severity: float
    limit: float  # the severity from which a window counts
    features: tuple[int, ...]  # the features flagged in the causing window (indices)


class QualityMonitor:
    """Per-series flatline and out-of-range episodes over raw windows.

    Parameters
    ----------
    reference : QualityReference
        The training data's range and movement, per feature (d,).
    kinds : sequence of str
        The checks to run (``"flatline"``, ``"out_of_range"``).
    flatline_ratio : float
        In (0, 1); a feature moves less than this share of its typical training movement.
    flatline_windows : int
        >= 1; windows in a row that must be flat.
    range_margin : float
        >= 0; how far beyond the training range (in ranges) a value must lie.
    close_after : int
        >= 1; windows back in range that close an ``out_of_range`` episode.
    """

    def __init__(
        self,
        reference: QualityReference,
        *,
        kinds: Sequence[str] = QUALITY_KINDS,
        flatline_ratio: float = 0.05,
        flatline_windows: int = 5,
        range_margin: float = 0.5,
        close_after: int = 3,
    ) -> None:
        unknown = set(kinds) - set(QUALITY_KINDS)
        if unknown:
            raise ConfigError(f"QualityMonitor: unknown kinds {sorted(unknown)}")
        if not 0.0 < flatline_ratio < 1.0 or flatline_windows < 1 or range_margin < 0:
            raise ConfigError(
                "QualityMonitor: need 0 < flatline_ratio < 1, flatline_windows >= 1 and "
                f"range_margin >= 0, got {flatline_ratio!r}, {flatline_windows!r}, "
                f"{range_margin!r}"
            )
        self.reference = reference
        self.kinds = tuple(k for k in QUALITY_KINDS if k in kinds)
        self.flatline_ratio = flatline_ratio
        self.flatline_windows = flatline_windows
        self.range_margin = range_margin
        self.close_after = close_after
        self._flat_runs: dict[str, int] = {}  # series -> flat windows in a row (> 0 only)
        self._episodes = {
            "flatline": EpisodeTracker(1.0, close_after=1),
            "out_of_range": EpisodeTracker(1.0, close_after=close_after),
        }
        lo = reference.low.astype(np.float64)
        hi = reference.high.astype(np.float64)
        # a feature constant in training has a range of 0: any other value is out of range
        self._span = np.maximum(hi - lo, 1e-9 * np.maximum(np.abs(hi), 1.0))
        self._lo, self._hi = lo, hi
        self._typical = reference.window_std.astype(np.float64)

    @property
    def n_features(self) -> int:
        return int(self._lo.shape[0])

    def update(
        self, keys: Sequence[str], ts: npt.ArrayLike, windows: npt.ArrayLike
    ) -> list[QualityEvent]:
        """Feed raw windows (n, W, c), in order (the first ``d`` channels are the features the
        reference knows; the rest, the calendar, are left out); returns the events caused.

        Unlike the other mutators this one returns a value: the events.
        """
        w = np.asarray(windows)
        n, d = len(keys), self.n_features
        check_shape("QualityMonitor.update windows", w.shape, (n, None, None))
        if w.shape[2] < d:
            raise ValueError(f"QualityMonitor.update: {w.shape[2]} channels for {d} features")
        t = np.asarray(ts, dtype=np.float64)
        # both checks read the newest FLAT_POINTS points only: convert those, not the window
        v = w[:, -FLAT_POINTS:, :d].astype(np.float64)  # (n, ≤ FLAT_POINTS, d)
        events: list[QualityEvent] = []
        if "flatline" in self.kinds:
            events += self._flatline(keys, t, v)
        if "out_of_range" in self.kinds:
            events += self._out_of_range(keys, t, v)
        return sorted(events, key=lambda e: e.row)

    def _flatline(self, keys: Sequence[str], t: F64, v: F64) -> list[QualityEvent]:
        std = v.std(axis=1)  # (n, d)
        moves = self._typical > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            flatness = np.where(moves, self._typical / std, 0.0)  # (n, d): × flatter; inf: frozen
        flat = moves & (std < self.flatline_ratio * self._typical)  # (n, d)
        any_flat = flat.any(axis=1)
        hot = np.zeros(len(keys))
        runs = self._flat_runs
        if not runs and not any_flat.any():  # the usual batch: nothing flat, no run going
            return []
        for i, k in enumerate(keys):  # in order: a run of flat windows is per series
            if any_flat[i]:
                runs[k] = runs.get(k, 0) + 1
                hot[i] = runs[k] >= self.flatline_windows
            elif k in runs:
                del runs[k]
        limit = 1.0 / self.flatline_ratio
        return [
            QualityEvent(
                e.row,
                e.series_id,
                "flatline",
                e.event,
                e.ts,
                e.episode_start_ts,
                float(flatness[e.row][flat[e.row]].max(initial=0.0)),
                limit,
                tuple(np.flatnonzero(flat[e.row]).tolist()),
            )
            for e in self._episodes["flatline"].update(keys, t, hot, 0.5)
        ]

    def _out_of_range(self, keys: Sequence[str], t: F64, v: F64) -> list[QualityEvent]:
        last = v[:, -1, :]  # (n, d)
        beyond = np.maximum(self._lo - last, last - self._hi) / self._span  # (n, d), in ranges
        beyond = np.nan_to_num(beyond, nan=0.0)
        out = beyond > self.range_margin
        hot = out.any(axis=1).astype(np.float64)
        return [
            QualityEvent(
                e.row,
                e.series_id,
                "out_of_range",
                e.event,
                e.ts,
                e.episode_start_ts,
                float(beyond[e.row].max()),
                self.range_margin,
                tuple(np.flatnonzero(out[e.row]).tolist()),
            )
            for e in self._episodes["out_of_range"].update(keys, t, hot, 0.5)
        ]

    def open_series(self) -> dict[str, tuple[str, ...]]:
        """Series in a data-quality episode now, by kind."""
        return {k: tr.open_series() for k, tr in self._episodes.items()}

    def close(self, keys: Iterable[str] | None = None) -> list[tuple[str, str, float]]:
        """End the open episodes of these series (None: all): (kind, series, start ts) each."""
        keys = None if keys is None else list(keys)
        return [
            (kind, s, start)
            for kind, tr in self._episodes.items()
            for s, start, _ in tr.close(keys)
        ]

    def series(self) -> frozenset[str]:
        return frozenset(self._flat_runs).union(*(t.series() for t in self._episodes.values()))

    def nbytes(self) -> int:
        runs = (KEY_BYTES + 32) * len(self._flat_runs)
        return runs + sum(t.nbytes() for t in self._episodes.values())

    def drop(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for k in keys:
            self._flat_runs.pop(k, None)
        for t in self._episodes.values():
            t.drop(keys)


class StaleMonitor(KeyedState):
    """Per-series ``stale`` episodes: a series silent for ``factor`` times its usual interval.

    A series' usual interval is the exponentially weighted mean of the gaps between its windows
    (weight ``1/16``); it is known after ``min_gaps`` gaps. Time is the stream's (``clock``
    None): the newest timestamp any series has reached, so a fleet that goes silent all at once
    does not move it (see docs/service.md); every :meth:`update` checks. With a ``clock`` (the
    wall clock, in the service), a series is silent since its newest window *arrived*, by that
    clock, and only :meth:`check` opens episodes (the service calls it after every poll, idle
    or not, so a whole fleet falling silent is seen, and a replay of old records opens none).
    The check walks the series at most once per smallest usual interval; an episode opens at
    that time and closes at the series' next window.

    Examples
    --------
    >>> import numpy as np
    >>> mon = StaleMonitor(factor=5.0, min_gaps=3)
    >>> ev = mon.update(["a", "b"] * 5, np.repeat(np.arange(5.0), 2))  # both every second
    >>> ev = mon.update(["b"] * 10, np.arange(5.0, 15.0))  # a falls silent
    >>> [(e.series_id, e.event, e.ts, e.severity) for e in ev]
    [('a', 'open', 14.0, 10.0)]
    >>> [(e.series_id, e.event, e.ts) for e in mon.update(["a"], [15.0])]
    [('a', 'close', 15.0)]

    By the wall clock, the whole fleet falling silent is seen too:

    >>> now = [100.0]
    >>> wall = StaleMonitor(factor=5.0, min_gaps=3, clock=lambda: now[0])
    >>> ev = wall.update(["a", "b"] * 5, np.repeat(np.arange(5.0), 2))  # arrived at 100
    >>> now[0] = 104.0
    >>> wall.check()
    []
    >>> now[0] = 106.0  # nothing for 6 s: 6 usual intervals
    >>> [(e.series_id, e.event, e.ts) for e in wall.check()]
    [('a', 'open', 106.0), ('b', 'open', 106.0)]
    """

    STATE_BYTES = 180  # a list of four floats, boxed: ~180 B

    def __init__(
        self, factor: float = 5.0, min_gaps: int = 3, clock: Callable[[], float] | None = None
    ) -> None:
        if factor <= 1.0 or min_gaps < 1:
            raise ConfigError(f"StaleMonitor: need factor > 1 and min_gaps >= 1, got {factor!r}")
        self.factor = factor
        self.min_gaps = min_gaps
        # None: stream time; else the time a series is silent by (its windows' arrival)
        self.clock = clock
        # series -> [last ts, mean gap (nan: none yet), gaps seen, stale since (nan: not
        # stale), when its last window arrived (the clock's; stream time: its ts)]
        self._state: dict[str, list[float]] = {}
        self._now = -math.inf
        self._min_gap = math.inf  # the smallest usual interval of any series
        self._next_check = -math.inf

    def update(self, keys: Sequence[str], ts: npt.ArrayLike) -> list[QualityEvent]:
        """Feed windows (their series and ts) in order; returns the closes of series that came
        back (at their row) and the opens of series now silent too long (row ``len(keys)``)."""
        t = np.asarray(ts, dtype=np.float64).tolist()
        arrived = None if self.clock is None else self.clock()
        events: list[QualityEvent] = []
        state = self._state
        for i, (k, ti) in enumerate(zip(keys, t, strict=True)):
            at = ti if arrived is None else arrived
            st = state.get(k)
            if st is None:
                state[k] = [ti, math.nan, 0.0, math.nan, at]
                continue
            last, gap, n, since, _ = st
            if not math.isnan(since):  # it came back
                events.append(QualityEvent(i, k, "stale", "close", ti, since, 0.0, self.factor, ()))
                st[3] = math.nan
            d = ti - last
            if d > 0:
                st[1] = d if math.isnan(gap) else gap + (d - gap) / 16.0
                self._min_gap = min(self._min_gap, st[1])
                st[2] = n + 1.0
                st[0], st[4] = ti, at
        if arrived is not None:  # by the clock, only check() opens: a replay opens nothing
            return events
        if t:
            self._now = max(self._now, max(t))
        return events + self._sweep(len(keys), None)

    def check(self) -> list[QualityEvent]:
        """The opens of series silent too long by the clock now, with no window to feed (row
        0); none in stream time, which only windows move."""
        return [] if self.clock is None else self._sweep(0, self.clock())

    def _sweep(self, row: int, wall: float | None) -> list[QualityEvent]:
        now = self._now if wall is None else wall
        # The sweep walks every series: at most once per smallest usual interval of time (a
        # fleet of 100k series reporting each minute: once a minute, not every batch).
        if now < self._next_check:
            return []
        if math.isfinite(self._min_gap):
            self._next_check = now + self._min_gap
        events = []
        for k, st in self._state.items():
            _, gap, n, since, at = st
            if math.isnan(since) and n >= self.min_gaps and now - at > self.factor * gap:
                st[3] = now
                silent = (now - at) / gap
                events.append(
                    QualityEvent(row, k, "stale", "open", now, now, silent, self.factor, ())
                )
        return events

    def open_series(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, st in self._state.items() if not math.isnan(st[3])))

    def close(self, keys: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """End the stale episodes of these series (None: all): (series, start ts) each."""
        wanted = self._state.keys() if keys is None else set(keys) & self._state.keys()
        out = []
        for k in sorted(wanted):
            st = self._state[k]
            if not math.isnan(st[3]):
                out.append((k, st[3]))
                st[3] = math.nan
        return out

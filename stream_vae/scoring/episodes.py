"""Per-series alert episodes over a smoothed score: open, hysteresis, close, cooldown.

Scores are assumed non-negative (smoothed anomaly scores), and so is the threshold: the close
level is ``threshold * hysteresis``, which lies below the threshold only then.

Per row, in order, for the row's series:

* not in an episode and not cooling down, and ``score >= threshold``: an ``open`` event;
* in an episode: a row with ``score < threshold * hysteresis`` adds one to a count of
  consecutive low rows, any other row resets it; when the count reaches ``close_after`` the
  episode closes (a ``close`` event) and the next ``cooldown`` rows of the series cannot open
  a new one.
* with ``settled`` flags (the window's newest point looks normal again): a settled row counts
  as a low row too, so an episode ends when the data does, not when the window's score lets go
  of the anomaly (a window of W points keeps it for W rows). While the score of an episode
  closed so is still up, a new one opens only on a row that is not settled (the data is off
  again), and a row below ``threshold * hysteresis`` ends the wait.

Examples
--------
>>> import numpy as np
>>> t = EpisodeTracker(hysteresis=0.5, close_after=2)
>>> ev = t.update(["a"] * 6, np.arange(6.0), np.array([0.1, 1.2, 0.9, 0.4, 0.3, 0.2]), 1.0)
>>> [(e.row, e.event, e.episode_start_ts, e.peak_score) for e in ev]
[(1, 'open', 1.0, 1.2), (4, 'close', 1.0, 1.2)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..core.state import KeyedState
from ..errors import ConfigError, DataError, check_shape

__all__ = ["EpisodeEvent", "EpisodeTracker"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class EpisodeEvent:
    """One open or close of an alert episode of one series.

    Examples
    --------
    >>> EpisodeEvent(0, "pump-1", "open", 10.0, 10.0, 2.5).event
    'open'
    """

    row: int  # index of the causing row in the batch given to EpisodeTracker.update
    series_id: str
    event: Literal["open", "close"]
    ts: float  # ts of the causing row
    episode_start_ts: float  # ts of the row that opened the episode
    peak_score: float  # max score of the episode up to and including this row


@dataclass(slots=True)
class _State:
    """A series that is in an episode (``open``) or cooling down after one."""

    open: bool
    start_ts: float
    peak: float
    n_below: int  # consecutive rows below the close level (open only)
    cooldown_left: int  # rows that still cannot open an episode (closed only)
    # closed by settling while its score was still up: until a row below the close level, a
    # new episode opens only on a row that is not settled
    waiting: bool = False


# A _State of six slots: the object and its boxed floats and ints (measured ~180 B for five).
_STATE_BYTES = 200


class EpisodeTracker(KeyedState):
    """Turns a per-series score stream into open/close events of alert episodes.

    Parameters
    ----------
    hysteresis : float
        In ``(0, 1]``; an episode counts rows below ``threshold * hysteresis`` toward closing.
    close_after : int
        ``>= 1``; consecutive low rows that close an episode.
    cooldown : int
        ``>= 0``; rows of a series after a close during which no new episode opens.

    Examples
    --------
    >>> import numpy as np
    >>> t = EpisodeTracker(close_after=1, cooldown=1)
    >>> ev = t.update(["a", "b"], np.array([0.0, 0.0]), np.array([2.0, 0.5]), 1.0)
    >>> [(e.series_id, e.event) for e in ev], t.open_series()
    ([('a', 'open')], ('a',))
    >>> ev = t.update(["a", "a", "a"], np.array([1.0, 2.0, 3.0]), np.array([0.1, 5.0, 5.0]), 1.0)
    >>> [(e.row, e.event, e.peak_score) for e in ev]
    [(0, 'close', 2.0), (2, 'open', 5.0)]
    """

    STATE_BYTES = _STATE_BYTES

    def __init__(self, hysteresis: float = 0.9, close_after: int = 3, cooldown: int = 0) -> None:
        if not 0.0 < hysteresis <= 1.0:
            raise ConfigError(f"EpisodeTracker: hysteresis must be in (0, 1], got {hysteresis!r}")
        if close_after < 1 or cooldown < 0:
            raise ConfigError(
                f"EpisodeTracker: need close_after >= 1 and cooldown >= 0, "
                f"got {close_after!r} and {cooldown!r}"
            )
        self.hysteresis = hysteresis
        self.close_after = close_after
        self.cooldown = cooldown
        # only series in an episode or cooling down have state; every other series is idle
        self._state: dict[str, _State] = {}

    def update(
        self,
        keys: Sequence[str],
        ts: npt.ArrayLike,
        scores: npt.ArrayLike,
        threshold: float | npt.ArrayLike,
        may_open: npt.ArrayLike | None = None,
        settled: npt.ArrayLike | None = None,
    ) -> list[EpisodeEvent]:
        """Feed rows in order and return the events they cause (in row order).

        Unlike the other mutators this one returns a value: the events.

        Parameters
        ----------
        keys : sequence of str, length n
            Series id of each row.
        ts : array_like, shape (n,)
            Epoch seconds of each row.
        scores : array_like, shape (n,)
            Finite, non-negative smoothed scores.
        threshold : float or array_like, shape (n,)
            Open threshold, one for all rows or one per row.
        may_open : array_like of bool, shape (n,), optional
            Where False, a row at the threshold does not open an episode (the novelty gate:
            it keeps an open episode open as usual). None: every row may open one.
        settled : array_like of bool, shape (n,), optional
            Where True, the row's newest point looks normal again: it counts toward closing an
            open episode as a row below the close level does. None: no row is settled.

        Returns
        -------
        list of EpisodeEvent

        Examples
        --------
        >>> import numpy as np
        >>> t = EpisodeTracker()
        >>> [e.event for e in t.update(["a"], np.array([5.0]), np.array([3.0]), 2.0)]
        ['open']
        >>> gated = EpisodeTracker().update(["b"] * 2, np.arange(2.0), np.full(2, 3.0), 2.0,
        ...                                 may_open=[False, True])
        >>> [(e.row, e.event) for e in gated]  # the first row met the threshold, not the gate
        [(1, 'open')]
        """
        n = len(keys)
        ts_a = np.asarray(ts, dtype=np.float64)
        sc = np.asarray(scores, dtype=np.float64)
        thr = np.asarray(threshold, dtype=np.float64)
        check_shape("EpisodeTracker.update ts", ts_a.shape, (n,))
        check_shape("EpisodeTracker.update scores", sc.shape, (n,))
        if thr.ndim != 0:
            check_shape("EpisodeTracker.update threshold", thr.shape, (n,))
        if not (np.isfinite(ts_a).all() and np.isfinite(sc).all() and np.isfinite(thr).all()):
            raise DataError("EpisodeTracker.update: non-finite ts, score or threshold")
        thr = np.broadcast_to(thr, (n,))
        hot = sc >= thr
        gate = None
        if may_open is not None:
            gate = np.asarray(may_open, dtype=bool)
            check_shape("EpisodeTracker.update may_open", gate.shape, (n,))
            hot &= gate
        done = None
        if settled is not None:
            done = np.asarray(settled, dtype=bool)
            check_shape("EpisodeTracker.update settled", done.shape, (n,))
        # Rows of idle series below the threshold change nothing: only series that are active
        # already or reach the threshold somewhere in this batch need the sequential pass.
        active = self._state.keys() | {keys[i] for i in np.flatnonzero(hot).tolist()}
        if not active:
            return []
        rows = [i for i, k in enumerate(keys) if k in active]
        ts_l, sc_l, thr_l = ts_a.tolist(), sc.tolist(), thr.tolist()
        gate_l = [True] * n if gate is None else gate.tolist()
        done_l = [False] * n if done is None else done.tolist()
        events: list[EpisodeEvent] = []
        for i in rows:
            ev = self._step(i, keys[i], ts_l[i], sc_l[i], thr_l[i], gate_l[i], done_l[i])
            if ev is not None:
                events.append(ev)
        return events

    def _step(
        self,
        row: int,
        key: str,
        ts: float,
        score: float,
        thr: float,
        may_open: bool,
        settled: bool,
    ) -> EpisodeEvent | None:
        st = self._state.get(key)
        if st is None:
            if score < thr or not may_open:
                return None
            self._state[key] = _State(True, ts, score, 0, 0)
            return EpisodeEvent(row, key, "open", ts, ts, score)
        low = score < thr * self.hysteresis
        if not st.open:  # cooling down, or closed by settling while the score is still up
            st.cooldown_left -= 1
            off_again = st.waiting and not settled and score >= thr and may_open
            if off_again and st.cooldown_left <= 0:  # the data is off again: a new episode
                self._state[key] = _State(True, ts, score, 0, 0)
                return EpisodeEvent(row, key, "open", ts, ts, score)
            st.waiting = st.waiting and not low
            if st.cooldown_left <= 0 and not st.waiting:
                del self._state[key]
            return None
        st.peak = max(st.peak, score)
        st.n_below = st.n_below + 1 if low or settled else 0
        if st.n_below < self.close_after:
            return None
        ev = EpisodeEvent(row, key, "close", ts, st.start_ts, st.peak)
        if self.cooldown > 0 or not low:
            st.open, st.n_below, st.cooldown_left = False, 0, self.cooldown
            st.waiting = not low
        else:
            del self._state[key]
        return ev

    def is_open(self, series_id: str) -> bool:
        """Whether the series is in an episode now.

        Examples
        --------
        >>> EpisodeTracker().is_open("nope")
        False
        """
        st = self._state.get(series_id)
        return st is not None and st.open

    def open_series(self) -> tuple[str, ...]:
        """Ids of the series in an episode now, sorted.

        Examples
        --------
        >>> import numpy as np
        >>> t = EpisodeTracker()
        >>> _ = t.update(["b", "a"], np.zeros(2), np.array([2.0, 2.0]), 1.0)
        >>> t.open_series()
        ('a', 'b')
        """
        return tuple(sorted(k for k, st in self._state.items() if st.open))

    def close(self, keys: Iterable[str] | None = None) -> list[tuple[str, float, float]]:
        """End the open episodes of these series (None: of every series) now, with no cooldown;
        returns (series, start ts, peak) of each, sorted by series.

        Examples
        --------
        >>> import numpy as np
        >>> t = EpisodeTracker()
        >>> _ = t.update(["a", "b"], np.zeros(2), np.array([2.0, 3.0]), 1.0)
        >>> t.close(["b", "zzz"]), t.is_open("a"), t.is_open("b")
        ([('b', 0.0, 3.0)], True, False)
        >>> t.close()
        [('a', 0.0, 2.0)]
        """
        wanted = self._state.keys() if keys is None else set(keys) & self._state.keys()
        closed = [(k, self._state[k].start_ts, self._state[k].peak) for k in sorted(wanted)]
        closed = [c for c in closed if self._state[c[0]].open]
        for k, _, _ in closed:
            del self._state[k]
        return closed

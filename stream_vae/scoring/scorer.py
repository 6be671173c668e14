"""The streaming scorer: hybrid score → per-series EMA → threshold → alert episodes.

The threshold is the calibrated one (``static``), or each series' own streaming threshold
(:class:`~stream_vae.scoring.spot.StreamingThreshold`), which starts from it. With a novelty
gate (:class:`~stream_vae.scoring.novelty.SeriesNovelty`), a crossing opens an episode only
where the score also rises above the series' recent maximum.

Pure and stateful per series; the service, the offline CLI and evaluation all call
:meth:`Scorer.update` with the windows' keys, timestamps and the model's :class:`ScoreParts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.state import SeriesState
from ..errors import check_shape
from .alerts import Alert, alert_id, top_features_many
from .clusters import EpisodeClusters
from .ema import SeriesEMA
from .episodes import EpisodeEvent, EpisodeTracker
from .hybrid import HybridScore, ScoreParts
from .novelty import SeriesNovelty
from .quality import QualityEvent, QualityMonitor, StaleMonitor
from .shaping import AlertShaper
from .spot import StreamingThreshold
from .threshold import newest_point_error

__all__ = ["ScoredBatch", "Scorer"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """Per-window results of one :meth:`Scorer.update` call, plus the alert events it caused."""

    keys: tuple[str, ...]
    ts: F64  # (n,)
    raw: F64  # (n,) hybrid score before smoothing
    smoothed: F64  # (n,) per-series EMA of raw: what the threshold applies to
    recon: F64  # (n,) normalised reconstruction component
    latent: F64  # (n,) normalised latent component
    threshold: F64  # (n,) the threshold each row met (the calibrated one, unless streaming)
    alerts: tuple[Alert, ...]
    linear: F64 | None = None  # (n,) normalised linear residual, when the model has one
    # (n, d) the model's value of each window's newest point, in the data's units
    expected: npt.NDArray[np.float32] | None = None
    # alert opens this batch did not publish, by reason ("budget", "incident"): counted, never
    # dropped silently
    suppressed: dict[str, int] = field(default_factory=dict)
    # (n,) whether each window's newest point looks normal again (alerts.close_on_settle)
    settled: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def is_alert(self) -> npt.NDArray[np.bool_]:
        return self.smoothed >= self.threshold


class Scorer:
    """Turns model outputs for windows of many series into scores and alert events."""

    def __init__(
        self,
        hybrid: HybridScore,
        threshold: float,
        feature_names: Sequence[str],
        model_version: str,
        *,
        ema_beta: float = 0.5,
        hysteresis: float = 0.9,
        close_after: int = 3,
        cooldown: int = 0,
        top_k: int = 3,
        streaming: StreamingThreshold | None = None,
        quality: QualityMonitor | None = None,
        shaper: AlertShaper | None = None,
        stale: StaleMonitor | None = None,
        clusters: EpisodeClusters | None = None,
        novelty: SeriesNovelty | None = None,
        novelty_gate: float = 0.0,
        settle: tuple[float, npt.NDArray[np.floating[Any]]] | None = None,
    ) -> None:
        self.hybrid = hybrid
        self.threshold = threshold
        self.feature_names = tuple(feature_names)
        self._feature_index = {f: i for i, f in enumerate(self.feature_names)}
        self.model_version = model_version
        self.ema_beta = ema_beta
        self.hysteresis = hysteresis
        self.close_after = close_after
        self.cooldown = cooldown
        self.top_k = top_k
        # None: every row meets the calibrated threshold
        self.streaming = streaming
        # None: no data-quality alerts (flatline, out_of_range) beside the anomaly ones
        self.quality = quality
        # None: every alert event is published as it comes (no incidents, no budget)
        self.shaper = shaper
        # None: no alert for a series that falls silent
        self.stale = stale
        # None: episodes are not grouped into recurring kinds
        self.clusters = clusters
        # None: every crossing of the threshold opens an episode; else only a crossing whose
        # novelty reaches novelty_gate (a recurring high alerts once per novelty window)
        self.novelty = novelty
        self.novelty_gate = novelty_gate
        # None: an episode closes on its score alone; else (level, features' scale): also when
        # the newest point's error is below the level for close_after windows running
        self.settle = None if settle is None else (settle[0], np.asarray(settle[1], np.float64))
        self._cluster_of: dict[str, tuple[str, int]] = {}  # series -> its open episode's kind
        self._ema = SeriesEMA(ema_beta)
        self._episodes = EpisodeTracker(hysteresis, close_after, cooldown)

    def update(
        self,
        keys: Sequence[str],
        ts: npt.ArrayLike,
        parts: ScoreParts,
        windows: npt.NDArray[np.floating[Any]] | None = None,
    ) -> ScoredBatch:
        """Score n windows in arrival order; returns scores and the open/close events caused.
        With the raw ``windows`` (n, W, c) the data-quality checks run on them too."""
        n = len(parts)
        ts_arr = np.asarray(ts, dtype=np.float64)
        check_shape("Scorer.update ts", ts_arr.shape, (n,))
        check_shape("Scorer.update parts", parts.recon_features.shape, (n, len(self.feature_names)))
        keys = tuple(keys)
        if len(keys) != n:
            raise ValueError(f"Scorer.update: {len(keys)} keys for {n} windows")
        h = self.hybrid.raw(parts)
        smoothed = np.asarray(self._ema.update(keys, h.raw), dtype=np.float64)
        thr = (
            np.full(n, self.threshold)
            if self.streaming is None
            else self.streaming.update(keys, smoothed)
        )
        may_open = (
            None
            if self.novelty is None
            else self.novelty.update(keys, smoothed) >= self.novelty_gate
        )
        settled = (
            None
            if self.settle is None or parts.expected is None or windows is None
            else newest_point_error(windows, parts.expected, self.settle[1]) < self.settle[0]
        )
        events = self._episodes.update(keys, ts_arr, smoothed, thr, may_open, settled)
        # Attribution only for the rows that raised an event: most batches raise none.
        rel = self.hybrid.feature_errors(parts.take(np.array([e.row for e in events], np.intp)))
        tops = top_features_many(rel, self.feature_names, self.top_k)
        kinds = self._kinds(events, rel)
        alerts = tuple(
            Alert(
                alert_id=alert_id(e.series_id, e.episode_start_ts, self.model_version),
                series_id=e.series_id,
                event=e.event,
                ts=float(ts_arr[e.row]),
                episode_start_ts=float(e.episode_start_ts),
                score=float(smoothed[e.row]),
                threshold=float(thr[e.row]),
                raw_score=float(h.raw[e.row]),
                recon_score=float(h.recon[e.row]),
                latent_score=float(h.latent[e.row]),
                peak_score=float(e.peak_score),
                top_features=tops[i],
                model_version=self.model_version,
                expected=self._expected(e.row, tops[i], parts, windows),
                cluster=kinds[i][0],
                cluster_count=kinds[i][1],
            )
            for i, e in enumerate(events)
        )
        found_events: list[QualityEvent] = []
        if self.quality is not None and windows is not None:
            found_events += self.quality.update(keys, ts_arr, windows)
        if self.stale is not None:
            found_events += self.stale.update(keys, ts_arr)
        if found_events:
            # in row order: a quality event and an anomaly event of one row keep that order
            found = [(e.row, self._quality_alert(e, parts, windows)) for e in found_events]
            rows = [e.row for e in events] + [r for r, _ in found]
            merged = [*alerts, *(a for _, a in found)]
            alerts = tuple(merged[i] for i in np.argsort(rows, kind="stable"))
        suppressed: dict[str, int] = {}
        if self.shaper is not None:
            before = dict(self.shaper.counters)
            alerts = self.shaper.shape(alerts, len(self._ema))
            suppressed = {
                k: v - before[k] for k, v in self.shaper.counters.items() if v > before[k]
            }
        return ScoredBatch(
            keys,
            ts_arr,
            h.raw,
            smoothed,
            h.recon,
            h.latent,
            thr,
            alerts,
            h.linear,
            parts.expected,
            suppressed,
            settled,
        )

    @property
    def ticks(self) -> bool:
        """Whether :meth:`tick` can raise anything (``stale`` by the wall clock)."""
        return self.stale is not None and self.stale.clock is not None

    def tick(self) -> tuple[Alert, ...]:
        """What time alone raises, with no window to score: the ``stale`` opens of series
        silent too long by the wall clock (``stale`` with a clock; else nothing). The service
        calls it after every poll, idle or not, so that a whole fleet falling silent is seen."""
        if self.stale is None or self.stale.clock is None:  # not self.ticks: for the type checker
            return ()
        alerts = tuple(self._quality_alert(e, None, None) for e in self.stale.check())
        return (
            alerts
            if self.shaper is None or not alerts
            else self.shaper.shape(alerts, len(self._ema))
        )

    def close_wall_stale(self, ts: float, reason: str, series: Iterable[str]) -> tuple[Alert, ...]:
        """Close the wall-clock ``stale`` episodes of ``series`` (their partitions were revoked).
        Replaying records rebuilds every other kind of episode at the next owner, with the same
        ``alert_id``; a silence by the wall clock is not in the records, so its episode would be
        left open for good. The next owner opens its own if the series stays silent."""
        if self.stale is None or self.stale.clock is None:
            return ()
        closes = self._quality_closes(
            ts, reason, [("stale", s, start) for s, start in self.stale.close(series)]
        )
        return closes if self.shaper is None else self.shaper.shape(closes, len(self._ema))

    def _kinds(self, events: Sequence[EpisodeEvent], rel: F64) -> list[tuple[str, int]]:
        """Each event's recurring kind: an open is assigned by its attribution, a close says
        its open's ("", 0 without clustering)."""
        if self.clusters is None:
            return [("", 0)] * len(events)
        out = []
        for i, e in enumerate(events):
            if e.event == "open":
                self._cluster_of[e.series_id] = self.clusters.assign(rel[i])
                out.append(self._cluster_of[e.series_id])
            else:
                out.append(self._cluster_of.pop(e.series_id, ("", 0)))
        return out

    def _expected(
        self,
        row: int,
        top: tuple[tuple[str, float], ...],
        parts: ScoreParts | None,
        windows: npt.NDArray[np.floating[Any]] | None,
    ) -> tuple[tuple[str, float, float], ...]:
        """(feature, observed, expected) of the row's newest point, for its top features."""
        if parts is None or parts.expected is None or windows is None:
            return ()
        index = self._feature_index
        return tuple(
            (f, float(windows[row, -1, index[f]]), float(parts.expected[row, index[f]]))
            for f, _ in top
        )

    def _quality_alert(
        self,
        e: QualityEvent,
        parts: ScoreParts | None,
        windows: npt.NDArray[np.floating[Any]] | None,
    ) -> Alert:
        named = tuple((self.feature_names[f], round(1.0 / len(e.features), 4)) for f in e.features)
        return Alert(
            alert_id=alert_id(e.series_id, e.episode_start_ts, self.model_version, e.kind),
            series_id=e.series_id,
            event=e.event,
            ts=e.ts,
            episode_start_ts=e.episode_start_ts,
            score=e.severity,
            threshold=e.limit,
            raw_score=e.severity,
            recon_score=float("nan"),
            latent_score=float("nan"),
            peak_score=e.severity,
            top_features=named[: self.top_k],
            model_version=self.model_version,
            kind=e.kind,
            expected=self._expected(e.row, named[: self.top_k], parts, windows),
        )

    def open_series(self, *, all_kinds: bool = False) -> frozenset[str]:
        """Series in an anomaly episode now; with ``all_kinds``, in an episode of any kind.

        The retraining reservoir keeps the windows of series not in an anomaly episode: a
        regime change puts values out of the training range, and those windows are the new
        normal it must learn. What is pinned for replay is every kind's episodes."""
        opened = frozenset(self._episodes.open_series())
        if not all_kinds:
            return opened
        if self.quality is not None:
            opened = opened.union(*self.quality.open_series().values())
        if self.stale is not None:
            opened = opened.union(self.stale.open_series())
        return opened

    def close(
        self, ts: float, reason: str, series: Iterable[str] | None = None
    ) -> tuple[Alert, ...]:
        """Close the open episodes of ``series`` (None: all) at stream time ``ts``, with a
        ``reason``: ``model_swap`` before this model is replaced (an episode belongs to the
        version that opened it, and its ``alert_id`` too), ``evicted`` when its series leaves
        the window store (idle, or over the series bound)."""
        series = None if series is None else list(series)  # read twice below
        closed = self._episodes.close(series)
        ratios = {} if self.streaming is None else self.streaming.ratios(s for s, _, _ in closed)
        closes = tuple(
            Alert(
                alert_id=alert_id(s, start, self.model_version),
                series_id=s,
                event="close",
                ts=ts,
                episode_start_ts=start,
                score=float("nan"),
                threshold=self.threshold * ratios.get(s, 1.0),
                raw_score=float("nan"),
                recon_score=float("nan"),
                latent_score=float("nan"),
                peak_score=peak,
                top_features=(),
                model_version=self.model_version,
                reason=reason,
                cluster=kind[0],
                cluster_count=kind[1],
            )
            for s, start, peak in closed
            for kind in [self._cluster_of.pop(s, ("", 0))]
        ) + self._close_quality(ts, reason, series)
        # a close whose open was suppressed is dropped, and an incident may close with them
        return closes if self.shaper is None else self.shaper.shape(closes, len(self._ema))

    def _close_quality(
        self, ts: float, reason: str, series: Iterable[str] | None
    ) -> tuple[Alert, ...]:
        opened = [] if self.quality is None else self.quality.close(series)
        if self.stale is not None:
            opened += [("stale", s, start) for s, start in self.stale.close(series)]
        return self._quality_closes(ts, reason, opened)

    def _quality_closes(
        self, ts: float, reason: str, opened: Iterable[tuple[str, str, float]]
    ) -> tuple[Alert, ...]:
        """Close events of data-quality episodes: (kind, series, start ts) each."""
        nan = float("nan")
        return tuple(
            Alert(
                alert_id=alert_id(s, start, self.model_version, kind),
                series_id=s,
                event="close",
                ts=ts,
                episode_start_ts=start,
                score=nan,
                threshold=nan,
                raw_score=nan,
                recon_score=nan,
                latent_score=nan,
                peak_score=nan,
                top_features=(),
                model_version=self.model_version,
                reason=reason,
                kind=kind,
            )
            for kind, s, start in opened
        )

    def carry(self, old: Scorer) -> None:
        """Take over the streaming thresholds and novelty history of the scorer this one
        replaces (a model swap: each series keeps where its threshold stood against the
        calibration, and its recent maximum in the new model's units)."""
        if self.streaming is not None and old.streaming is not None:
            self.streaming.carry(old.streaming)
        if self.novelty is not None and old.novelty is not None:
            self.novelty.carry(old.novelty, self.threshold / old.threshold)

    def _parts(self) -> tuple[SeriesState, ...]:
        optional = (self.streaming, self.quality, self.shaper, self.stale, self.novelty)
        return (self._ema, self._episodes, *(p for p in optional if p is not None))

    def series(self) -> frozenset[str]:
        return frozenset().union(*(p.series() for p in self._parts()))

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self._parts())

    def drop(self, keys: Iterable[str]) -> None:
        """Forget the state of these series (e.g. their partition was revoked)."""
        keys = list(keys)
        for p in self._parts():
            p.drop(keys)
        for k in keys:
            self._cluster_of.pop(k, None)

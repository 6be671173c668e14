"""When to retrain, and on which windows: the clean-data reservoir, the drift monitor and the
triggers, with no I/O and no clock (stream time only).

The service wraps it (:mod:`stream_vae.service.lifecycle`: the drift monitor in a thread, the
job in a worker process); the evaluator calls it inline, so that "retraining on" in a
benchmark is the service's policy, not a copy of it.

- :meth:`RetrainPolicy.offer` keeps a batch's clean windows (see ``reservoir.clean_mask``).
- :meth:`RetrainPolicy.on_drift` arms a retrain on a score drift event (an input drift event
  only with ``retrain.on_input_drift``).
- :meth:`RetrainPolicy.due` says when a job should start and hands over its sample: after a
  drift, once ``retrain.min_windows`` clean windows newer than the change are held (the new
  normal, not a mix); else every ``retrain.schedule_s`` stream seconds.
- :meth:`RetrainPolicy.rejected`: a drift job that did not promote is retried once
  ``min_windows`` newer clean windows are held (at most 3 times).
- :meth:`RetrainPolicy.swapped`: after a new version is installed, drift starts afresh.
- :meth:`RetrainPolicy.feedback`: windows of alerts people marked (false positives, confirmed)
  ride with every later job; ``feedback.retrain_after`` new false positives start one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..core.windows import ReadyWindows
from ..scoring.scorer import ScoredBatch, Scorer
from .drift import DriftEvent, DriftMonitor
from .feedback import FeedbackSet
from .reservoir import CleanReservoir, ReservoirSample, clean_mask

if TYPE_CHECKING:  # annotations only
    from ..config import DriftSettings, FeedbackSettings, RetrainSettings
    from ..storage.artifact import Artifact

__all__ = ["Job", "RetrainPolicy"]

# A rejected drift retrain is tried again on fresh data this many times, then the policy waits
# for the next drift event (an operator sees the rejections on the model-events topic).
_MAX_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Job:
    """A retrain to run now: why, and on which clean windows."""

    trigger: str  # "drift" | "schedule" | "feedback"
    sample: ReservoirSample
    drift: DriftEvent | None = None  # the event a drift job answers
    started_ts: float = 0.0  # stream time when it was due
    # windows of alerts marked as false positives (trained on) and confirmed (gated on)
    false_positives: npt.NDArray[np.float32] | None = None
    confirmed: npt.NDArray[np.float32] | None = None
    # how many alerts those windows came from, for the version's lineage
    n_false_positive_alerts: int = 0
    n_confirmed_alerts: int = 0
    # the alert each window came from (kept with the version: stream_vae.storage.registry)
    false_positive_ids: tuple[str, ...] = ()
    confirmed_ids: tuple[str, ...] = ()

    def feedback_windows(self) -> dict[str, tuple[tuple[str, ...], npt.NDArray[np.float32]]]:
        """Per verdict, the alert of each window and the windows, for the registry."""
        out = {}
        if self.false_positives is not None:
            out["false_positive"] = (self.false_positive_ids, self.false_positives)
        if self.confirmed is not None:
            out["confirmed"] = (self.confirmed_ids, self.confirmed)
        return out

    def feedback_counts(self) -> dict[str, int]:
        """What the job learns from people's verdicts, as the registry records it."""
        return {
            "false_positive_alerts": self.n_false_positive_alerts,
            "false_positive_windows": _n(self.false_positives),
            "confirmed_alerts": self.n_confirmed_alerts,
            "confirmed_windows": _n(self.confirmed),
        }


def _n(windows: npt.NDArray[np.float32] | None) -> int:
    return 0 if windows is None else len(windows)


class RetrainPolicy:
    """The retraining decisions of one deployment.

    Parameters
    ----------
    retrain
        The triggers, the reservoir's size and the fleet rule.
    monitor
        The drift monitor whose events arm a retrain (None: drift off; ``retrain.schedule_s``
        may still start jobs).
    seed
        Seeds the reservoir's sampling.
    feedback
        How many windows of marked alerts are kept, and how many false positives start a job.
    """

    def __init__(
        self,
        retrain: RetrainSettings,
        monitor: DriftMonitor | None = None,
        *,
        seed: int = 0,
        feedback: FeedbackSettings | None = None,
    ) -> None:
        r = retrain
        self.settings = retrain
        self.monitor = monitor
        cap = 4000 if feedback is None else feedback.max_windows
        self.retrain_after = None if feedback is None else feedback.retrain_after
        self.false_positives = FeedbackSet(cap)
        self.confirmed = FeedbackSet(cap)
        self._new_false_positives = 0  # since the last job
        self.reservoir = CleanReservoir(
            r.reservoir_windows, r.reservoir_buckets, r.bucket_s, seed=seed
        )
        self._armed: DriftEvent | None = None
        self._retry: tuple[float, int] | None = None  # (stream ts of the failed try, tries)
        self._last_job_ts: float | None = None  # stream time of the last job (or first batch)

    @classmethod
    def for_model(
        cls,
        artifact: Artifact,
        drift: DriftSettings,
        retrain: RetrainSettings,
        *,
        seed: int = 0,
        feedback: FeedbackSettings | None = None,
    ) -> RetrainPolicy:
        """The policy of a deployment serving ``artifact``: its drift monitor thins by the
        model's window and stride and watches its features."""
        monitor = (
            DriftMonitor.from_settings(
                drift,
                window=artifact.vae_config.window,
                stride=artifact.spec.window.stride,
                feature_names=artifact.feature_names,
                seed=seed,
            )
            if drift.enabled
            else None
        )
        return cls(retrain, monitor, seed=seed, feedback=feedback)

    @property
    def armed(self) -> DriftEvent | None:
        """The drift event a retrain waits on, if any."""
        return self._armed

    def offer(
        self, ready: ReadyWindows, scored: ScoredBatch, scorer: Scorer, n_series: int
    ) -> None:
        """Keep the clean windows of one scored batch (``ready`` and ``scored`` row-aligned)."""
        if not len(scored):
            return
        r = self.settings
        clean = clean_mask(
            scored.keys,
            scored.smoothed,
            scorer.threshold,
            scorer.hysteresis,
            scorer.open_series(),
            fleet_change_share=r.fleet_change_share,
            fleet_min_series=r.fleet_min_series,
            n_series=n_series,
        )
        self.reservoir.add(ready.keys, ready.ts, ready.values, clean)

    def window_means(self, ready: ReadyWindows) -> npt.NDArray[np.float32] | None:
        """What input drift watches: each window's per-feature mean (n, d) (not the calendar
        channels, which cycle by design); None when off."""
        if self.monitor is None or not self.monitor.feature_names:
            return None
        d = len(self.monitor.feature_names)
        means: npt.NDArray[np.float32] = ready.values[..., :d].mean(axis=1)  # (n, W, c) → (n, d)
        return means

    def watch(self, ready: ReadyWindows, scored: ScoredBatch) -> list[DriftEvent]:
        """Drift monitoring inline (the evaluator): update the monitor, arm on its events."""
        if self.monitor is None or not len(scored):
            return []
        events = self.monitor.update(scored.keys, scored.ts, scored.raw, self.window_means(ready))
        for e in events:
            self.on_drift(e)
        return events

    def on_drift(self, event: DriftEvent) -> None:
        r = self.settings
        if (event.kind == "score" and r.on_drift) or (event.kind == "input" and r.on_input_drift):
            if self._retry is not None and self._armed is not None:
                # A rejected job's retry already waits for min_windows windows newer than the
                # failed try; the monitor, restarted after its event, fires again on the same
                # unresolved change, and re-arming on that would push the retry out each time
                # (in tests/test_lifecycle.py, past the end of the stream).
                return
            self._armed = event

    def feedback(
        self, verdict: str, alert_id: str, windows: npt.NDArray[np.float32], *, new: bool = True
    ) -> None:
        """Windows (m, W, d) of an alert a person marked ``false_positive`` or ``confirmed``;
        ``new=False`` for verdicts a version already learned from (read back from the registry:
        they do not start a job)."""
        if verdict == "false_positive":
            self.confirmed.discard(alert_id)  # the newest verdict on an alert holds
            self.false_positives.add(alert_id, windows)
            self._new_false_positives += int(new)
        elif verdict == "confirmed":
            self.false_positives.discard(alert_id)
            self.confirmed.add(alert_id, windows)

    def marked(self, alert_id: str) -> npt.NDArray[np.float32] | None:
        """The windows of an alert already marked (a person changing the verdict), if held."""
        w = self.false_positives.get(alert_id)
        return self.confirmed.get(alert_id) if w is None else w

    def due(self, now_ts: float) -> Job | None:
        """A job to start now, or None; ``now_ts`` is the stream time of the newest window."""
        r = self.settings
        if self._armed is not None:
            since = self._armed.since_ts
            # a retry waits for min_windows windows newer than the failed try
            fresh_since = since if self._retry is None else max(since, self._retry[0])
            if self.reservoir.n_since(fresh_since) < r.min_windows:
                return None
            event, self._armed = self._armed, None
            return self._job("drift", self.reservoir.sample(since), now_ts, event)
        if len(self.reservoir) < r.min_windows:
            return None
        if self.retrain_after is not None and self._new_false_positives >= self.retrain_after:
            return self._job("feedback", self.reservoir.sample(), now_ts)
        if r.schedule_s is None:
            return None
        if self._last_job_ts is None:
            self._last_job_ts = now_ts  # the schedule counts from the first full reservoir
            return None
        if now_ts - self._last_job_ts < r.schedule_s:
            return None
        return self._job("schedule", self.reservoir.sample(), now_ts)

    def _job(
        self, trigger: str, sample: ReservoirSample, now_ts: float, drift: DriftEvent | None = None
    ) -> Job:
        """A job on ``sample``, with every marked alert's windows (kept for later jobs too:
        a later retrain must not forget them)."""
        self._last_job_ts = now_ts
        self._new_false_positives = 0
        return Job(
            trigger,
            sample,
            drift,
            now_ts,
            self.false_positives.windows(),
            self.confirmed.windows(),
            self.false_positives.n_alerts,
            self.confirmed.n_alerts,
            self.false_positives.alert_ids(),
            self.confirmed.alert_ids(),
        )

    def rejected(self, job: Job) -> bool:
        """A drift job's candidate was rejected (or the job failed): the drift is still there
        (the monitor restarted after its event, so it will not fire again for this change), so
        try again on more data — up to ``_MAX_RETRIES`` times. Returns whether it re-armed."""
        if job.drift is None or self._armed is not None:
            return False
        tries = 1 if self._retry is None else self._retry[1] + 1
        if tries > _MAX_RETRIES:
            self._retry = None
            return False
        self._armed, self._retry = job.drift, (job.started_ts, tries)
        return True

    def disarm(self) -> None:
        self._armed = None
        self._retry = None

    def swapped(self) -> None:
        """A new version is live: its scores are on a new scale, so drift starts afresh. (The
        service disarms on its loop and resets the monitor in the monitor's thread.)"""
        self.disarm()
        if self.monitor is not None:
            self.monitor.reset()

"""The model's life inside the service: drift → retrain → registry → hot swap.

- Every scored batch feeds the clean-data reservoir (on the loop: a masked copy) and the drift
  monitor (in its own thread: ~200 µs per KS test; the loop never waits for it).
- A score drift event arms a retrain: the job starts once the reservoir holds
  ``retrain.min_windows`` clean windows newer than the change (the new normal, not a mix);
  ``retrain.schedule_s`` starts one on a timer (stream time). The job runs in a spawned worker
  process with its own torch thread budget (:func:`stream_vae.lifecycle.job.job_main`), so scoring
  keeps its threads and the loop its GIL; one job at a time.
- The job publishes its candidate to the registry and promotes it if the gate passed. Every
  replica polls the registry's pointer (``registry.poll_s``), loads a new version off the loop
  and hands it to the service, which swaps between batches (:meth:`take_swap`).
- Drift events and job outcomes are queued for the ``model-events`` topic (:meth:`take_events`).
- Feedback: the windows of each recent anomaly episode are held by alert id (:meth:`hold`); a
  verdict read from the feedback topic (:meth:`on_feedback`) hands them to the policy, which
  trains on false positives and gates on confirmed anomalies in every later job, and starts
  one after ``feedback.retrain_after`` false positives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..core.windows import ReadyWindows
from ..errors import StreamVAEError
from ..lifecycle.drift import DriftEvent, DriftMonitor
from ..lifecycle.feedback import AlertWindows, Feedback
from ..lifecycle.job import run_in_child, save_job
from ..lifecycle.policy import Job, RetrainPolicy
from ..model.detector import Detector
from ..runtime.live import DetectorOptions, build_detector
from ..scoring.alerts import Alert
from ..scoring.scorer import ScoredBatch, Scorer
from ..storage.artifact import Artifact
from ..storage.registry import Registry
from .metrics import ServiceMetrics

__all__ = ["Lifecycle", "Swap"]

log = logging.getLogger(__name__)

# Scores per batch fed to the score histogram (quantiles on the dashboard): a sample is enough.
_HISTOGRAM_SAMPLE = 16


class RetrainFailedError(StreamVAEError):
    """The retraining job raised, or its worker process died without an answer."""


@dataclass(frozen=True, slots=True)
class Swap:
    """A promoted version, loaded and ready: the service installs it between two batches."""

    artifact: Artifact
    detector: Detector  # built off the event loop
    # the verdicts it learned from (its registry entry's feedback.npz), read off the loop too
    feedback: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)


class Lifecycle:
    """Owns the drift monitor, the reservoir, the retraining job and the registry watch."""

    def __init__(
        self,
        settings: Settings,
        artifact: Artifact,
        metrics: ServiceMetrics,
        registry: Registry | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.live_version = artifact.version
        self._artifact = artifact  # published at start if the registry lacks it (see __aenter__)
        self.policy = RetrainPolicy.for_model(
            artifact,
            settings.drift,
            settings.retrain,
            seed=settings.service.seed,
            feedback=settings.feedback,
        )
        fb = settings.feedback
        # held only where verdicts can arrive
        self.alert_windows = (
            AlertWindows(fb.windows_per_alert, fb.alerts_held, fb.lead_windows)
            if settings.kafka.feedback_topic is not None
            else None
        )
        self._last_ts: float | None = None  # stream time of the newest window observed
        # The drift monitor's per-series state, reached through the drift thread.
        self.drift_state = _DriftState(self)
        self._drift_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-vae-drift")
        self._drift_futures: deque[Future[list[DriftEvent]]] = deque()
        self._events: list[dict[str, Any]] = []
        self._swap: Swap | None = None
        self._taken: Swap | None = None  # the swap handed to the service, until it installs it
        self._refused: set[str] = set()  # versions the service would not swap to
        self._proc: multiprocessing.process.BaseProcess | None = None  # the job's worker
        self._job: asyncio.Task[None] | None = None
        self._poll: asyncio.Task[None] | None = None
        self._poll_now = asyncio.Event()
        # (wall-clock start, end) of each finished job: tests and benchmarks measure what
        # scoring did meanwhile
        self.job_times: list[tuple[float, float]] = []

    # -- on the loop, once per batch --------------------------------------------------------
    def observe(
        self, ready: ReadyWindows, scored: ScoredBatch, scorer: Scorer, n_series: int
    ) -> None:
        """Feed the reservoir and the drift monitor with one scored batch; start a job if due."""
        if not len(scored):
            return
        self.policy.offer(ready, scored, scorer, n_series)
        self.metrics.set_reservoir_windows(len(self.policy.reservoir))
        self.metrics.observe_raw_scores(scored.raw[:: max(1, len(scored) // _HISTOGRAM_SAMPLE)])
        self._collect_drift()
        monitor = self.policy.monitor
        if monitor is not None:
            means = self.policy.window_means(ready)
            self._drift_futures.append(
                self._drift_exec.submit(monitor.update, scored.keys, scored.ts, scored.raw, means)
            )
        self._last_ts = float(scored.ts.max())
        self._maybe_start_job()

    def _maybe_start_job(self) -> None:
        if self._last_ts is None or self.registry is None:
            return
        if self._job is None or self._job.done():
            job = self.policy.due(self._last_ts)
            if job is not None:
                self._job = asyncio.create_task(self._run_job(job))

    # -- feedback ---------------------------------------------------------------------------
    def hold(self, ready: ReadyWindows, alerts: Sequence[Alert]) -> None:
        """Hold the windows of the series in an anomaly episode (``alerts``: every event the
        batch caused, closes forced by a swap or an eviction included)."""
        if self.alert_windows is None:
            return
        opened = {
            a.series_id: (a.alert_id, a.episode_start_ts)
            for a in alerts
            if a.kind == "anomaly" and a.event == "open"
        }
        closed = {a.series_id: a.ts for a in alerts if a.kind == "anomaly" and a.event == "close"}
        self.alert_windows.hold(ready.keys, ready.ts, ready.values, opened=opened, closed=closed)

    def on_feedback(self, fb: Feedback) -> bool:
        """A verdict on an alert; returns whether its windows were held here."""
        windows = None if self.alert_windows is None else self.alert_windows.take(fb.alert_id)
        if windows is None:  # marked before: the newest verdict holds
            windows = self.policy.marked(fb.alert_id)
        outcome = "applied" if windows is not None else "unknown_alert"
        self.metrics.add_feedback(fb.verdict, outcome)
        log.info(
            "feedback %s on alert %s by %s: %s",
            fb.verdict,
            fb.alert_id,
            fb.by or "-",
            "its windows were not held here" if windows is None else f"{len(windows)} windows",
            extra={"alert_id": fb.alert_id, "model_version": self.live_version},
        )
        if windows is None:
            return False
        self.policy.feedback(fb.verdict, fb.alert_id, windows)
        p = self.policy
        self.metrics.set_feedback_windows(len(p.false_positives), len(p.confirmed))
        self._maybe_start_job()
        return True

    def _collect_drift(self) -> None:
        while self._drift_futures and self._drift_futures[0].done():
            for e in self._drift_futures.popleft().result():
                self._on_drift(e)

    def _on_drift(self, e: DriftEvent) -> None:
        log.warning(
            "drift (%s) on %s at ts %.0f (p=%.2g, evidence since ts %.0f), model %s",
            e.kind,
            e.channel,
            e.ts,
            e.p_value,
            e.since_ts,
            self.live_version,
        )
        self.metrics.add_drift_event(e.kind)
        self._events.append({**e.to_dict(), "model_version": self.live_version})
        self.policy.on_drift(e)

    # -- the job, in a worker process -------------------------------------------------------
    async def _run_job(self, job: Job) -> None:
        sample, trigger = job.sample, job.trigger
        assert self.registry is not None
        self.metrics.set_retraining(True)
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="stream-vae-retrain-") as tmp:
            path = await asyncio.to_thread(save_job, job, Path(tmp) / "job.npz")
            spec = {
                "registry_root": str(self.registry.root),
                "sample_path": str(path),
                "settings": self.settings.model_dump(mode="json", exclude={"kafka"}),
                "trigger": trigger,
                "live_version": self.live_version,
            }
            log.info(
                "retraining (%s) on %d clean windows (%d of alerts marked as false positives) "
                "from %s",
                trigger,
                len(sample),
                0 if job.false_positives is None else len(job.false_positives),
                self.live_version,
            )
            try:
                outcome = await self._in_worker(spec)
            except Exception as exc:  # a failed job must not stop scoring; it is reported
                log.exception("retraining (%s) failed", trigger)
                outcome = {"event": "failed", "trigger": trigger, "error": str(exc)[:500]}
            finally:
                self.metrics.set_retraining(False)
        t1 = time.time()
        outcome["job_seconds"] = round(t1 - t0, 2)
        self.job_times.append((t0, t1))
        self.metrics.add_model_event(outcome["event"])
        self._events.append(outcome)
        if outcome["event"] == "promoted":
            self._poll_now.set()
        elif self.policy.rejected(job):
            log.info("retraining (%s) will be tried again on newer clean windows", trigger)

    async def _in_worker(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one job in its own spawned process (spawn, not fork: the parent holds threads —
        torch's, the drift monitor's, aiokafka's) and wait for its answer on a pipe. The loop
        wakes when the pipe is readable: an answer, or end-of-file when the process died
        without one (an OOM kill, a SIGKILL), which fails the job instead of stalling
        retraining for good."""
        ctx = multiprocessing.get_context("spawn")
        answer, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=run_in_child, args=(spec, child), name="stream-vae-retrain")
        proc.start()
        child.close()  # the child holds the only write end: its death closes the pipe
        self._proc = proc
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(answer.fileno(), readable.set)
        try:
            await readable.wait()
            try:
                ok, payload = answer.recv()
            except EOFError:
                await asyncio.to_thread(proc.join, 5.0)  # off the loop: it holds the heartbeat
                raise RetrainFailedError(
                    f"the retrain worker (pid {proc.pid}) died without an answer, exit code "
                    f"{proc.exitcode} (a negative code is the signal that killed it)"
                ) from None
            if not ok:
                raise RetrainFailedError(str(payload))
            assert isinstance(payload, dict)
            return payload
        finally:
            loop.remove_reader(answer.fileno())
            answer.close()
            if not readable.is_set():  # cancelled (shutdown): an unfinished job never promoted
                proc.terminate()
                await asyncio.to_thread(proc.join, 5.0)
            # After an answer the worker exits by itself: it is not waited for here (the outcome
            # must reach the events before the registry watch swaps); __aexit__ joins it.

    # -- watching the registry --------------------------------------------------------------
    async def _watch(self) -> None:
        assert self.registry is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self.settings.registry.poll_s)
            self._poll_now.clear()
            try:
                current = await asyncio.to_thread(self.registry.current)
                if current is None or current == self.live_version or current in self._refused:
                    continue
                if self._swap is not None and self._swap.artifact.version == current:
                    continue
                self._swap = await asyncio.to_thread(self._load, current)
                log.info("model %s promoted in the registry; swapping at the next batch", current)
            except Exception:  # a bad version or a flaky mount: keep scoring with the live one
                log.exception("cannot load the registry's current version")

    def _load(self, version: str) -> Swap:
        assert self.registry is not None
        art = self.registry.load(version)
        detector = build_detector(art, DetectorOptions.from_settings(self.settings.service))
        return Swap(art, detector, self.registry.feedback_windows(version))

    def _restore_feedback(self, found: dict[str, list[tuple[str, Any]]]) -> None:
        """Verdicts a version learned from, back into the policy's sets: later retrains keep
        learning them, across restarts and on every replica that swaps to it."""
        for verdict, alerts in found.items():
            for alert_id, windows in alerts:
                self.policy.feedback(verdict, alert_id, windows, new=False)
        if found:
            p = self.policy
            self.metrics.set_feedback_windows(len(p.false_positives), len(p.confirmed))

    def take_swap(self) -> Swap | None:
        """The loaded promoted version, once; None when there is nothing to swap to."""
        swap, self._swap = self._swap, None
        self._taken = swap
        return swap

    def refused(self, version: str, reason: str) -> None:
        """The service cannot swap to ``version`` (other features or window): not again."""
        self._refused.add(version)
        self._events.append({"event": "refused", "version": version, "reason": reason})

    def swapped(self, old: str, new: str, n_closed: int) -> None:
        """The service installed ``new``: the score scale changed, so drift starts afresh."""
        self.live_version = new
        if self._taken is not None and self._taken.artifact.version == new:
            self._restore_feedback(self._taken.feedback)
            self._taken = None
        self.policy.disarm()
        if self.policy.monitor is not None:
            # after the updates already queued (the drift thread runs them in order)
            self._drift_futures.append(self._drift_exec.submit(_reset, self.policy.monitor))
        self.metrics.add_model_event("swapped")
        self._events.append(
            {"event": "swapped", "version": new, "previous": old, "closed_episodes": n_closed}
        )

    def take_events(self) -> list[dict[str, Any]]:
        """Events for the ``model-events`` topic since the last call."""
        self._collect_drift()
        events, self._events = self._events, []
        return events

    # -- start / stop -----------------------------------------------------------------------
    async def __aenter__(self) -> Lifecycle:
        if self.registry is not None:
            # A service started with --model and a registry: the retrain job warm-starts from
            # the live version, so the registry must hold it (published, not promoted).
            try:
                await asyncio.to_thread(self.registry.publish, self._artifact, trigger="initial")
            except OSError as exc:  # e.g. mounted read-only: scoring and swaps still work
                log.warning("cannot publish %s to the registry: %s", self.live_version, exc)
            try:
                found = await asyncio.to_thread(self.registry.feedback_windows, self.live_version)
            except (OSError, StreamVAEError) as exc:
                log.warning("cannot read %s's feedback windows: %s", self.live_version, exc)
            else:
                self._restore_feedback(found)
            self._poll = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._poll, self._job):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()  # an unfinished job is abandoned: it never promoted
            await asyncio.to_thread(self._proc.join, 5.0)
        self._drift_exec.shutdown(wait=True)


class _DriftState:
    """The drift monitor as a :class:`~stream_vae.core.state.SeriesState`: it is updated in the
    drift thread, so a drop is queued there too (after the updates already queued)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    def drop(self, series: Iterable[str]) -> None:
        lc = self._lifecycle
        if lc.policy.monitor is not None:
            fut = lc._drift_exec.submit(_drop, lc.policy.monitor, list(series))
            lc._drift_futures.append(fut)

    def series(self) -> frozenset[str]:
        # Read on the loop while the drift thread may add keys: frozenset(dict) copies the keys
        # in one C call under the GIL (str keys, no Python code runs), so it cannot see a dict
        # change size mid-copy. A diagnostic; nothing on the hot path depends on it.
        m = self._lifecycle.policy.monitor
        return frozenset() if m is None else m.series()

    def nbytes(self) -> int:
        m = self._lifecycle.policy.monitor
        return 0 if m is None else m.nbytes()


def _drop(monitor: DriftMonitor, series: list[str]) -> list[DriftEvent]:
    monitor.drop(series)
    return []


def _reset(monitor: DriftMonitor) -> list[DriftEvent]:
    monitor.reset()
    return []

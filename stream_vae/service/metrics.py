"""The service's Prometheus metrics (served by :mod:`stream_vae.service.health`).

Every metric lives in the :class:`ServiceMetrics` instance's own ``CollectorRegistry``: nothing
is registered in ``prometheus_client``'s global default registry, so several services (or tests)
can run in one process without sharing values or colliding on names. Call sites record through
small typed methods and never touch a prometheus object.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["METRICS_CONTENT_TYPE", "ServiceMetrics"]

log = logging.getLogger(__name__)

# ``generate_latest(registry)`` writes the classic 0.0.4 text format. prometheus_client>=0.22
# renamed CONTENT_TYPE_LATEST to the 1.0.0 type, which does not describe what generate_latest
# writes by default, so the header is spelled out here (this is what the library's own handler
# sends with generate_latest).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ALERT_EVENTS = frozenset({"open", "close"})
_MODEL_EVENTS = frozenset({"promoted", "rejected", "failed", "swapped"})
# Records per micro-batch: 1, 2, 4, ..., 8192 (the largest batch the source hands out).
_BATCH_BUCKETS = tuple(float(2**i) for i in range(14))
# One forward pass over a micro-batch: sub-millisecond on a GPU for small batches, seconds on a
# busy CPU for large ones.
_INFERENCE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Record appended to Kafka -> alert acknowledged: 1 ms (everything local) to 30 s (a fetch wait,
# a slow batch and a producer retry in a row).
# Raw hybrid scores: a sum of softplus-transformed robust z-scores, mostly 0-5 on normal data;
# quantiles for the dashboard come from these buckets (histogram_quantile).
_SCORE_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 50.0)
_E2E_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# aiokafka's heartbeat is sent from the loop every 3 s by default: a stall of a third of that is
# worth a log line, long before the group coordinator gives up on the consumer.
WARN_LOOP_LAG_S = 1.0


def _total(metric: MetricWrapperBase) -> int:
    """Sum of a counter's ``*_total`` samples over all its label sets."""
    return int(
        sum(
            s.value
            for family in metric.collect()
            for s in family.samples
            if s.name.endswith("_total")
        )
    )


class ServiceMetrics:
    """All the service's metrics, in a registry of their own.

    Parameters
    ----------
    namespace
        Prefix of every metric name (``<namespace>_records_in_total``, ...).

    Notes
    -----
    Record accounting: every consumed record ends up in exactly one of scored (it completed a
    window that was scored), buffered (accepted, window not full yet or between strides),
    dead-lettered or late (dropped by the window store), so
    ``consumed == scored + buffered + dead_letters + late``; :meth:`accounting` reports the
    difference as ``unaccounted``.

    Examples
    --------
    >>> m = ServiceMetrics()
    >>> m.add_records_in("telemetry", 5)
    >>> m.add_dead_letters("bad_json")
    >>> m.add_outcomes(n_scored=2, n_buffered=1, n_late=1)
    >>> m.accounting()["consumed"], m.accounting()["unaccounted"]
    (5, 0)
    >>> m.registry.get_sample_value("stream_vae_records_in_total", {"topic": "telemetry"})
    5.0
    """

    def __init__(self, namespace: str = "stream_vae") -> None:
        self.namespace = namespace
        self._registry = reg = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, namespace=namespace, registry=reg)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, namespace=namespace, registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, namespace=namespace, registry=reg, buckets=buckets)

        self._records_in = counter("records_in", "Records consumed from Kafka.", "topic")
        self._dead_letters = counter("dead_letters", "Records dead-lettered.", "reason")
        self._records_scored = counter("records_scored", "Records that completed a scored window.")
        self._records_buffered = counter(
            "records_buffered", "Records accepted whose window is not full yet or not emitted."
        )
        self._records_late = counter("records_late", "Records dropped as late or duplicate.")
        # Outside the accounting above: records re-read to rebuild state on taking a partition
        # over (processed and counted by its previous owner), and records fetched before a
        # rebalance, dropped unprocessed (delivered again from the committed offset).
        self._replayed = counter(
            "records_replayed", "Records before the committed offset re-read to rebuild state."
        )
        self._dropped_stale = counter(
            "records_dropped_stale", "Records fetched before a rebalance, dropped unprocessed."
        )
        self._replay_truncated = counter(
            "replay_truncated",
            "Partitions taken over whose state could not be rebuilt in full.",
            "reason",
        )
        for reason in ("bounded", "retention", "unreadable"):
            self._replay_truncated.labels(reason=reason)
        self._partition_conflicts = counter(
            "series_partition_conflicts", "Records of a series on another partition than before."
        )
        self._windows = counter("windows_scored", "Windows scored by the model.")
        self._over = counter(
            "windows_over_threshold", "Windows whose smoothed score reached the threshold."
        )
        self._alerts = counter("alerts", "Alert events published.", "event")
        for event in sorted(_ALERT_EVENTS):  # a closed set: export zeros so rate() works at once
            self._alerts.labels(event=event)
        self._suppressed = counter(
            "alerts_suppressed", "Alert opens not published (their close neither).", "reason"
        )
        for reason in ("budget", "incident"):
            self._suppressed.labels(reason=reason)
        self._batch_size = histogram("batch_size", "Records per micro-batch.", _BATCH_BUCKETS)
        self._inference = histogram(
            "inference_seconds", "Forward-pass time per micro-batch.", _INFERENCE_BUCKETS
        )
        self._end_to_end = histogram(
            "end_to_end_seconds", "Record appended to Kafka to alert acknowledged.", _E2E_BUCKETS
        )
        self._consumer_lag = gauge(
            "consumer_lag", "Messages behind the partition's end offset.", "topic", "partition"
        )
        self._in_flight = gauge(
            "records_in_flight", "Records fetched and not yet published and committed."
        )
        self._loop_lag = gauge("event_loop_lag_seconds", "How late the loop woke a timer, last.")
        self._model_info = gauge("model_info", "1 for the live model version.", "version")
        self._drift = counter("drift_events", "Confirmed drift events.", "kind")
        for kind in ("input", "score"):
            self._drift.labels(kind=kind)
        self._model_events = counter(
            "model_events", "Retraining outcomes and model swaps.", "event"
        )
        for event in sorted(_MODEL_EVENTS):
            self._model_events.labels(event=event)
        self._reservoir = gauge("reservoir_windows", "Clean windows held for retraining.")
        self._feedback = counter(
            "feedback",
            "Verdicts on alerts read from the feedback topic; outcome applied: its windows "
            "were found, unknown_alert: not held by this replica.",
            "verdict",
            "outcome",
        )
        for verdict in ("false_positive", "confirmed", "ignore"):
            for outcome in ("applied", "unknown_alert"):
                self._feedback.labels(verdict=verdict, outcome=outcome)
        self._feedback_dead = counter(
            "feedback_dead_letters",
            "Feedback messages that could not be used (sent to the dead-letter topic).",
            "reason",
        )
        self._feedback_windows = gauge(
            "feedback_windows",
            "Windows of marked alerts held for the next retrain (false positives trained on, "
            "confirmed gated on).",
            "verdict",
        )
        self._retraining = gauge("retraining", "1 while a retraining job runs.")
        self._raw_score = histogram(
            "raw_score", "Raw hybrid score of the windows scored.", _SCORE_BUCKETS
        )
        self._ready_gauge = gauge("ready", "1 when the service is ready to consume.")
        self._ready = False
        self._series = gauge("series_held", "Series whose window state this replica holds.")
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... of
        # this process, on this registry (the default registry is never used: one per service).
        # They are standard names, without the namespace: dashboards and alerts expect them so.
        ProcessCollector(registry=reg)

    @property
    def registry(self) -> CollectorRegistry:
        """The registry holding this instance's metrics (for ``generate_latest``)."""
        return self._registry

    @property
    def ready(self) -> bool:
        """What :meth:`set_ready` last said (False until then)."""
        return self._ready

    # -- counters -------------------------------------------------------------------------------

    def add_records_in(self, topic: str, n_records: int) -> None:
        """Count ``n_records`` consumed from ``topic``."""
        self._records_in.labels(topic=topic).inc(n_records)

    def add_dead_letters(self, reason: str, n_records: int = 1) -> None:
        """Count records dead-lettered for ``reason`` (a :class:`~stream_vae.errors.RecordError`
        reason such as ``bad_json``)."""
        self._dead_letters.labels(reason=reason).inc(n_records)

    def add_outcomes(self, *, n_scored: int, n_buffered: int, n_late: int = 0) -> None:
        """Count what became of the accepted (decoded) records of one batch."""
        self._records_scored.inc(n_scored)
        self._records_buffered.inc(n_buffered)
        self._records_late.inc(n_late)

    def add_windows_scored(self, n_windows: int, n_over_threshold: int = 0) -> None:
        """Count windows that went through the model, and those whose smoothed score was at or
        over the threshold (their ratio is the window alert rate, vs the target FPR)."""
        self._windows.inc(n_windows)
        self._over.inc(n_over_threshold)

    def add_alerts(self, event: str, n_alerts: int = 1) -> None:
        """Count published alert events; ``event`` is ``"open"`` or ``"close"``."""
        if event not in _ALERT_EVENTS:
            raise ValueError(f"alert event must be one of {sorted(_ALERT_EVENTS)}, got {event!r}")
        self._alerts.labels(event=event).inc(n_alerts)

    def add_alerts_suppressed(self, reason: str, n_alerts: int = 1) -> None:
        """Count alert opens shaping kept back: ``budget`` (a series over its hourly budget) or
        ``incident`` (part of an open fleet incident)."""
        self._suppressed.labels(reason=reason).inc(n_alerts)

    def add_records_replayed(self, n_records: int) -> None:
        self._replayed.inc(n_records)

    def add_records_dropped_stale(self, n_records: int) -> None:
        self._dropped_stale.inc(n_records)

    def add_replay_truncated(self, reason: str, n_partitions: int = 1) -> None:
        """``bounded`` (service.max_replay_records), ``retention`` (the start was deleted) or
        ``unreadable`` (the state topic could not be read)."""
        self._replay_truncated.labels(reason=reason).inc(n_partitions)

    def add_series_partition_conflicts(self, n_records: int) -> None:
        if n_records:
            self._partition_conflicts.inc(n_records)

    def accounting(self) -> dict[str, int]:
        """Counter totals, summed over labels, and the unaccounted remainder (0 when sound).

        Keys: ``consumed``, ``scored``, ``buffered``, ``dead_letters``, ``late``, ``windows``,
        ``alerts``, ``unaccounted`` (``consumed - scored - buffered - dead_letters - late``).
        """
        out = {
            "consumed": _total(self._records_in),
            "scored": _total(self._records_scored),
            "buffered": _total(self._records_buffered),
            "dead_letters": _total(self._dead_letters),
            "late": _total(self._records_late),
            "windows": _total(self._windows),
            "windows_over_threshold": _total(self._over),
            "alerts": _total(self._alerts),
            "replayed": _total(self._replayed),
            "dropped_stale": _total(self._dropped_stale),
        }
        out["unaccounted"] = out["consumed"] - (
            out["scored"] + out["buffered"] + out["dead_letters"] + out["late"]
        )
        return out

    # -- histograms -----------------------------------------------------------------------------

    def observe_batch(self, n_records: int, inference_s: float) -> None:
        """Record one micro-batch: its size and its forward-pass time in seconds."""
        self._batch_size.observe(n_records)
        self._inference.observe(inference_s)

    def observe_end_to_end(self, latency_s: float) -> None:
        """Record one record-appended → alert-acknowledged latency in seconds."""
        self._end_to_end.observe(latency_s)

    # -- gauges ---------------------------------------------------------------------------------

    def set_consumer_lag(self, topic: str, partition: int, n_messages: int) -> None:
        """Set how many messages the consumer is behind on one partition."""
        self._consumer_lag.labels(topic=topic, partition=str(partition)).set(n_messages)

    def remove_consumer_lag(self, topic: str, partition: int) -> None:
        """Drop a partition's lag series (after it was revoked); absent is fine."""
        try:
            self._consumer_lag.remove(topic, str(partition))
        except KeyError:
            log.debug("no consumer lag series for %s[%d]", topic, partition)

    def set_records_in_flight(self, n_records: int) -> None:
        """Records handed out by the consumer and not yet processed (back-pressure bound)."""
        self._in_flight.set(n_records)

    def set_event_loop_lag(self, lag_s: float) -> None:
        """Set the last measured event-loop lag in seconds."""
        self._loop_lag.set(lag_s)

    def add_drift_event(self, kind: str) -> None:
        """A confirmed drift event of ``kind`` ("score" or "input")."""
        self._drift.labels(kind=kind).inc()

    def add_model_event(self, event: str) -> None:
        """ "promoted", "rejected", "failed" (a retraining outcome) or "swapped"."""
        self._model_events.labels(event=event).inc()

    def set_series_held(self, n_series: int) -> None:
        self._series.set(n_series)

    def set_reservoir_windows(self, n_windows: int) -> None:
        self._reservoir.set(n_windows)

    def add_feedback(self, verdict: str, outcome: str) -> None:
        self._feedback.labels(verdict=verdict, outcome=outcome).inc()

    def add_feedback_dead_letter(self, reason: str) -> None:
        self._feedback_dead.labels(reason=reason).inc()

    def set_feedback_windows(self, n_false_positive: int, n_confirmed: int) -> None:
        self._feedback_windows.labels(verdict="false_positive").set(n_false_positive)
        self._feedback_windows.labels(verdict="confirmed").set(n_confirmed)

    def set_retraining(self, running: bool) -> None:
        self._retraining.set(1 if running else 0)

    def observe_raw_scores(self, raw: npt.ArrayLike) -> None:
        """Feed the score-quantile histogram (a sample of a batch's raw scores is enough)."""
        for v in np.asarray(raw, dtype=np.float64).tolist():
            self._raw_score.observe(v)

    def set_model_version(self, version: str) -> None:
        """Mark ``version`` as the live model; the previous version's series is removed."""
        self._model_info.clear()
        self._model_info.labels(version=version).set(1)

    def set_ready(self, ready: bool) -> None:
        """Say whether the service is ready (drives ``/readyz`` and the ``ready`` gauge)."""
        self._ready = bool(ready)
        self._ready_gauge.set(1 if ready else 0)

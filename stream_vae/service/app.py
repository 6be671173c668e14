"""The asyncio service: one loop owns the consumer, the producer and the per-series state.

Delivery order, in one place (:meth:`Service._step`)::

    fetch → decode (bad → dead letters) → windows → forward pass (worker thread)
          → scores and alert events → produce alerts and dead letters → await acks → commit

The last three are a batch's *tail* (:meth:`Service._finish`): it runs while the next batch's
forward pass does, and one tail ends before the next begins, so alerts and commits keep the
batches' order.

Offsets are committed only after the broker acknowledged everything the records caused, so a
crash repeats work (and alerts, with the same ``alert_id``) but never loses it. While the forward
pass runs in the worker thread, aiokafka's fetcher keeps prefetching the next batch on the loop.

The committed offset is the processed position, so lag tools read the truth (0 on an idle
group). After each commit, each partition's *replay start* (:mod:`stream_vae.service.offsets`:
every series' last ``W − 1`` records plus an EMA warm-up, and an open episode from its start) is
written to the state topic (:mod:`stream_vae.service.checkpoint`). A consumer that takes a
partition over (restart or rebalance) seeks back to that start and rebuilds the state from the
records before the committed offset without publishing anything (``SourceBatch.replay``), then
goes on live: the state is rebuilt exactly, and a clean restart repeats no alert.

On revoke, the listener waits for the batches in flight to be published and committed, then drops
the state of the series on the revoked partitions; nothing is handed over between replicas, the
Kafka log is the hand-over. A batch fetched before a rebalance and not yet processed is dropped
(its records are delivered again from the committed offset, to us or to the new owner): its
series' state was dropped with the revoke, and processing it would rebuild a partial one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from ..config import Settings
from ..core.state import SeriesState, StateRegistry
from ..core.windows import ReadyWindows, WindowStore
from ..errors import ArtifactError, ConfigError
from ..logs import printable
from ..runtime.live import LiveModel
from ..scoring.alerts import Alert
from ..scoring.scorer import ScoredBatch
from ..storage.artifact import Artifact
from ..storage.registry import Registry
from .checkpoint import Checkpoint, CheckpointStore
from .feedback import FeedbackReader
from .health import EventLoopLagMonitor, HealthServer
from .kafka import ensure_topics, make_consumer, make_producer
from .lifecycle import Lifecycle, Swap
from .metrics import ServiceMetrics
from .offsets import ReplayWatermark
from .sink import KafkaSink
from .source import KafkaSource, SourceBatch

__all__ = ["Service"]

log = logging.getLogger(__name__)

# The weight below which the EMA's starting value no longer matters for a replayed rebuild
_EMA_FORGOTTEN = 1e-6


class Service:
    """Kafka in, alerts out, for one model version. No I/O until :meth:`run`."""

    # How often the broker is asked for metadata while serving: /readyz turns false when it does
    # not answer (an idle consumer's fetches say nothing about a broker that went away).
    broker_probe_s = 5.0

    def __init__(
        self,
        settings: Settings,
        artifact: Artifact,
        metrics: ServiceMetrics | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        # The model fixes how windows are cut and scored (its spec); the deployment chooses the
        # device, the bounds on the series held and the episode shaping.
        self.live = LiveModel.from_settings(artifact, settings.service, settings.alerts)
        self.metrics = metrics or ServiceMetrics()
        self.metrics.set_model_version(artifact.version)
        self.health: HealthServer | None = None
        # Called after each batch is published and committed, with the batch and the wall-clock
        # time then: benchmarks and tests observe per-record latency here.
        self.batch_observers: list[Callable[[SourceBatch, float], None]] = []
        if registry is None and settings.registry.root is not None:
            registry = Registry(settings.registry.root)
        self.lifecycle = Lifecycle(settings, artifact, self.metrics, registry)
        self._last_ts = 0.0  # stream time of the newest record processed
        self._watermark = ReplayWatermark(_replay_keep(artifact))
        # Every part that keeps state per series: an eviction or a revoke is one call.
        parts: dict[str, SeriesState] = {
            "live": self.live,
            "watermark": self._watermark,
            "drift": self.lifecycle.drift_state,
        }
        if self.lifecycle.alert_windows is not None:
            parts["feedback"] = self.lifecycle.alert_windows
        self.state = StateRegistry(parts)
        self.feedback: FeedbackReader | None = None  # while serving, with a feedback topic
        self._lock = asyncio.Lock()
        self._source: KafkaSource | None = None
        self._sink: KafkaSink | None = None
        self._checkpoints: CheckpointStore | None = None
        self._n_assignments = 0
        self._tail: asyncio.Task[None] | None = None  # the batch being published and committed
        self._records_in_flight = 0
        # One worker: forward passes are batched, and torch already uses its own threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-vae-infer")

    @property
    def n_assignments(self) -> int:
        """Partition assignments this replica took over so far (each rebalance counts one)."""
        return self._n_assignments

    def accounting(self) -> dict[str, int]:
        """consumed == scored + buffered + late + dead_letters, always (``unaccounted`` is 0)."""
        return self.metrics.accounting()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then finish the batch in flight, flush and commit."""
        k, svc = self.settings.kafka, self.settings.service
        if k.auto_create_topics:
            feedback = [] if k.feedback_topic is None else [k.feedback_topic]
            await ensure_topics(
                k,
                [
                    *k.input_topics,
                    k.alert_topic,
                    k.dead_letter_topic,
                    k.model_events_topic,
                    *feedback,
                ],
            )
        async with contextlib.AsyncExitStack() as stack:
            if svc.metrics_port is not None:
                self.health = HealthServer(self.metrics, svc.metrics_host, svc.metrics_port)
                try:
                    await stack.enter_async_context(self.health)
                except OSError as exc:
                    raise ConfigError(
                        f"cannot serve metrics on {svc.metrics_host}:{svc.metrics_port}: {exc} "
                        "(set service.metrics_port, or null to turn the endpoint off)"
                    ) from None
                log.info("metrics on http://%s:%d/metrics", svc.metrics_host, self.health.port)
            await stack.enter_async_context(EventLoopLagMonitor(self.metrics))
            await stack.enter_async_context(self.lifecycle)
            await self._serve(stop)

    async def _serve(self, stop: asyncio.Event) -> None:
        k, svc = self.settings.kafka, self.settings.service
        # The broker may hold an empty fetch this long: keep it within the batching budget.
        consumer = make_consumer(k, fetch_max_wait_ms=max(svc.max_wait_ms, 1))
        producer = make_producer(k)
        listener = _Rebalance(self, consumer)
        if k.input_pattern is not None:
            consumer.subscribe(pattern=k.input_pattern, listener=listener)
        else:
            consumer.subscribe(topics=list(k.input_topics), listener=listener)
        self._source = KafkaSource(
            consumer,
            self.live.artifact.feature_names,
            max_records=svc.max_batch_records,
            max_wait_ms=svc.max_wait_ms,
            max_message_bytes=k.max_message_bytes,
            max_future_s=svc.max_future_s,
            max_jump_s=svc.max_ts_jump_s,
            last_ts=self.live.store.last_ts,
            kafka=k,
        )
        self._sink = KafkaSink(
            producer, k.alert_topic, k.dead_letter_topic, max_message_bytes=k.max_message_bytes
        )
        self._checkpoints = CheckpointStore(
            k,
            producer,
            topic=k.state_topic,
            interval_s=svc.checkpoint_interval_s,
            read_timeout_s=svc.state_read_timeout_s,
        )
        try:
            # Stopped in `finally` even when a start fails (a client that failed to start still
            # holds connections and warns if left unclosed).
            await producer.start()
            await self._checkpoints.ensure_topic()
            await consumer.start()
            log.info(
                "stream-vae %s consuming %s",
                self.live.version,
                k.input_pattern or list(k.input_topics),
                extra={"model_version": self.live.version},
            )
            self.metrics.set_ready(True)
            tasks = [asyncio.create_task(self._probe_broker(consumer))]
            if k.feedback_topic is not None:
                self.feedback = FeedbackReader(k, self.lifecycle, self._sink, self.metrics)
                tasks.append(asyncio.create_task(self.feedback.run()))
            try:
                await self._loop(consumer, stop)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            try:  # what the throttle held back; a stale start is valid (a longer replay)
                await asyncio.wait_for(
                    self._checkpoints.flush(consumer.assignment(), self._watermark.replay_starts),
                    svc.shutdown_timeout_s,
                )
            except (KafkaError, TimeoutError) as exc:
                log.warning("could not write the last replay starts: %s", exc)
        finally:
            self.metrics.set_ready(False)
            # Both clients are stopped, each within the bound, even when the other fails (a
            # broker that is gone can hold a stop until the timeout).
            try:
                await asyncio.wait_for(consumer.stop(), svc.shutdown_timeout_s)
            finally:
                await asyncio.wait_for(producer.stop(), svc.shutdown_timeout_s)
                self._executor.shutdown(wait=True)
                log.info("stopped; accounting %s", self.accounting())

    async def _probe_broker(self, consumer: AIOKafkaConsumer) -> None:
        """Keep readiness in step with the broker: not ready while metadata cannot be fetched
        (the loop itself keeps retrying; Kubernetes stops routing to a pod that cannot work)."""
        ready = True
        while True:
            await asyncio.sleep(self.broker_probe_s)
            try:
                await asyncio.wait_for(consumer.topics(), self.broker_probe_s)
                now_ready = True
            except (KafkaError, TimeoutError) as exc:
                now_ready, reason = False, exc
            if now_ready != ready:
                ready = now_ready
                self.metrics.set_ready(ready)
                if ready:
                    log.info("broker reachable again: ready")
                else:
                    log.warning("broker unreachable (%s): not ready", reason)

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """A pipeline of three batches, each stage in order: batch k+1 is fetched and decoded on
        the loop while batch k's forward pass runs in the worker thread (torch releases the
        GIL), and batch k−1's alerts are published, acknowledged and committed (its *tail*,
        :meth:`_finish`). Batches are scored, published and committed in order. A batch fetched
        but not processed when ``stop`` is set is not committed: it is delivered again after a
        restart; a batch scored is published and committed before the loop returns.

        Back-pressure: the pipeline is the only queue. Batch k+2 is not asked for until batch
        k's forward pass is done and batch k−1 is published and committed, and the consumer
        fetches a partition again only once its buffered records were taken, so when inference
        falls behind, fetching stops and the backlog waits in Kafka (as consumer lag), not in
        memory: at most 3 × ``service.max_batch_records`` records are in flight (the
        ``records_in_flight`` gauge), plus the consumer's buffer (``kafka.fetch_max_bytes``,
        ``kafka.max_partition_fetch_bytes``)."""
        assert self._source is not None
        source = self._source

        async def fetch() -> SourceBatch:
            batch = await source.next_batch()
            self._in_flight(batch.n_consumed)
            return batch

        pending = asyncio.create_task(fetch())
        stopped = False
        try:
            while not stop.is_set():
                batch = await pending
                pending = asyncio.create_task(fetch())
                if batch.n_consumed or batch.replay is not None:
                    await self._step(consumer, batch)
                await self._tick()  # what the clock alone raises, busy or idle
            stopped = True
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                unprocessed = await pending  # fetched, never processed: delivered again
                self._in_flight(-unprocessed.n_consumed)
            if not stopped and self._tail is not None:
                # an error: the batch before it still ends its tail (bounded: a broker gone
                # holds it); cut short, its records are delivered again after a restart
                tail, self._tail = self._tail, None
                await asyncio.wait({tail}, timeout=self.settings.service.shutdown_timeout_s)
                tail.cancel()
                await asyncio.gather(tail, return_exceptions=True)
        await self._drain()  # a stop: the batch scored last is published and committed

    def _in_flight(self, n: int) -> None:
        self._records_in_flight += n
        self.metrics.set_records_in_flight(self._records_in_flight)

    async def _drain(self) -> None:
        """Wait for the batch in its tail to be published and committed (raises what it
        raised). The tail stays visible until it ends: a revoke meanwhile waits for it."""
        tail = self._tail
        if tail is None:
            return
        try:
            await tail
        finally:
            if self._tail is tail:
                self._tail = None

    async def _settled(self) -> None:
        """Wait for the batch in its tail to end, leaving what it raised to the loop (a
        rebalance listener's error would only be logged by the consumer)."""
        if self._tail is not None:
            await asyncio.wait({self._tail})

    async def _step(self, consumer: AIOKafkaConsumer, batch: SourceBatch) -> None:
        """Score a batch (:meth:`_process`), then hand it to its tail (:meth:`_finish`), which
        runs while the next batch is scored. What reads or changes the state of the tail's
        batch waits for it: a model swap, a replay, an eviction, a revoke, an assignment, the
        clock's alerts and a stop."""
        assert self._source is not None
        async with self._lock:  # a revoke waits for this batch to be scored, then for its tail
            if batch.generation != self._source.generation:
                # fetched before a rebalance: delivered again from the committed offset
                self.metrics.add_records_dropped_stale(batch.n_consumed)
                self._in_flight(-batch.n_consumed)
                log.debug("dropped %d records fetched before a rebalance", batch.n_consumed)
                return
            swap = self.lifecycle.take_swap()
            if batch.replay is not None or swap is not None:
                await self._drain()
            closed = self._swap_model(swap)  # between batches: this batch is the new model's
            if batch.replay is not None:
                await self._rebuild(batch.replay)
            scored = await self._process(batch, closed) if batch.n_consumed or closed else None
            await self._drain()  # the batch before: published and committed, in order
            self._tail = asyncio.create_task(self._finish(consumer, batch, scored))
            if scored is not None and scored.evicted:
                await self._drain()  # the evicted series leave the state before the next batch

    def _log_alerts(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            log.info(
                "alert %s %s %s score %.3f (model %s)",
                a.event,
                printable(a.series_id),
                a.alert_id,
                a.score,
                a.model_version,
                extra={
                    "series": a.series_id,
                    "event": a.event,
                    "alert_id": a.alert_id,
                    "model_version": a.model_version,
                },
            )

    async def _tick(self) -> None:
        """Publish what time alone raises, whether records arrive or not (``stale`` by the
        wall clock: a series, or a whole fleet, falling silent); nothing to commit."""
        assert self._sink is not None
        if not self.live.scorer.ticks or self._lock.locked():
            return  # nothing the clock can raise, or a batch or rebalance is in: the next poll
        async with self._lock:
            alerts = self.live.scorer.tick()
            if not alerts:
                return
            await self._drain()  # the batch before published first: its alerts came first
            try:  # bounded: the lock is held, and a broker that went away makes every series stale
                await asyncio.wait_for(self._sink.publish(alerts, ()), 5.0)
            except (KafkaError, TimeoutError) as exc:
                # not published: forget these opens, so that a later check raises them again
                silent = [a.series_id for a in alerts]
                self.live.scorer.close_wall_stale(time.time(), "unpublished", silent)
                log.warning("could not publish %d stale alerts: %r", len(alerts), exc)
                return
            for a in alerts:
                self.metrics.add_alerts(a.event)
        self._log_alerts(alerts)

    async def _infer(self, batch: SourceBatch) -> tuple[ReadyWindows, ScoredBatch, float]:
        """Windows, forward pass (in the worker thread) and scores of a batch's records."""
        live = self.live
        ready = live.prepare(batch.records)
        t0 = time.perf_counter()
        parts = await asyncio.get_running_loop().run_in_executor(self._executor, live.infer, ready)
        inference_s = time.perf_counter() - t0
        if len(batch.records):
            self._last_ts = max(self._last_ts, float(batch.records.ts.max()))
        return ready, live.score(ready, parts), inference_s

    async def _rebuild(self, replay: SourceBatch) -> None:
        """Records before the committed offset of a partition just taken over: their state is
        rebuilt and nothing is published, counted or watched for drift (the previous owner
        did all of that)."""
        ready, scored, _ = await self._infer(replay)
        self.lifecycle.hold(ready, scored.alerts)  # an open episode's windows, rebuilt too
        still_open = self.live.open_series(all_kinds=True) if scored.alerts else frozenset()
        self._track(replay, scored.alerts, still_open)
        self.metrics.add_records_replayed(replay.n_consumed)

    async def _process(self, batch: SourceBatch, closed: tuple[Alert, ...]) -> _Scored:
        """Windows, forward pass and scores of a batch, and the alerts they raise; the state
        of every series moves on. Nothing is published here (:meth:`_finish`)."""
        live, store = self.live, self.live.store
        late_before = store.counters["late"]
        evicted_before = _evictions(store)
        ready, scored, inference_s = await self._infer(batch)
        self.lifecycle.observe(ready, scored, live.scorer, store.n_series)
        if len(batch.records) and store.idle_ttl_s is not None:
            store.evict_idle(float(batch.records.ts.max()))
        # Series the store evicted (idle, or over service.max_series): an open episode closes
        # now (reason "evicted"), published and committed with this batch, since no replay
        # after the commit could produce it; then the series leave every part of the state
        # (in the tail, before the next batch), so that memory stays bounded by the store's
        # bounds. The set differences cost a pass over every series held: only when the
        # store evicted any.
        evicted = _evictions(store) != evicted_before
        gone = live.series() - store.series() if evicted else frozenset()
        alerts = closed + scored.alerts + live.scorer.close(self._last_ts, "evicted", gone)
        self.lifecycle.hold(ready, alerts)
        return _Scored(
            alerts=alerts,
            # the episodes open after this batch, for the replay starts (the tail runs while
            # the next batch moves the scorer on)
            still_open=live.open_series(all_kinds=True) if alerts else frozenset(),
            evicted=evicted,
            windows=len(ready),
            late=store.counters["late"] - late_before,
            inference_s=inference_s,
            n_alerted=int(scored.is_alert.sum()),
            suppressed=dict(scored.suppressed),
            series_held=store.n_series,
        )

    async def _finish(
        self, consumer: AIOKafkaConsumer, batch: SourceBatch, scored: _Scored | None
    ) -> None:
        """A batch's tail: publish its alerts and dead letters (awaiting acks), commit the
        processed position, then checkpoint; the metrics, lag and model events after."""
        assert self._source is not None and self._sink is not None
        try:
            if scored is not None:
                await self._sink.publish(scored.alerts, batch.rejected)
                self._track(batch, scored.alerts, scored.still_open)
                if scored.evicted:
                    live = self.live
                    self.state.drop(
                        (self._watermark.series() | live.series()) - live.store.series()
                    )
                assert self._checkpoints is not None
                committed: dict[TopicPartition, int] = {}
                try:
                    committed = await self._source.commit(batch.next_offsets)
                finally:
                    # A commit that failed or raised: the watermark has moved past the commits
                    # held back by the throttle, whose starts it can no longer compute.
                    self._checkpoints.abandon(batch.next_offsets.keys() - committed.keys())
                if committed:
                    await self._checkpoints.save_commits(committed, self._watermark.replay_starts)
                self._record(batch, scored.windows, scored.late, scored.alerts, scored.inference_s)
                self.metrics.add_windows_scored(scored.windows, scored.n_alerted)
                self.metrics.set_series_held(scored.series_held)
                for reason, n in scored.suppressed.items():
                    self.metrics.add_alerts_suppressed(reason, n)
            done = time.time()
            for observe in self.batch_observers:
                observe(batch, done)
        finally:
            self._in_flight(-batch.n_consumed)
        await self._observe_lag(consumer, batch.next_offsets)
        events = self.lifecycle.take_events()
        if events:
            await self._publish_events(events)
        if scored is not None:
            self._log_alerts(scored.alerts)

    def _track(
        self, batch: SourceBatch, alerts: Sequence[Alert], still_open: frozenset[str]
    ) -> None:
        """Keep the replay starts up to date: the records' offsets and the episodes opened and
        closed (``still_open``: the series with an episode open after the batch, of any kind);
        count series seen on a second partition, and warn once for each."""
        before = self._watermark.n_moves
        moved = self._watermark.observe(batch.records.series_ids, batch.partitions, batch.offsets)
        self.metrics.add_series_partition_conflicts(self._watermark.n_moves - before)
        for sid in moved:
            log.warning(
                "series %s moved to partition %s: records of one series must share a key "
                "(check the producer's key); its state follows the newest partition",
                printable(sid),
                self._watermark.partition_of(sid),
                extra={"series": sid, "partition": self._watermark.partition_of(sid)},
            )
        for a in alerts:
            if a.event == "open":
                self._watermark.episode_opened(a.series_id)
            elif a.series_id not in still_open:  # no episode of another kind holds it
                self._watermark.episode_closed(a.series_id)

    async def _publish_events(self, events: list[dict[str, object]]) -> None:
        # Lifecycle events inform; they are not on the at-least-once path of alerts. A missing
        # topic or a slow broker costs a log line, never the scoring loop.
        assert self._sink is not None
        topic = self.settings.kafka.model_events_topic
        try:
            await asyncio.wait_for(self._sink.publish_events(topic, events), 5.0)
        except Exception as exc:
            log.error("could not publish %d model events to %s: %s", len(events), topic, exc)

    def _swap_model(self, swap: Swap | None) -> tuple[Alert, ...]:
        """Install a promoted version, if one was loaded (:meth:`LiveModel.install`: its
        episodes end with the old model, the EMA restarts, the windows carry over)."""
        if swap is None:
            return ()
        old = self.live.version
        try:
            closed = self.live.install(swap.artifact, self._last_ts, swap.detector)
        except ArtifactError as exc:
            log.error("not swapping: %s; restart instead", exc)
            self.lifecycle.refused(swap.artifact.version, str(exc))
            return ()
        self.metrics.set_model_version(swap.artifact.version)
        self.lifecycle.swapped(old, swap.artifact.version, len(closed))
        log.info(
            "model %s → %s (%d episodes closed)",
            old,
            swap.artifact.version,
            len(closed),
            extra={"model_version": swap.artifact.version},
        )
        return closed

    def _record(
        self,
        batch: SourceBatch,
        windows: int,
        late: int,
        alerts: Sequence[Alert],
        inference_s: float,
    ) -> None:
        m = self.metrics
        for topic, n in Counter(tp.topic for tp in batch.partitions).items():
            m.add_records_in(topic, n)
        for d in batch.rejected:
            m.add_records_in(d.topic, 1)
            m.add_dead_letters(d.reason)
        # An accepted record completes at most one window: those are scored; the others wait in
        # a buffer (window not full yet, or between strides) or were late.
        m.add_outcomes(
            n_scored=windows, n_buffered=len(batch.records) - late - windows, n_late=late
        )
        m.observe_batch(batch.n_consumed, inference_s)
        if alerts:
            # record appended to Kafka -> alert acknowledged (the alerts are acked by now)
            appended = {
                (s, t): a
                for s, t, a in zip(
                    batch.records.series_ids,
                    batch.records.ts.tolist(),
                    batch.append_ts.tolist(),
                    strict=True,
                )
            }
            now = time.time()
            for a in alerts:
                m.add_alerts(a.event)
                if (a.series_id, a.ts) in appended:
                    m.observe_end_to_end(max(0.0, now - appended[(a.series_id, a.ts)]))

    async def _observe_lag(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
    ) -> None:
        # The fetch high watermark, not ListOffsets: some Kafka-compatible brokers answer
        # ListOffsets(LATEST) wrongly, and the watermark comes with every fetch for free.
        assigned = consumer.assignment()
        for tp in offsets:
            if tp not in assigned:  # revoked while this batch was processed: not ours to watch
                continue
            high = consumer.highwater(tp)
            if high is not None:
                self.metrics.set_consumer_lag(
                    tp.topic, tp.partition, max(0, high - await consumer.position(tp))
                )

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        assert self._source is not None and self._checkpoints is not None
        assert self._sink is not None
        gone = set(revoked)
        async with self._lock:
            self._source.generation += 1
            await self._settled()  # the batch scored last: published and committed
            try:
                # what the throttle held back
                await self._checkpoints.flush(gone, self._watermark.replay_starts)
            except KafkaError as exc:  # a stale checkpoint is still valid: a longer replay
                log.warning("could not write the checkpoints of %s: %s", sorted(gone), exc)
            self._checkpoints.forget(gone)
            series = self._watermark.series_on(gone)
            # a wall-clock stale episode is not rebuilt by the next owner's replay: closed here
            closes = self.live.scorer.close_wall_stale(time.time(), "revoked", series)
            if closes:
                try:  # bounded: a rebalance must not wait on a broker that went away
                    await asyncio.wait_for(self._sink.publish(closes, ()), 5.0)
                except (KafkaError, TimeoutError) as exc:
                    log.warning("could not publish %d stale closes: %r", len(closes), exc)
                else:
                    for a in closes:
                        self.metrics.add_alerts(a.event)
            self.state.drop(series)
            self.metrics.set_series_held(self.live.store.n_series)
            for tp in gone:
                self._source.replay_until.pop(tp, None)
                self.metrics.remove_consumer_lag(tp.topic, tp.partition)
        log.info(
            "partitions revoked %s: dropped state of %d series", sorted(map(str, gone)), len(series)
        )

    async def _on_assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Seek each partition taken over back to its replay start (records up to the committed
        offset rebuild state silently). The partitions stay paused until then: aiokafka makes
        them fetchable before this listener runs."""
        assert self._source is not None
        consumer.pause(*assigned)  # before any await
        try:
            async with self._lock:
                await self._settled()
                replays = await self._take_over(consumer, assigned)
                self._source.generation += 1
                self._n_assignments += 1
        finally:
            consumer.resume(*assigned)
        log.info(
            "partitions assigned %s; replaying %d records to rebuild state",
            sorted(map(str, assigned)),
            sum(replays.values()),
        )

    async def _take_over(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Seek to each partition's replay start; returns the records to replay per partition."""
        assert self._source is not None and self._checkpoints is not None
        if not assigned:
            return {}
        bound = self.settings.service.max_replay_records
        committed = {tp: await consumer.committed(tp) for tp in assigned}
        earliest = await consumer.beginning_offsets(list(assigned))
        unreadable = False
        try:
            stored = await self._checkpoints.load(assigned)
        except (TimeoutError, KafkaError) as exc:
            unreadable, stored = True, {}
            log.error(
                "cannot read replay starts from %s (%s): replaying the last %s records of each "
                "partition instead",
                self._checkpoints.topic,
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                bound,
            )
            self.metrics.add_replay_truncated("unreadable", len(assigned))
        fresh: dict[TopicPartition, Checkpoint] = {}
        replays: dict[TopicPartition, int] = {}
        for tp in sorted(assigned):
            c, cp = committed[tp], stored.get(tp)
            if unreadable and c is not None:
                # The stored start is unknown, not absent: it stays as it is (a start written
                # over it now would cut every later owner's replay short), and the state is
                # rebuilt, blind, from the bound: windows and EMAs whole, an episode that
                # opened before it reopens later.
                start = earliest[tp] if bound is None else max(earliest[tp], c - bound)
                if start < c:
                    consumer.seek(tp, start)
                    self._source.replay_until[tp] = c
                    replays[tp] = c - start
                continue
            if c is None or cp is None or cp.committed > c:
                # Nothing to rebuild from: consumption starts here (never committed, a group
                # committed before checkpoints existed, or offsets reset by an operator). This
                # start is valid for every later commit: write it before the first one.
                start = earliest[tp] if c is None else c
                fresh[tp] = Checkpoint(start, start)
                continue
            start = cp.replay_from
            if bound is not None and start < c - bound:
                start = c - bound
                self.metrics.add_replay_truncated("bounded")
                log.warning(
                    "%s: replay cut to the last %d records (service.max_replay_records)", tp, bound
                )
            if start < earliest[tp]:
                start = earliest[tp]
                self.metrics.add_replay_truncated("retention")
                log.warning(
                    "%s: replay start %d was deleted by retention; rebuilding from %d",
                    tp,
                    cp.replay_from,
                    start,
                )
            if start < c:
                consumer.seek(tp, start)
                self._source.replay_until[tp] = c
                replays[tp] = c - start
        await self._checkpoints.save(fresh, force=True)
        return replays


@dataclass(frozen=True, slots=True)
class _Scored:
    """What scoring a batch leaves for its tail (:meth:`Service._finish`)."""

    alerts: tuple[Alert, ...]
    still_open: frozenset[str]
    evicted: bool
    windows: int
    late: int
    inference_s: float
    n_alerted: int
    suppressed: dict[str, int]
    series_held: int


def _evictions(store: WindowStore) -> int:
    c = store.counters
    return c["evicted_lru"] + c["evicted_idle"]


def _replay_keep(artifact: Artifact) -> int:
    """Records per series a restart must re-read: a window's W − 1, plus EMA warm-up windows."""
    beta = artifact.spec.scoring.ema_beta
    # After n windows the EMA's starting value weighs beta**n; 1e-6 is far below any margin
    # between a score and its threshold. No cap: a cap would break the exact rebuild for a β
    # close to 1 (β 0.99: 1,375 windows).
    warmup = 0 if beta == 0 else math.ceil(math.log(_EMA_FORGOTTEN) / math.log(beta))
    stride = artifact.spec.window.stride
    return artifact.vae_config.window - 1 + warmup * stride


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service, consumer: AIOKafkaConsumer) -> None:
        self._service = service
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._service._on_assigned(self._consumer, assigned)

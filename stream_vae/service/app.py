"""The asyncio service: one loop owns the consumer, the producer and the per-series state.

Delivery order, in one place (:meth:`Service._step`)::

    fetch → decode (bad → dead letters) → windows → forward pass (worker thread)
          → scores and alert events → produce alerts and dead letters → await acks → commit

Offsets are committed only after the broker acknowledged everything the records caused, so a
crash repeats work (and alerts, with the same ``alert_id``) but never loses it. While the forward
pass runs in the worker thread, aiokafka's fetcher keeps prefetching the next batch on the loop.

Offsets are committed at a replay watermark, not at the last record (see
:mod:`stream_vae.service.offsets`): a restarted or newly assigned consumer re-reads each series'
last ``W − 1`` records plus an EMA warm-up (and an open episode from its start), so it rebuilds
the state exactly instead of losing it; the price is a short replay and repeated alerts with the
same ``alert_id``. On revoke, the listener waits for the batch in flight to be published and
committed, then drops the state of the series on the revoked partitions; nothing is handed over
between replicas, the Kafka log is the hand-over.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import ConsumerRebalanceListener, TopicPartition

from ..artifact import Artifact
from ..config import Settings
from ..kafka import ensure_topics, make_consumer, make_producer
from ..pipeline import Pipeline
from .offsets import ReplayWatermark
from .sink import KafkaSink
from .source import KafkaSource

__all__ = ["Service"]

log = logging.getLogger(__name__)

_COUNTS = ("consumed", "dead_letters", "scored", "buffered", "late", "windows", "alerts")


class Service:
    """Kafka in, alerts out, for one model version. No I/O until :meth:`run`."""

    def __init__(self, settings: Settings, artifact: Artifact) -> None:
        self.settings = settings
        self.artifact = artifact
        self.pipeline = Pipeline.from_artifact(
            artifact, settings.service.device, settings.service.backend
        )
        self._counts = dict.fromkeys(_COUNTS, 0)
        self._watermark = ReplayWatermark(_replay_keep(artifact))
        self._lock = asyncio.Lock()
        self._source: KafkaSource | None = None
        self._sink: KafkaSink | None = None
        # One worker: forward passes are batched, and torch already uses its own threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-vae-infer")

    def accounting(self) -> dict[str, int]:
        """consumed == scored + buffered + late + dead_letters, always."""
        return dict(self._counts)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then finish the batch in flight, flush and commit."""
        k, svc = self.settings.kafka, self.settings.service
        if k.auto_create_topics:
            await ensure_topics(k, [*k.input_topics, k.alert_topic, k.dead_letter_topic])
        consumer = make_consumer(k)
        producer = make_producer(k)
        listener = _Rebalance(self)
        if k.input_pattern is not None:
            consumer.subscribe(pattern=k.input_pattern, listener=listener)
        else:
            consumer.subscribe(topics=list(k.input_topics), listener=listener)
        await producer.start()
        try:
            await consumer.start()
            try:
                self._source = KafkaSource(
                    consumer,
                    self.artifact.feature_names,
                    max_records=svc.max_batch_records,
                    max_wait_ms=svc.max_wait_ms,
                    max_message_bytes=k.max_message_bytes,
                )
                self._sink = KafkaSink(producer, k.alert_topic, k.dead_letter_topic)
                log.info(
                    "stream-vae %s consuming %s",
                    self.artifact.version,
                    k.input_pattern or list(k.input_topics),
                )
                while not stop.is_set():
                    await self._step()
            finally:
                await asyncio.wait_for(consumer.stop(), svc.shutdown_timeout_s)
        finally:
            await asyncio.wait_for(producer.stop(), svc.shutdown_timeout_s)
            self._executor.shutdown(wait=True)
            log.info("stopped; accounting %s", self._counts)

    async def _step(self) -> None:
        assert self._source is not None and self._sink is not None
        batch = await self._source.next_batch()
        if batch.n_consumed == 0:
            return
        async with self._lock:  # a revoke waits for this batch to be published and committed
            late_before = self.pipeline.store.counters["late"]
            ready = self.pipeline.store.push_many(batch.records)
            parts = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.pipeline.detector.infer, ready.values
            )
            scored = self.pipeline.scorer.update(ready.keys, ready.ts, parts)
            await self._sink.publish(scored.alerts, batch.rejected)
            self._watermark.observe(batch.records.series_ids, batch.partitions, batch.offsets)
            for a in scored.alerts:
                if a.event == "open":
                    self._watermark.episode_opened(a.series_id)
                else:
                    self._watermark.episode_closed(a.series_id)
            await self._source.commit(self._watermark.commit_offsets(batch.next_offsets))
            late = self.pipeline.store.counters["late"] - late_before
            self._count(
                batch.n_consumed,
                len(batch.rejected),
                len(batch.records),
                len(ready),
                late,
                len(scored.alerts),
            )
        for a in scored.alerts:
            log.info(
                "alert %s %s %s score %.3f (model %s)",
                a.event,
                a.series_id,
                a.alert_id,
                a.score,
                a.model_version,
            )

    def _count(
        self, consumed: int, rejected: int, accepted: int, windows: int, late: int, alerts: int
    ) -> None:
        # An accepted record completes at most one window: those are scored, the others wait in
        # a buffer (window not full yet, or between strides).
        scored = windows
        c = self._counts
        c["consumed"] += consumed
        c["dead_letters"] += rejected
        c["late"] += late
        c["windows"] += windows
        c["scored"] += scored
        c["buffered"] += accepted - late - scored
        c["alerts"] += alerts

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        gone = set(revoked)
        async with self._lock:
            series = self._watermark.series_on(gone)
            self.pipeline.store.drop(series)
            self.pipeline.scorer.drop(series)
            self._watermark.drop(series)
        log.info(
            "partitions revoked %s: dropped state of %d series", sorted(map(str, gone)), len(series)
        )


def _replay_keep(artifact: Artifact) -> int:
    """Records per series a restart must re-read: a window's W − 1, plus EMA warm-up windows."""
    beta = artifact.scoring.ema_beta
    # After n windows the EMA's starting value weighs beta**n; 1e-6 is far below any margin
    # between a score and its threshold.
    warmup = 0 if beta == 0 else min(math.ceil(math.log(1e-6) / math.log(beta)), 256)
    stride = artifact.window.stride
    return artifact.vae_config.window - 1 + warmup * stride


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned %s", sorted(map(str, assigned)))

"""The streaming service: Kafka in, scores and alerts out (``stream-vae run``)."""

from __future__ import annotations

from .app import Service
from .sink import KafkaSink
from .source import DeadLetter, KafkaSource, SourceBatch

__all__ = ["DeadLetter", "KafkaSink", "KafkaSource", "Service", "SourceBatch"]

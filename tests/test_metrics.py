"""ServiceMetrics, HealthServer and EventLoopLagMonitor over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_vae import _json
from stream_vae.service import health as health_module
from stream_vae.service import metrics as metrics_module
from stream_vae.service.health import EventLoopLagMonitor, HealthServer
from stream_vae.service.metrics import ServiceMetrics

T = TypeVar("T")
Response = tuple[int, dict[str, str], bytes]
SampleKey = tuple[str, frozenset[tuple[str, str]]]


def _serve(
    metrics: ServiceMetrics,
    scenario: Callable[[HealthServer], Awaitable[T]],
    read_timeout_s: float = 5.0,
) -> T:
    """Run ``scenario`` against a HealthServer on a free loopback port, in a fresh loop."""

    async def main() -> T:
        async with HealthServer(metrics, read_timeout_s=read_timeout_s) as server:
            return await scenario(server)

    return asyncio.run(main())


async def _exchange(port: int, request: bytes, *, eof: bool = False) -> Response:
    """Send raw bytes, read until the server closes, split status / headers / body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        if eof:
            writer.write_eof()
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 2.0)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return int(status), headers, body


async def _get(port: int, path: str, method: str = "GET") -> Response:
    return await _exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def _samples(text: str) -> dict[SampleKey, float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _key(name: str, **labels: str) -> SampleKey:
    return (name, frozenset(labels.items()))


def _record_some(m: ServiceMetrics) -> None:
    m.add_records_in("telemetry-a", 5)
    m.add_records_in("telemetry-b", 2)
    m.add_records_in("telemetry-a", 3)  # consumed: 10
    m.add_dead_letters("bad_json", 2)
    m.add_dead_letters("nan_value")
    m.add_outcomes(n_scored=4, n_buffered=2, n_late=1)
    m.add_windows_scored(4)
    m.add_alerts("open", 2)
    m.add_alerts("close")
    m.observe_batch(3, 0.002)
    m.observe_batch(7, 0.03)
    m.observe_end_to_end(0.004)
    m.set_consumer_lag("telemetry-a", 3, 42)
    m.set_model_version("v2")


# -- ServiceMetrics alone -------------------------------------------------------------------------


def test_accounting_sums_over_labels_and_balances() -> None:
    m = ServiceMetrics()
    assert m.accounting() == dict.fromkeys(
        [
            "consumed",
            "scored",
            "buffered",
            "dead_letters",
            "late",
            "windows",
            "windows_over_threshold",
            "alerts",
            "replayed",
            "dropped_stale",
        ],
        0,
    ) | {"unaccounted": 0}
    _record_some(m)
    assert m.accounting() == {
        "consumed": 10,
        "scored": 4,
        "buffered": 2,
        "dead_letters": 3,
        "late": 1,
        "windows": 4,
        "windows_over_threshold": 0,
        "alerts": 3,
        "replayed": 0,
        "dropped_stale": 0,
        "unaccounted": 0,
    }
    m.add_records_in("telemetry-b", 1)  # consumed but not yet classified
    assert m.accounting()["unaccounted"] == 1


def test_two_instances_share_nothing_and_leave_the_global_registry_alone() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()  # same names, no "Duplicated timeseries"
    a.add_records_in("t", 3)
    a.set_ready(True)
    assert a.registry.get_sample_value("stream_vae_records_in_total", {"topic": "t"}) == 3.0
    assert b.registry.get_sample_value("stream_vae_records_in_total", {"topic": "t"}) is None
    assert (a.ready, b.ready) == (True, False)
    assert b.registry.get_sample_value("stream_vae_ready") == 0.0
    # Alert events are a closed set, exported at zero from the start.
    assert b.registry.get_sample_value("stream_vae_alerts_total", {"event": "close"}) == 0.0
    assert prometheus_client.REGISTRY.get_sample_value("stream_vae_ready") is None
    other = ServiceMetrics(namespace="svc2")
    other.add_windows_scored(2)
    assert other.registry.get_sample_value("svc2_windows_scored_total") == 2.0


def test_model_info_swaps_its_label() -> None:
    m = ServiceMetrics()
    m.set_model_version("v1")
    m.set_model_version("v2")

    def info() -> dict[str, float]:
        (family,) = (f for f in m.registry.collect() if f.name == "stream_vae_model_info")
        return {s.labels["version"]: s.value for s in family.samples}

    assert info() == {"v2": 1.0}
    m.set_model_version("v3")
    assert info() == {"v3": 1.0}


def test_consumer_lag_series_can_be_removed() -> None:
    m = ServiceMetrics()
    m.set_consumer_lag("t", 0, 7)
    m.set_consumer_lag("t", 1, 9)
    m.remove_consumer_lag("t", 0)
    m.remove_consumer_lag("t", 5)  # never set: ignored
    get = m.registry.get_sample_value
    assert get("stream_vae_consumer_lag", {"topic": "t", "partition": "0"}) is None
    assert get("stream_vae_consumer_lag", {"topic": "t", "partition": "1"}) == 9.0


def test_alert_events_are_a_closed_set() -> None:
    m = ServiceMetrics()
    with pytest.raises(ValueError, match="open"):
        m.add_alerts("opened")
    with pytest.raises(ValueError):
        m.add_records_in("t", -1)  # counters only go up


def test_public_api() -> None:
    assert sorted(metrics_module.__all__) == ["METRICS_CONTENT_TYPE", "ServiceMetrics"]
    assert sorted(health_module.__all__) == ["EventLoopLagMonitor", "HealthServer"]


# -- HealthServer ---------------------------------------------------------------------------------


def test_metrics_endpoint_serves_exact_samples() -> None:
    m = ServiceMetrics()
    _record_some(m)

    async def scenario(server: HealthServer) -> Response:
        return await _get(server.port, "/metrics")

    status, headers, body = _serve(m, scenario)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    s = _samples(body.decode())
    expected = {
        _key("stream_vae_records_in_total", topic="telemetry-a"): 8.0,
        _key("stream_vae_records_in_total", topic="telemetry-b"): 2.0,
        _key("stream_vae_dead_letters_total", reason="bad_json"): 2.0,
        _key("stream_vae_dead_letters_total", reason="nan_value"): 1.0,
        _key("stream_vae_records_scored_total"): 4.0,
        _key("stream_vae_records_buffered_total"): 2.0,
        _key("stream_vae_records_late_total"): 1.0,
        _key("stream_vae_windows_scored_total"): 4.0,
        _key("stream_vae_alerts_total", event="open"): 2.0,
        _key("stream_vae_alerts_total", event="close"): 1.0,
        _key("stream_vae_batch_size_count"): 2.0,
        _key("stream_vae_batch_size_sum"): 10.0,
        _key("stream_vae_batch_size_bucket", le="2.0"): 0.0,
        _key("stream_vae_batch_size_bucket", le="4.0"): 1.0,
        _key("stream_vae_batch_size_bucket", le="8.0"): 2.0,
        _key("stream_vae_batch_size_bucket", le="8192.0"): 2.0,
        _key("stream_vae_inference_seconds_count"): 2.0,
        _key("stream_vae_inference_seconds_bucket", le="0.0025"): 1.0,
        _key("stream_vae_end_to_end_seconds_bucket", le="0.001"): 0.0,
        _key("stream_vae_end_to_end_seconds_bucket", le="0.005"): 1.0,
        _key("stream_vae_end_to_end_seconds_bucket", le="30.0"): 1.0,
        _key("stream_vae_consumer_lag", topic="telemetry-a", partition="3"): 42.0,
        _key("stream_vae_model_info", version="v2"): 1.0,
        _key("stream_vae_ready"): 0.0,
        _key("stream_vae_event_loop_lag_seconds"): 0.0,
    }
    assert {k: s.get(k) for k in expected} == expected
    assert s[_key("stream_vae_inference_seconds_sum")] == pytest.approx(0.032)
    # The largest finite bucket of each histogram is the documented one.
    les = {dict(k[1])["le"] for k in s if k[0] == "stream_vae_batch_size_bucket"}
    assert les == {str(float(2**i)) for i in range(14)} | {"+Inf"}
    e2e = {dict(k[1])["le"] for k in s if k[0] == "stream_vae_end_to_end_seconds_bucket"}
    assert min(e2e - {"+Inf"}, key=float) == "0.001"
    assert max(e2e - {"+Inf"}, key=float) == "30.0"


def test_health_readiness_and_accounting() -> None:
    m = ServiceMetrics()
    _record_some(m)

    async def scenario(server: HealthServer) -> list[Response]:
        out = [await _get(server.port, "/healthz"), await _get(server.port, "/readyz")]
        m.set_ready(True)
        out.append(await _get(server.port, "/readyz"))
        m.set_ready(False)
        out += [await _get(server.port, "/readyz"), await _get(server.port, "/accounting")]
        out.append(await _get(server.port, "/healthz?probe=1"))
        return out

    healthz, not_ready, ready, not_ready_again, accounting, healthz_query = _serve(m, scenario)
    assert healthz[0] == 200 and healthz[2] == b"ok\n"
    assert [not_ready[0], ready[0], not_ready_again[0]] == [503, 200, 503]
    assert accounting[0] == 200 and accounting[1]["content-type"] == "application/json"
    assert _json.loads(accounting[2]) == m.accounting()
    assert _json.loads(accounting[2])["consumed"] == 10
    assert healthz_query[0] == 200


def test_unknown_path_is_404_and_other_methods_405() -> None:
    async def scenario(server: HealthServer) -> list[Response]:
        return [
            await _get(server.port, "/nope"),
            await _get(server.port, "/metrics", method="POST"),
            await _get(server.port, "/healthz", method="DELETE"),
            # A body the server never reads: the answer must still arrive (no RST before it).
            await _exchange(
                server.port,
                b"POST /metrics HTTP/1.1\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000,
            ),
        ]

    missing, post, delete, post_with_body = _serve(ServiceMetrics(), scenario)
    assert missing[0] == 404
    assert (post[0], post[1]["allow"]) == (405, "GET")
    assert delete[0] == 405
    assert post_with_body[0] == 405


@pytest.mark.parametrize(
    ("request_bytes", "eof"),
    [
        (b"GARBAGE\r\n\r\n", False),
        (b"\xff\xfe\xfd /healthz HTTP/1.1\r\n\r\n", False),
        (b"GET /healthz\r\n\r\n", False),
        (b"GET healthz HTTP/1.1\r\n\r\n", False),
        (b"GET /healthz SPDY/3\r\n\r\n", False),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", False),
        (b"G(T /healthz HTTP/1.1\r\n\r\n", False),
        (b"GET /heal", True),  # the client gives up half way
    ],
)
def test_malformed_request_gets_400_and_the_server_keeps_serving(
    request_bytes: bytes, eof: bool
) -> None:
    async def scenario(server: HealthServer) -> tuple[Response, Response]:
        bad = await _exchange(server.port, request_bytes, eof=eof)
        return bad, await _get(server.port, "/healthz")

    bad, after = _serve(ServiceMetrics(), scenario)
    assert bad[0] == 400
    assert after[0] == 200


def test_oversized_head_gets_431_and_a_silent_client_408() -> None:
    big = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 40_000 + b"\r\n\r\n"

    async def scenario(server: HealthServer) -> tuple[Response, Response, Response]:
        too_big = await _exchange(server.port, big)
        silent = await _exchange(server.port, b"GET /healthz HTTP/1.1\r\n")  # never finishes
        return too_big, silent, await _get(server.port, "/healthz")

    too_big, silent, after = _serve(ServiceMetrics(), scenario, read_timeout_s=0.2)
    assert too_big[0] == 431
    assert silent[0] == 408
    assert after[0] == 200


def test_lifecycle_port_start_and_stop() -> None:
    async def scenario() -> tuple[int, int, bytes]:
        server = HealthServer(ServiceMetrics(), read_timeout_s=30.0)
        before = server.port
        await server.start()
        with pytest.raises(RuntimeError):
            await server.start()
        bound = server.port
        # A client that opened a connection and stalls must not hold stop() up.
        reader, writer = await asyncio.open_connection("127.0.0.1", bound)
        writer.write(b"GET /heal")
        await writer.drain()
        await asyncio.sleep(0.05)  # let the server accept it (no public hook to wait on)
        await asyncio.wait_for(server.stop(), 1.0)
        await server.stop()  # twice is fine
        try:
            tail = await asyncio.wait_for(reader.read(), 1.0)
        except ConnectionResetError:
            tail = b""
        writer.close()
        await writer.wait_closed()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", bound)
        return before, bound, tail

    before, bound, tail = asyncio.run(scenario())
    assert before == 0
    assert bound > 0
    assert tail == b""


def test_stop_cuts_open_connections_quietly(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients still holding connections at shutdown (idle, half a request, a keep-alive after
    its answer) are cut without a traceback each (Python 3.11 logged one per connection)."""
    monkeypatch.setattr(health_module, "_LINGER_S", 30.0)  # the answered client is still held
    caplog.set_level(logging.DEBUG, logger=health_module.__name__)

    async def scenario() -> bytes:
        server = HealthServer(ServiceMetrics(), read_timeout_s=30.0)
        await server.start()
        clients = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        _idle, (_, half), (kept_r, kept) = clients  # the first sends nothing
        half.write(b"GET /heal")
        kept.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.gather(half.drain(), kept.drain())
        # Answered and half-closed by the server, which now lingers on the connection; accepted
        # after the other two, so they are being served by now as well.
        answer = await asyncio.wait_for(kept_r.read(), 2.0)
        await asyncio.wait_for(server.stop(), 1.0)
        for _, w in clients:
            w.close()
            await w.wait_closed()
        return answer

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200 OK")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    cut = [r for r in caplog.records if "cut by stop()" in r.getMessage()]
    assert len(cut) == 3 and all(r.levelno == logging.DEBUG for r in cut)


# -- EventLoopLagMonitor --------------------------------------------------------------------------


class _RecordingMetrics(ServiceMetrics):
    """Real metrics that also keep every loop-lag sample, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.loop_lags_s: list[float] = []

    def set_event_loop_lag(self, lag_s: float) -> None:
        self.loop_lags_s.append(lag_s)
        super().set_event_loop_lag(lag_s)


async def _wait_until(cond: Callable[[], bool], timeout_s: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    async def scenario() -> tuple[list[float], list[float], float | None]:
        idle = _RecordingMetrics()
        async with EventLoopLagMonitor(idle, interval_s=0.1):
            await _wait_until(lambda: len(idle.loop_lags_s) >= 2)

        m = _RecordingMetrics()
        monitor = EventLoopLagMonitor(m, interval_s=0.02)
        monitor.start()
        with pytest.raises(RuntimeError):
            monitor.start()
        await asyncio.sleep(0)  # the probe starts its first sleep
        asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # blocks the loop
        await _wait_until(lambda: any(lag >= 0.2 for lag in m.loop_lags_s))
        await monitor.stop()
        await monitor.stop()  # twice is fine
        n_after_stop = len(m.loop_lags_s)
        await asyncio.sleep(0.05)
        assert len(m.loop_lags_s) == n_after_stop  # the probe is gone
        return (
            idle.loop_lags_s,
            m.loop_lags_s,
            m.registry.get_sample_value("stream_vae_event_loop_lag_seconds"),
        )

    idle, blocked, gauge = asyncio.run(scenario())
    # Lag is what comes on top of the interval: an idle loop shows (almost) none of it.
    assert all(0.0 <= lag < 0.1 for lag in idle)
    peak = max(blocked)
    assert 0.2 <= peak < 0.6
    assert gauge == blocked[-1]


def test_loop_lag_monitor_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        EventLoopLagMonitor(ServiceMetrics(), interval_s=0)

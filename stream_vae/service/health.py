"""A tiny HTTP server for /metrics, /healthz, /readyz and /accounting, and an event-loop lag
probe (an I/O edge of the service; the metrics themselves live in
:mod:`stream_vae.service.metrics`).

:class:`HealthServer` serves, on 127.0.0.1 by default, with plain ``asyncio.start_server`` and
one request per connection (``Connection: close``)::

    GET /metrics      Prometheus text format (0.0.4)
    GET /healthz      200 "ok" while the event loop runs
    GET /readyz       200 once ServiceMetrics.set_ready(True), else 503
    GET /accounting   JSON of ServiceMetrics.accounting()

Typical wiring in the service's entry point::

    metrics = ServiceMetrics()
    async with HealthServer(metrics, port=9308), EventLoopLagMonitor(metrics):
        ...                       # run the service; it calls metrics.add_records_in(...), ...
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType

from prometheus_client import generate_latest

from .. import _json
from .metrics import METRICS_CONTENT_TYPE, WARN_LOOP_LAG_S, ServiceMetrics

__all__ = ["EventLoopLagMonitor", "HealthServer"]

log = logging.getLogger(__name__)


class _StopsOnExit:
    """``async with`` stops it on the way out, whatever happened inside."""

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 method token
_VERSIONS = frozenset({"HTTP/1.0", "HTTP/1.1"})
# After an error answer the client may still be sending (a huge header, a body): read and drop a
# bounded amount before closing, or the kernel answers with a RST that can destroy the response.
_LINGER_S = 0.5
_LINGER_MAX_BYTES = 64 * 1024


def _parse_head(head: bytes) -> tuple[str, str] | None:
    """``(method, path)`` of a request head ending in CRLF CRLF, or None if malformed."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    request_line, *fields = text[:-4].split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not target.startswith("/") or version not in _VERSIONS:
        return None
    if any(":" not in f or f[0] in " \t" for f in fields):
        return None
    return method, target.split("?", 1)[0]


class HealthServer(_StopsOnExit):
    """``/metrics``, ``/healthz``, ``/readyz`` and ``/accounting`` over minimal HTTP/1.1.

    No I/O until :meth:`start`. One request per connection; GET only.

    Parameters
    ----------
    metrics
        The metrics to serve.
    host
        One address to bind (the default keeps the endpoint off the network).
    port
        Port to bind; 0 lets the OS pick one, see :attr:`port`.
    max_header_bytes
        Largest request head accepted; a longer one gets 431.
    read_timeout_s
        Time a client gets to send its request head (408 after that), and to take the response.
    """

    def __init__(
        self,
        metrics: ServiceMetrics,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_header_bytes: int = 8 * 1024,
        read_timeout_s: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self._port_requested = port
        self.max_header_bytes = max_header_bytes
        self.read_timeout_s = read_timeout_s
        self._server: asyncio.Server | None = None
        self._bound_port = 0
        self._connections: set[asyncio.Task[object]] = set()

    @property
    def port(self) -> int:
        """The bound port while running, else the port asked for (0: not bound yet)."""
        return self._bound_port if self._server is not None else self._port_requested

    async def start(self) -> None:
        """Bind and start serving (raises RuntimeError if already running)."""
        if self._server is not None:
            raise RuntimeError("HealthServer is already running")
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port_requested, limit=self.max_header_bytes
        )
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        log.info("health server listening on http://%s:%d", self.host, self._bound_port)

    async def stop(self) -> None:
        """Stop listening, cut connections in flight and wait for them; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        log.info("health server on %s:%d stopped", self.host, self._bound_port)

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            response = await self._respond(reader)
            await self._send(writer, response)
            await self._linger(reader, writer)
        except (ConnectionError, TimeoutError) as e:
            log.debug("health server: client %s went away: %r", peer, e)
        except asyncio.CancelledError:
            if self._server is not None:
                raise  # not our stop(): whoever cancelled the task waits for it
            # stop() cut a client holding its connection open (idle, keep-alive, half a request):
            # an expected end, so the task returns instead of ending cancelled, which Python
            # 3.11's start_server callback would log as an error with a traceback.
            log.debug("health server: connection from %s cut by stop()", peer)
        except Exception:  # the connection boundary: one bad request must not stop the server
            log.exception("health server: request from %s failed", peer)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError) as e:
                log.debug("health server: closing connection to %s: %r", peer, e)

    async def _respond(self, reader: asyncio.StreamReader) -> _Response:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout_s)
        except asyncio.LimitOverrunError:
            return _Response(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n"
            )
        except asyncio.IncompleteReadError:
            return _Response(HTTPStatus.BAD_REQUEST, b"incomplete request\n")
        except TimeoutError:
            return _Response(HTTPStatus.REQUEST_TIMEOUT, b"request timeout\n")
        parsed = _parse_head(head)
        if parsed is None:
            return _Response(HTTPStatus.BAD_REQUEST, b"bad request\n")
        method, path = parsed
        if method != "GET":
            return _Response(
                HTTPStatus.METHOD_NOT_ALLOWED, b"GET only\n", headers=(("Allow", "GET"),)
            )
        return self._route(path)

    def _route(self, path: str) -> _Response:
        if path == "/metrics":
            return _Response(200, generate_latest(self.metrics.registry), METRICS_CONTENT_TYPE)
        if path == "/healthz":
            return _Response(200, b"ok\n")
        if path == "/readyz":
            if self.metrics.ready:
                return _Response(200, b"ready\n")
            return _Response(HTTPStatus.SERVICE_UNAVAILABLE, b"not ready\n")
        if path == "/accounting":
            return _Response(200, _json.dumps(self.metrics.accounting()), "application/json")
        return _Response(HTTPStatus.NOT_FOUND, b"not found\n")

    async def _send(self, writer: asyncio.StreamWriter, r: _Response) -> None:
        lines = [
            f"HTTP/1.1 {int(r.status)} {HTTPStatus(r.status).phrase}",
            f"Content-Type: {r.content_type}",
            f"Content-Length: {len(r.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in r.headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + r.body)
        await asyncio.wait_for(writer.drain(), self.read_timeout_s)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then drop what the client still sends, within bounds."""
        if writer.can_write_eof():
            writer.write_eof()
        n_read = 0
        try:
            async with asyncio.timeout(_LINGER_S):
                while n_read < _LINGER_MAX_BYTES:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    n_read += len(chunk)
        except TimeoutError:
            return


class EventLoopLagMonitor(_StopsOnExit):
    """Measures how late ``asyncio.sleep(interval_s)`` wakes up; sets ``event_loop_lag_seconds``.

    A lag well above zero means something blocks the loop (a forward pass not moved to the
    executor, a large synchronous decode), which starves aiokafka's heartbeat.

    Parameters
    ----------
    metrics
        Where the lag goes.
    interval_s
        Time between probes; also the resolution of a stall's start.
    """

    def __init__(self, metrics: ServiceMetrics, interval_s: float = 0.5) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing on the running loop (raises RuntimeError if already started)."""
        if self._task is not None:
            raise RuntimeError("EventLoopLagMonitor is already running")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-vae-loop-lag")

    async def stop(self) -> None:
        """Cancel the probe and wait for it; safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> EventLoopLagMonitor:
        self.start()
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval_s)
            lag_s = max(0.0, loop.time() - t0 - self.interval_s)
            self.metrics.set_event_loop_lag(lag_s)
            if lag_s >= WARN_LOOP_LAG_S:
                log.warning("event loop blocked: a timer woke %.3f s late", lag_s)

"""The Tansu broker as a child process: launch it on a free loopback port, wait until it is
ready, stop it, restart it on the same port, and keep its log.

Storage is in memory by default. This Tansu build also stores to S3 (``s3://bucket/``, with
``AWS_ENDPOINT`` and credentials passed through ``env``): a restart then finds the topics,
records and committed offsets again, since the cluster id (the data lives under
``clusters/<cluster-id>/``) is fixed for the life of an :class:`EmbeddedBroker`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from .binary import locate_tansu
from .errors import BrokerError, PortInUseError
from .probe import POLL_S, run_blocking, wait_for_kafka

__all__ = ["EmbeddedBroker"]

logger = logging.getLogger(__name__)

# Tansu reads settings such as SCHEMA_REGISTRY or OTEL_EXPORTER_OTLP_ENDPOINT from its
# environment; a stray one inherited from the parent would change the broker's behaviour. The
# statically linked binary needs nothing else, so it gets a hermetic environment; NO_COLOR keeps
# ANSI escapes out of the log.
_TANSU_ENV = {"NO_COLOR": "1"}

# SIGTERM makes Tansu exit in milliseconds; the grace period only matters if it hangs.
_TERM_GRACE_S = 5.0
# A free port picked by binding to port 0 can be taken by someone else before Tansu binds it.
_N_PORT_ATTEMPTS = 3
_N_TAIL_LINES = 40


def _free_port(host: str) -> int:
    """Ask the OS for a currently free TCP port on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise BrokerError(f"cannot listen on {host}: {exc}") from exc
        port: int = sock.getsockname()[1]
    return port


def _url_host(host: str) -> str:
    """Bracket IPv6 literals for use in URLs and ``host:port`` strings."""
    return f"[{host}]" if ":" in host else host


class EmbeddedBroker:
    """A Tansu broker run as a child process on a loopback port (in-memory storage by default).

    Parameters
    ----------
    port
        TCP port to listen on; ``None`` picks a free one at :meth:`start`.
    host
        Address to listen on and advertise to clients.
    startup_timeout_s
        How long :meth:`start` waits for the broker to answer metadata requests.
    log_path
        Where the broker's stdout/stderr go; ``None`` uses a temporary directory that
        :meth:`stop` removes (the log's tail stays available through :meth:`log_tail`).
    storage_engine
        Tansu's ``--storage-engine`` URL: ``memory://tansu/`` (lost at stop), or
        ``s3://bucket/`` (durable: survives :meth:`restart`; needs ``env``).
    env
        Variables added to the broker's (otherwise hermetic) environment, such as
        ``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID`` and ``AWS_ALLOW_HTTP`` for S3 storage.

    Examples
    --------
    >>> broker = EmbeddedBroker()
    >>> broker.running
    False
    >>> broker.stop()  # safe before start
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 30.0,
        log_path: Path | None = None,
        storage_engine: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self.storage_engine = storage_engine
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._tmpdir: Path | None = None
        self._log_file: Path | None = None
        # Unique per instance, so that the readiness probe tells our broker from any other
        # process answering on the port; fixed across restarts, so that durable storage (kept
        # under clusters/<cluster-id>/) is found again.
        self._cluster_id = f"stream-vae-{uuid.uuid4().hex[:12]}"
        self._n_launches = 0
        self._last_log = ""

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the running (or last started) broker."""
        port = self._port if self._port is not None else self.port
        if port is None:
            raise BrokerError("the broker has no port yet: call start() first")
        return f"{_url_host(self.host)}:{port}"

    def start(self) -> None:
        """Start the broker and return once it answers Kafka metadata requests.

        Raises
        ------
        BrokerError
            If the binary is missing, the broker exits early, or it is not ready before
            ``startup_timeout_s``; the message carries the tail of the broker's log.
        """
        self._start(self.port)

    def restart(self) -> None:
        """Stop the broker if it runs, then start it again on the port it last listened on,
        with the same cluster id and storage (with ``s3://`` storage, the topics, records and
        committed offsets are there again); clients reconnect on their own.

        Raises
        ------
        BrokerError
            If the broker was never started, or as :meth:`start` (also when another process
            took the port while the broker was down).
        """
        port = self._port if self._port is not None else self.port
        if port is None:
            raise BrokerError("the broker was never started: call start() first")
        self.stop()
        self._start(port)

    def _start(self, fixed_port: int | None) -> None:
        if self._proc is not None:
            raise BrokerError(f"broker already started on {self.bootstrap_servers}")
        binary = locate_tansu()
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout_s
        n_attempts = 1 if fixed_port is not None else _N_PORT_ATTEMPTS
        for attempt in range(1, n_attempts + 1):
            port = fixed_port if fixed_port is not None else _free_port(self.host)
            try:
                proc = self._launch(binary, port)
                self._wait_ready(proc, port, deadline)
            except PortInUseError as exc:
                self.stop()
                if attempt == n_attempts:
                    raise BrokerError(f"{exc}\n--- broker log ---\n{self.log_tail()}") from exc
                logger.info("port %d was taken (%s); retrying on another port", port, exc)
                continue
            except BaseException:
                self.stop()
                raise
            logger.info(
                "tansu broker ready on %s in %.3f s (storage %s, log: %s)",
                self.bootstrap_servers,
                time.monotonic() - t0,
                self.storage_engine,
                self._log_file,
            )
            return

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and wait for it; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=_TERM_GRACE_S)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "broker pid %d ignored SIGTERM for %.1f s; killing it",
                        proc.pid,
                        _TERM_GRACE_S,
                    )
                    proc.kill()
                    proc.wait()
            logger.info(
                "tansu broker pid %d on port %s exited (%d)", proc.pid, self._port, proc.returncode
            )
        self._release_log()

    def log_tail(self, n_lines: int = _N_TAIL_LINES) -> str:
        """Return the last ``n_lines`` lines of the broker's log ("" if there is none yet)."""
        if self._log_file is not None and self._log_file.is_file():
            text = self._log_file.read_text(encoding="utf-8", errors="replace")
        else:
            text = self._last_log
        return "\n".join(text.splitlines()[-n_lines:])

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker(host={self.host!r}, port={self._port or self.port}, {state})"

    def _launch(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        """Spawn Tansu on ``port`` with its output going to the log file."""
        if self.log_path is not None:
            log_file = self.log_path
            log_file.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="stream-vae-tansu-"))
            log_file = self._tmpdir / "tansu.log"
        self._log_file = log_file
        self._port = port
        url = f"tcp://{_url_host(self.host)}:{port}"
        cmd = [
            str(binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage_engine,
            "--cluster-id", self._cluster_id,
        ]  # fmt: skip
        logger.debug("starting %s", " ".join(cmd))
        # A restart appends to a log_path the caller keeps. The child keeps its own copy of the
        # descriptor; ours can close right away.
        mode = "ab" if self._n_launches and self.log_path is not None else "wb"
        self._n_launches += 1
        with log_file.open(mode) as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**_TANSU_ENV, **self.env},
            )
        self._proc = proc
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        """Wait for the port to accept connections, then for a metadata answer from our cluster."""
        while True:
            if proc.poll() is not None:
                log = self.log_tail()
                if "AddrInUse" in log:
                    raise PortInUseError(f"port {port} on {self.host} is already in use")
                raise BrokerError(
                    f"tansu broker exited early with code {proc.returncode} "
                    f"on {self.bootstrap_servers}\n--- broker log ---\n{log}"
                )
            if time.monotonic() >= deadline:
                raise self._not_ready()
            try:
                with socket.create_connection((self.host, port), timeout=POLL_S * 5):
                    break
            except OSError:
                # An interruptible sleep: returns at once if the broker exits.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=POLL_S)
        remaining = max(deadline - time.monotonic(), POLL_S)
        bootstrap, cluster_id = self.bootstrap_servers, self._cluster_id
        try:
            run_blocking(lambda: wait_for_kafka(bootstrap, remaining, cluster_id=cluster_id))
        except PortInUseError:
            raise
        except BrokerError as exc:
            raise self._not_ready() from exc

    def _not_ready(self) -> BrokerError:
        return BrokerError(
            f"tansu broker on {self.bootstrap_servers} not ready within "
            f"{self.startup_timeout_s:.1f} s\n--- broker log ---\n{self.log_tail()}"
        )

    def _release_log(self) -> None:
        """Keep the log's tail in memory and remove our temporary directory."""
        if self._log_file is not None and self._log_file.is_file():
            self._last_log = self._log_file.read_text(encoding="utf-8", errors="replace")
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._log_file = None

"""Readiness probing: ask a Kafka-compatible broker for its metadata until it answers.

:func:`run_blocking` runs such a probe (or any coroutine) from synchronous code, whether or not
the calling thread already runs an event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from .errors import BrokerError, PortInUseError

__all__ = ["POLL_S", "run_blocking", "wait_for_kafka"]

_T = TypeVar("_T")

# Granularity of the startup polls: Tansu binds its port within ~10 ms, so a 20 ms tick keeps
# startup latency low without spinning.
POLL_S = 0.02
# One metadata probe against a listening broker answers in milliseconds; the cap only bounds a
# probe against a broker that accepts connections but never answers.
_PROBE_TIMEOUT_S = 2.0


async def wait_for_kafka(
    bootstrap_servers: str, timeout_s: float = 30.0, *, cluster_id: str | None = None
) -> str:
    """Wait until a Kafka-compatible broker answers a metadata request.

    Parameters
    ----------
    bootstrap_servers
        ``host:port[,host:port...]`` of the cluster.
    timeout_s
        How long to keep trying, in seconds.
    cluster_id
        If given, the cluster that answers must have this id (guards against another broker
        listening on the same port).

    Returns
    -------
    str
        The cluster id the broker reported.

    Raises
    ------
    BrokerError
        If no broker answered before the timeout, or the wrong cluster answered.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_error: BaseException | None = None
    while (remaining := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(min(remaining, _PROBE_TIMEOUT_S)):
                found = await _describe_cluster(bootstrap_servers)
        except (KafkaError, OSError, TimeoutError) as exc:
            last_error = exc
            await asyncio.sleep(min(POLL_S * 5, max(deadline - loop.time(), 0.0)))
            continue
        if cluster_id is not None and found != cluster_id:
            raise PortInUseError(
                f"another broker (cluster {found!r}) answers on {bootstrap_servers}; "
                f"expected {cluster_id!r}: is the port taken?"
            )
        return found
    raise BrokerError(
        f"no Kafka metadata answer from {bootstrap_servers} within {timeout_s:.1f} s "
        f"(last error: {last_error!r})"
    )


async def _describe_cluster(bootstrap_servers: str) -> str:
    """Send one metadata request; return the cluster id if at least one broker is listed."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(_PROBE_TIMEOUT_S * 1000),
        client_id="stream-vae-broker-probe",
    )
    try:
        await admin.start()
        meta = await admin.describe_cluster()
    finally:
        await admin.close()
    if not meta.get("brokers"):
        raise OSError(f"{bootstrap_servers} answered metadata with no brokers")
    return str(meta.get("cluster_id"))


def run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, in a fresh event loop.

    ``asyncio.run`` refuses to run inside a thread whose loop is already running (a notebook, or
    async code calling ``start()``), so in that case the coroutine runs on a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-vae-broker") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()

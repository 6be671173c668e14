"""Alerts to people: ``stream-vae route`` reads the alert topic in its own consumer group and
delivers each batch to an Alertmanager (``/api/v2/alerts``) and/or a generic JSON webhook.

Delivery is at-least-once, in the topic's order per series: a batch is committed only after
every receiver took it. A receiver that is down, or answers 5xx, 408 or 429, is retried with
a doubling wait (``route.backoff_initial_s`` up to ``route.backoff_max_s``) for as long as it
takes, so a receiver outage delays alerts and loses none. Any other 4xx means the request itself
is refused and would be again: it is logged with the alert ids and the batch goes on.

Alertmanager keys an alert by its labels, so an open and its close must carry the same ones:
``alertname`` (``stream-vae``), ``series``, ``kind``, ``model_version``, ``alert_id`` and
``top_feature``, the latter as the open said it (the router remembers the opens it saw; a close
whose open it did not see, after a restart, uses its own). An open is sent firing until
``ts + route.open_ttl_s``; its close resolves it (``endsAt`` = the close's time).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from .. import _json
from ..config import KafkaSettings, RouteSettings
from ..contracts import AlertMessage
from ..errors import ConfigError, KafkaUnavailableError
from ..logs import printable
from .kafka import make_consumer

__all__ = ["Router", "to_alertmanager"]

log = logging.getLogger(__name__)

_REMEMBERED_OPENS = 100_000  # top features of open episodes, for their closes' labels
_RETRIED = frozenset({408, 429})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def to_alertmanager(
    msg: Mapping[str, Any], *, top_feature: str, open_ttl_s: float
) -> dict[str, Any]:
    """One alert message as an Alertmanager v2 alert (``postableAlert``)."""
    top = ", ".join(f"{t['feature']} {t['share']:.0%}" for t in msg.get("top_features", []))
    score, threshold = msg.get("score"), msg.get("threshold")
    measure = (
        f"score {score:.3g} over {threshold:.3g}"
        if isinstance(score, float | int) and isinstance(threshold, float | int)
        else "scores undefined"
    )
    annotations = {
        "summary": f"{msg['kind']} on {msg['series_id']}: {measure}; top: {top or 'none'}",
        "episode_start": _iso(msg["episode_start_ts"]),
    }
    if msg.get("expected"):
        annotations["expected"] = "; ".join(
            f"{e['feature']} observed {e['observed']:.4g}, expected {e['expected']:.4g}"
            for e in msg["expected"]
            if e.get("observed") is not None and e.get("expected") is not None
        )
    if msg.get("cluster"):
        annotations["recurring"] = f"episode {msg['cluster_count']} of kind {msg['cluster']}"
    if msg.get("reason"):
        annotations["reason"] = str(msg["reason"])
    ends = msg["ts"] if msg["event"] == "close" else msg["ts"] + open_ttl_s
    return {
        "labels": {
            "alertname": "stream-vae",
            "series": msg["series_id"],
            "kind": msg["kind"],
            "model_version": msg["model_version"],
            "alert_id": msg["alert_id"],
            "top_feature": top_feature,
        },
        "annotations": annotations,
        "startsAt": _iso(msg["episode_start_ts"]),
        "endsAt": _iso(ends),
    }


def _post(url: str, body: bytes, timeout_s: float) -> int:
    """POST JSON; the HTTP status, or 0 when nothing answered (refused, timed out, reset)."""
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


class Router:
    """The alert topic to the configured receivers (``async with`` or :meth:`run`)."""

    def __init__(self, kafka: KafkaSettings, route: RouteSettings) -> None:
        if not (route.alertmanager_url or route.webhook_url):
            raise ConfigError(
                "route: no receiver: set route.alertmanager_url (STREAM_VAE_ROUTE__"
                "ALERTMANAGER_URL) and/or route.webhook_url (STREAM_VAE_ROUTE__WEBHOOK_URL)"
            )
        self.kafka, self.route = kafka, route
        self._tops: OrderedDict[str, str] = OrderedDict()
        # what happened, for the log line at exit and for tests
        self.counts = {
            "consumed": 0,
            "invalid": 0,
            "delivered": 0,
            "refused": 0,
            "retries": 0,
            "skipped": 0,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, deliver and commit until ``stop`` is set; a batch not yet delivered when it
        is set is not committed (the next run delivers it)."""
        consumer = make_consumer(self.kafka, self.kafka.alert_topic, group_id=self.route.group_id)
        try:
            await consumer.start()
        except (OSError, KafkaError) as exc:
            await consumer.stop()
            raise KafkaUnavailableError(
                f"cannot reach Kafka at {self.kafka.bootstrap_servers}: {exc}"
            ) from None
        log.info("routing %s (group %s)", self.kafka.alert_topic, self.route.group_id)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=self.route.max_batch)
                records = [r for rs in batches.values() for r in rs]
                if not records:
                    continue
                self.counts["consumed"] += len(records)
                messages = self._alerts(records)
                if not await self._deliver(messages, stop):
                    return  # stopped mid-retry: uncommitted, redelivered next time
                await consumer.commit()
        finally:
            await consumer.stop()
            log.info("router stopped: %s", self.counts)

    def _alerts(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
        """The records that are alert messages (the published contract), as they are; anything
        else on the topic (another producer's, a tombstone) is logged with its coordinates,
        counted and passed over: kept, it would stop the router at the same offset forever."""
        out = []
        for r in records:
            try:
                AlertMessage.model_validate_json(r.value or b"")
            except ValidationError as exc:
                self.counts["invalid"] += 1
                log.error(
                    "%s[%d]@%d is not an alert message, passed over: %s",
                    r.topic,
                    r.partition,
                    r.offset,
                    printable(str(exc).splitlines()[0]),
                    extra={"topic": r.topic, "partition": r.partition, "offset": r.offset},
                )
                continue
            out.append(_json.loads(r.value or b""))
        return out

    async def _deliver(self, messages: Sequence[dict[str, Any]], stop: asyncio.Event) -> bool:
        wanted = [m for m in messages if not self.route.kinds or m.get("kind") in self.route.kinds]
        self.counts["skipped"] += len(messages) - len(wanted)
        if not wanted:
            return True
        r = self.route
        if r.alertmanager_url:
            alerts = [
                to_alertmanager(m, top_feature=self._top_feature(m), open_ttl_s=r.open_ttl_s)
                for m in wanted
            ]
            url = r.alertmanager_url.rstrip("/") + "/api/v2/alerts"
            if not await self._post(url, _json.dumps(alerts), wanted, stop):
                return False
        if r.webhook_url and not await self._post(
            r.webhook_url, _json.dumps({"alerts": wanted}), wanted, stop
        ):
            return False
        self.counts["delivered"] += len(wanted)
        return True

    def _top_feature(self, msg: Mapping[str, Any]) -> str:
        """The open's top feature for both its events (Alertmanager's identity is the labels)."""
        aid = msg["alert_id"]
        if msg["event"] == "close" and aid in self._tops:
            return self._tops.pop(aid)
        tops = msg.get("top_features") or [{"feature": ""}]
        top = str(tops[0]["feature"])
        if msg["event"] == "open":
            self._tops[aid] = top
            while len(self._tops) > _REMEMBERED_OPENS:
                self._tops.popitem(last=False)
        return top

    async def _post(
        self, url: str, body: bytes, msgs: Sequence[Mapping[str, Any]], stop: asyncio.Event
    ) -> bool:
        """Deliver one request, retrying what may succeed later; False if stopped first."""
        wait = self.route.backoff_initial_s
        while True:
            status = await asyncio.to_thread(_post, url, body, self.route.timeout_s)
            if 200 <= status < 300:
                return True
            if 400 <= status < 500 and status not in _RETRIED:
                self.counts["refused"] += len(msgs)
                log.error(
                    "%s refused %d alerts with HTTP %d (not retried): %s",
                    url,
                    len(msgs),
                    status,
                    printable(",".join(str(m["alert_id"]) for m in msgs)),
                )
                return True
            self.counts["retries"] += 1
            log.warning(
                "%s: %s; retrying in %.1f s",
                url,
                f"HTTP {status}" if status else "no answer",
                wait,
            )
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return False
            except TimeoutError:
                pass
            wait = min(wait * 2, self.route.backoff_max_s)

"""What a stream of alert messages amounts to: episodes by kind, incidents, recurring kinds.

The offline side of alert shaping (``stream-vae incidents --alerts FILE``): it reads alert
messages as published (dicts, e.g. one JSON object per line from a topic dump) and says how
many episodes of each kind there were, which fleet incidents, which series alerted most, and
which recurring kinds of anomaly — by the ``cluster`` the service gave each episode, or, for
messages without one (an older service), by clustering their top features here the same way
(:class:`~stream_vae.scoring.clusters.EpisodeClusters`).

Examples
--------
>>> msgs = [
...     {"series_id": "a", "event": "open", "kind": "anomaly", "ts": 0.0,
...      "top_features": [{"feature": "temp", "share": 0.9}]},
...     {"series_id": "b", "event": "open", "kind": "anomaly", "ts": 5.0,
...      "top_features": [{"feature": "temp", "share": 0.8}]},
...     {"series_id": "b", "event": "open", "kind": "flatline", "ts": 6.0, "top_features": []},
... ]
>>> d = digest(msgs)
>>> d.opens_by_kind, [(k.cluster, k.episodes, k.features[0]) for k in d.kinds]
({'anomaly': 2, 'flatline': 1}, [('offline-k1', 2, 'temp')])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .clusters import EpisodeClusters

__all__ = ["Digest", "RecurringKind", "digest", "format_digest"]


@dataclass(frozen=True, slots=True)
class RecurringKind:
    cluster: str
    episodes: int
    series: int  # distinct series with an episode of this kind
    features: tuple[str, ...]  # the most blamed, most first


@dataclass(frozen=True, slots=True)
class Digest:
    n_messages: int
    opens_by_kind: dict[str, int]
    incidents: list[dict[str, Any]]  # each incident's open message
    busiest: list[tuple[str, int]]  # (series, episodes opened), most first
    kinds: list[RecurringKind]  # most episodes first


def digest(messages: Iterable[Mapping[str, Any]], top: int = 5) -> Digest:
    """Summarise alert messages (dicts with at least ``series_id``, ``event``)."""
    msgs = list(messages)
    opens = [m for m in msgs if m.get("event") == "open"]
    by_kind = Counter(str(m.get("kind", "anomaly")) for m in opens)
    anomalies = [m for m in opens if m.get("kind", "anomaly") == "anomaly"]
    busiest = Counter(str(m["series_id"]) for m in anomalies).most_common(top)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    names = sorted({t["feature"] for m in anomalies for t in m.get("top_features", [])})
    offline = EpisodeClusters()
    for m in anomalies:
        cluster = m.get("cluster")
        if not cluster:  # a message from before the service clustered: do it here
            v = np.zeros(max(len(names), 1))
            for t in m.get("top_features", []):
                v[names.index(t["feature"])] = float(t["share"])
            cluster = "offline-" + offline.assign(v)[0]
        groups.setdefault(str(cluster), []).append(m)
    kinds = []
    for cluster, ms in groups.items():
        blame: dict[str, float] = {}
        for m in ms:
            for t in m.get("top_features", []):
                blame[t["feature"]] = blame.get(t["feature"], 0.0) + float(t["share"])
        kinds.append(
            RecurringKind(
                cluster,
                len(ms),
                len({m["series_id"] for m in ms}),
                tuple(sorted(blame, key=lambda f: -blame[f])[:3]),
            )
        )
    kinds.sort(key=lambda k: (-k.episodes, k.cluster))
    incidents = [dict(m) for m in opens if m.get("kind") == "incident"]
    return Digest(len(msgs), dict(sorted(by_kind.items())), incidents, busiest, kinds[:top])


def format_digest(d: Digest) -> str:
    """The digest as lines of text for a terminal."""
    lines = [f"{d.n_messages} alert messages; episodes opened by kind:"]
    lines += [f"  {k}: {n}" for k, n in d.opens_by_kind.items()] or ["  (none)"]
    lines.append(f"fleet incidents: {len(d.incidents)}")
    for inc in d.incidents:
        feats = ", ".join(t["feature"] for t in inc.get("top_features", []))
        lines.append(
            f"  at {inc.get('ts')}: {len(inc.get('members', []))} series at first, "
            f"sharing {feats or '-'}"
        )
    lines.append("series with the most anomaly episodes:")
    lines += [f"  {s}: {n}" for s, n in d.busiest] or ["  (none)"]
    lines.append("recurring kinds of anomaly (by what they blame):")
    lines += [
        f"  {k.cluster}: {k.episodes} episodes on {k.series} series, blaming "
        f"{', '.join(k.features) or '-'}"
        for k in d.kinds
    ] or ["  (none)"]
    return "\n".join(lines)

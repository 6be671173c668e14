"""One generic suite of checks over every stateful streaming part (river's `check_estimator` idea).

Each part is described by a :class:`Case`: how to build it, how to make a random input stream of
n rows, and how to feed rows ``[i, j)`` of that stream and get comparable outputs. The checks:
snapshot/restore continues identically, inputs are not mutated, seeded runs are identical, and
feeding the stream in one batch equals feeding it row by row (and in random chunks).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from stream_vae.core.records import RecordBatch
from stream_vae.core.windows import WindowStore
from stream_vae.evaluation.novelty import SeriesNovelty
from stream_vae.scoring.ema import SeriesEMA
from stream_vae.scoring.episodes import EpisodeTracker
from stream_vae.scoring.hybrid import HybridScore, ScoreParts
from stream_vae.scoring.scorer import Scorer

Stream = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Any]
    stream: Callable[[np.random.Generator, int], Stream]
    feed: Callable[[Any, Stream, int, int], list[Any]]  # outputs of rows [i, j), comparable


def _keys(rng: np.random.Generator, n: int, n_series: int = 4) -> list[str]:
    return [f"s{k}" for k in rng.integers(0, n_series, size=n)]


def _window_stream(rng: np.random.Generator, n: int) -> Stream:
    keys = _keys(rng, n)
    # mostly increasing per series, with some late points and gaps
    ts = np.cumsum(rng.choice([1.0, 1.0, 1.0, 5.0, -2.0], size=n))
    return {"batch": RecordBatch(tuple(keys), ts, rng.normal(size=(n, 2)).astype(np.float32))}


def _window_feed(store: WindowStore, s: Stream, i: int, j: int) -> list[Any]:
    b: RecordBatch = s["batch"]
    ready = store.push_many(b.slice(i, j))
    return [
        (k, float(t), v.tobytes())
        for k, t, v in zip(ready.keys, ready.ts, ready.values, strict=True)
    ]


def _score_stream(rng: np.random.Generator, n: int) -> Stream:
    return {
        "keys": _keys(rng, n),
        "ts": np.arange(n, dtype=np.float64),
        "x": rng.gamma(1.0, 1.0, size=n),
    }


def _ema_feed(ema: SeriesEMA | SeriesNovelty, s: Stream, i: int, j: int) -> list[Any]:
    return ema.update(s["keys"][i:j], s["x"][i:j]).tolist()  # type: ignore[no-any-return]


def _episode_feed(t: EpisodeTracker, s: Stream, i: int, j: int) -> list[Any]:
    events = t.update(s["keys"][i:j], s["ts"][i:j], s["x"][i:j], 1.5)
    return [(e.series_id, e.event, e.ts, e.episode_start_ts, e.peak_score) for e in events]


def _parts_stream(rng: np.random.Generator, n: int) -> Stream:
    return {
        "keys": _keys(rng, n),
        "ts": np.arange(n, dtype=np.float64),
        "parts": ScoreParts(
            rng.gamma(1.0, 1.0, size=(n, 3)).astype(np.float32),
            rng.gamma(2.0, 1.0, size=n).astype(np.float32),
        ),
    }


def _scorer() -> Scorer:
    rng = np.random.default_rng(0)
    fit_on = ScoreParts(
        rng.gamma(1.0, 1.0, size=(200, 3)).astype(np.float32),
        rng.gamma(2.0, 1.0, size=200).astype(np.float32),
    )
    return Scorer(HybridScore(0.7).fit(fit_on), 1.2, ("a", "b", "c"), "v-test", close_after=2)


def _scorer_feed(sc: Scorer, s: Stream, i: int, j: int) -> list[Any]:
    idx = np.arange(i, j)
    out = sc.update(s["keys"][i:j], s["ts"][i:j], s["parts"].take(idx))
    # one entry per row: its smoothed score and the alert events it caused (ts is unique here)
    return [
        (t, v, [a.to_dict() for a in out.alerts if a.ts == t])
        for t, v in zip(out.ts.tolist(), out.smoothed.tolist(), strict=True)
    ]


CASES = [
    Case(
        "WindowStore",
        lambda: WindowStore(3, 2, stride=2, max_gap_s=3.0, gap_policy="ffill", max_fill=2),
        _window_stream,
        _window_feed,
    ),
    Case(
        "WindowStore-reset-lru",
        lambda: WindowStore(4, 2, max_gap_s=3.0, max_series=3),
        _window_stream,
        _window_feed,
    ),
    Case("SeriesEMA", lambda: SeriesEMA(0.7), _score_stream, _ema_feed),
    Case("SeriesNovelty", lambda: SeriesNovelty(25, 0.99), _score_stream, _ema_feed),
    Case(
        "SeriesNovelty-censored",
        lambda: SeriesNovelty(25, 0.99, censor=0.2, censor_runs=2),
        _score_stream,
        _ema_feed,
    ),
    Case("EpisodeTracker", lambda: EpisodeTracker(0.8, 2, 3), _score_stream, _episode_feed),
    Case("Scorer", _scorer, _parts_stream, _scorer_feed),
]
N = 300


def _run(case: Case, s: Stream, cuts: list[int]) -> list[Any]:
    obj, out = case.build(), []
    for i, j in itertools.pairwise(cuts):
        out.extend(case.feed(obj, s, i, j))
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_batched_equals_one_by_one(case: Case) -> None:
    s = case.stream(np.random.default_rng(1), N)
    whole = _run(case, s, [0, N])
    assert whole, "the stream must produce output, or this check proves nothing"
    assert _run(case, s, list(range(N + 1))) == whole
    cuts = sorted({0, N, *np.random.default_rng(2).integers(1, N, size=12).tolist()})
    assert _run(case, s, cuts) == whole


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_snapshot_restore_continues_identically(case: Case) -> None:
    s = case.stream(np.random.default_rng(3), N)
    a = case.build()
    case.feed(a, s, 0, N // 2)
    b = case.build()
    b.restore(copy.deepcopy(a.snapshot()))
    assert case.feed(a, s, N // 2, N) == case.feed(b, s, N // 2, N)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inputs_are_not_mutated(case: Case) -> None:
    s = case.stream(np.random.default_rng(4), N)
    before = copy.deepcopy(s)
    _run(case, s, [0, N // 3, N])
    for k, v in s.items():
        if isinstance(v, RecordBatch):
            assert v.series_ids == before[k].series_ids
            assert np.array_equal(v.ts, before[k].ts)
            assert np.array_equal(v.values, before[k].values)
        elif isinstance(v, ScoreParts):
            assert np.array_equal(v.recon_features, before[k].recon_features)
            assert np.array_equal(v.latent, before[k].latent)
        elif isinstance(v, np.ndarray):
            assert np.array_equal(v, before[k])
        else:
            assert v == before[k]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_seeded_runs_are_identical(case: Case) -> None:
    a = _run(case, case.stream(np.random.default_rng(5), N), [0, N])
    b = _run(case, case.stream(np.random.default_rng(5), N), [0, N])
    assert a == b

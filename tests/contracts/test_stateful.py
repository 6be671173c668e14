"""One generic suite of checks over every stateful streaming part (river's `check_estimator` idea).

Each part is described by a :class:`Case`: how to build it, how to make a random input stream of
n rows, and how to feed rows ``[i, j)`` of that stream and get comparable outputs. The checks:
inputs are not mutated, seeded runs are identical, and feeding the stream in one batch equals
feeding it row by row (and in random chunks; parts whose output depends on the chunking say so).
The last is also what carries state from one call to the next: no part hands its state over
otherwise (the service rebuilds it by replaying the log).

A second suite checks the per-series state protocol (:class:`~stream_vae.core.state.SeriesState`)
over every part that implements it, and the :class:`~stream_vae.core.state.StateRegistry`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from stream_vae import _json
from stream_vae.core.records import RecordBatch
from stream_vae.core.state import SeriesState, StateRegistry
from stream_vae.core.windows import WindowStore
from stream_vae.lifecycle.drift import DriftMonitor
from stream_vae.lifecycle.reservoir import CleanReservoir
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.scoring.ema import SeriesEMA
from stream_vae.scoring.episodes import EpisodeTracker
from stream_vae.scoring.hybrid import HybridScore, ScoreParts
from stream_vae.scoring.novelty import SeriesNovelty
from stream_vae.scoring.quality import QualityMonitor
from stream_vae.scoring.reference import QualityReference
from stream_vae.scoring.scorer import Scorer
from stream_vae.scoring.spot import StreamingThreshold, TailStart
from stream_vae.service.offsets import ReplayWatermark

from ..conftest import TinyModel

Stream = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Any]
    stream: Callable[[np.random.Generator, int], Stream]
    feed: Callable[[Any, Stream, int, int], list[Any]]  # outputs of rows [i, j), comparable
    chunk_invariant: bool = True  # outputs do not depend on how the stream is cut


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


# a start fitted on gamma scores (the stream's) at their 0.99 quantile, and a short memory,
# so that a few hundred rows move it
_HELD_OUT = np.random.default_rng(9).gamma(1.0, 1.0, size=2000)
_T0 = float(np.quantile(_HELD_OUT, 0.99))
_START = TailStart.fit(_HELD_OUT, _T0, 0.01)


def _spot() -> StreamingThreshold:
    return StreamingThreshold(_START, _T0, 0.01, depth=50, floor=0.6, ceiling=2.0)


def _spot_feed(t: StreamingThreshold, s: Stream, i: int, j: int) -> list[Any]:
    return t.update(s["keys"][i:j], s["x"][i:j]).tolist()  # type: ignore[no-any-return]


def _quality() -> QualityMonitor:
    ref = QualityReference.fit(np.random.default_rng(0).normal(size=(40, 4, 2)))
    return QualityMonitor(ref, flatline_windows=2, close_after=2)


def _quality_stream(rng: np.random.Generator, n: int) -> Stream:
    w = rng.normal(size=(n, 4, 2))
    w[rng.random(n) < 0.3, :, 1] = 0.5  # frozen channel in some windows
    w[rng.random(n) < 0.1, -1, 0] = 9.0  # out of range in some
    return {"keys": _keys(rng, n), "ts": np.arange(n, dtype=np.float64), "w": w}


def _quality_feed(m: QualityMonitor, s: Stream, i: int, j: int) -> list[Any]:
    events = m.update(s["keys"][i:j], s["ts"][i:j], s["w"][i:j])
    return [(e.series_id, e.kind, e.event, e.ts, e.features) for e in events]


def _quality_state_feed(m: QualityMonitor, keys: list[str], t0: float, seed: int) -> list[Any]:
    w = np.random.default_rng(seed).normal(size=(len(keys), 4, 2))
    w[:, :, 1] = 0.5  # every window flat: each series opens after two
    return [(e.series_id, e.kind, e.event, e.ts) for e in m.update(keys, _row_ts(keys, t0), w)]


def _dspot_scorer() -> Scorer:
    base = _scorer()
    return Scorer(base.hybrid, 1.2, base.feature_names, "v-test", close_after=2, streaming=_spot())


def _gated_scorer() -> Scorer:
    base = _scorer()
    # a short history, so that a stream of a few hundred rows has repeats and new highs
    novelty = SeriesNovelty(20, 0.99, censor=0.3)
    return Scorer(
        base.hybrid, 0.8, base.feature_names, "v-test", novelty=novelty, novelty_gate=0.05
    )


def _scorer_feed(sc: Scorer, s: Stream, i: int, j: int) -> list[Any]:
    idx = np.arange(i, j)
    out = sc.update(s["keys"][i:j], s["ts"][i:j], s["parts"].take(idx))
    # one entry per row: its smoothed score and the alert events it caused (ts is unique here)
    return [
        (t, v, [_json.dumps(a.to_dict()) for a in out.alerts if a.ts == t])
        for t, v in zip(out.ts.tolist(), out.smoothed.tolist(), strict=True)
    ]


def _monitor(max_samples_per_batch: int) -> DriftMonitor:
    # small windows and one detector so that 300 rows (4 series, one sample in 2) drift
    return DriftMonitor(
        alpha=0.01,
        window_size=30,
        stat_size=10,
        n_detectors=1,
        min_detections=1,
        thin_every=2,
        max_samples_per_batch=max_samples_per_batch,
        min_interval_s=5.0,
        feature_names=("x", "y"),
        seed=3,
    )


def _drift_stream(rng: np.random.Generator, n: int) -> Stream:
    shift = (np.arange(n) >= n // 2).astype(np.float64)
    means = rng.normal(size=(n, 2))
    means[:, 0] += 4.0 * shift  # feature x's window mean moves too
    return {
        "keys": _keys(rng, n),
        "ts": np.arange(n, dtype=np.float64),
        "raw": rng.gamma(1.0, 1.0, size=n) + 3.0 * shift,  # the score distribution moves
        "means": means,
    }


def _drift_feed(m: DriftMonitor, s: Stream, i: int, j: int) -> list[Any]:
    events = m.update(s["keys"][i:j], s["ts"][i:j], s["raw"][i:j], s["means"][i:j])
    out: list[Any] = [dataclasses.astuple(e) for e in events]
    if j == len(s["keys"]):  # the end of the stream: how many samples the KS tests saw
        out.append(("n_sampled", m.n_sampled))
    return out


def _reservoir() -> CleanReservoir:
    return CleanReservoir(capacity=40, n_buckets=4, bucket_s=20.0, seed=5)


def _reservoir_stream(rng: np.random.Generator, n: int, *, late: bool = False) -> Stream:
    ts = np.sort(rng.uniform(0.0, 160.0, size=n))  # 8 strata of 20 s, ~37 windows each
    if late:
        ts = ts + rng.choice([0.0, 0.0, 0.0, -25.0], size=n)  # a quarter a stratum or two late
    return {
        "keys": _keys(rng, n),
        "ts": ts,
        "windows": rng.normal(size=(n, 3, 2)).astype(np.float32),
        "clean": rng.random(n) < 0.8,
    }


def _reservoir_feed(r: CleanReservoir, s: Stream, i: int, j: int) -> list[Any]:
    r.add(s["keys"][i:j], s["ts"][i:j], s["windows"][i:j], s["clean"][i:j])
    if j < len(s["keys"]):
        return []
    # the end of the stream: the sample held (it has no per-row output)
    sample = r.sample()
    return list(
        zip(sample.keys, sample.ts.tolist(), [w.tobytes() for w in sample.windows], strict=True)
    )


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
    Case("StreamingThreshold", _spot, _score_stream, _spot_feed),
    Case("Scorer-dspot", _dspot_scorer, _parts_stream, _scorer_feed),
    Case("Scorer-novelty-gate", _gated_scorer, _parts_stream, _scorer_feed),
    Case("QualityMonitor", _quality, _quality_stream, _quality_feed),
    # The drift monitor: with max_samples_per_batch at least a batch's sampled rows, chunking
    # changes nothing: the thinning counters and every KSWIN see the same samples in the same
    # order, and the rate limit looks at events in order. With the cap binding, the batch is
    # subsampled at random: DriftMonitor-capped is not chunk-invariant (see
    # test_a_capped_drift_monitor_...).
    Case("DriftMonitor", lambda: _monitor(10_000), _drift_stream, _drift_feed),
    Case(
        "DriftMonitor-capped",
        lambda: _monitor(60),
        _drift_stream,
        _drift_feed,
        chunk_invariant=False,
    ),
    # The reservoir: windows offered in time order (the stream's ts non-decreasing) are
    # sampled the same however they are cut: each stratum draws one random number per window
    # past its capacity, in arrival order. With late windows a chunk's strata are filled
    # bucket by bucket, not in arrival order, so the random draws (and the sample) depend on
    # the cut: CleanReservoir-late is not chunk-invariant.
    Case("CleanReservoir", _reservoir, _reservoir_stream, _reservoir_feed),
    Case(
        "CleanReservoir-late",
        _reservoir,
        lambda rng, n: _reservoir_stream(rng, n, late=True),
        _reservoir_feed,
        chunk_invariant=False,
    ),
]
N = 300


def _run(case: Case, s: Stream, cuts: list[int]) -> list[Any]:
    obj, out = case.build(), []
    for i, j in itertools.pairwise(cuts):
        out.extend(case.feed(obj, s, i, j))
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.chunk_invariant], ids=lambda c: c.name)
def test_batched_equals_one_by_one(case: Case) -> None:
    s = case.stream(np.random.default_rng(1), N)
    whole = _run(case, s, [0, N])
    assert whole, "the stream must produce output, or this check proves nothing"
    assert _run(case, s, list(range(N + 1))) == whole
    cuts = sorted({0, N, *np.random.default_rng(2).integers(1, N, size=12).tolist()})
    assert _run(case, s, cuts) == whole


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
    assert a, "the stream must produce output, or this check proves nothing"
    assert a == b


@pytest.mark.parametrize("case", [c for c in CASES if not c.chunk_invariant], ids=lambda c: c.name)
def test_chunking_changes_what_the_order_dependent_parts_give(case: Case) -> None:
    # why these cases are left out of test_batched_equals_one_by_one (if this fails, the part
    # became chunk-invariant: move it back there)
    s = case.stream(np.random.default_rng(1), N)
    assert _run(case, s, [0, N]) != _run(case, s, list(range(N + 1)))


def test_a_capped_drift_monitor_subsamples_each_batch() -> None:
    # one batch of 300 rows (4 series, one sample in 2 per series: ~150 candidates) gives 60
    # samples; row by row no batch has more than one, so all ~150 are taken, as uncapped
    s = _drift_stream(np.random.default_rng(1), N)
    whole = _monitor(60)
    _drift_feed(whole, s, 0, N)
    one_by_one, uncapped = _monitor(60), _monitor(10_000)
    _run_on(one_by_one, s, list(range(N + 1)))
    _drift_feed(uncapped, s, 0, N)
    assert whole.n_sampled == 60
    assert one_by_one.n_sampled == uncapped.n_sampled > 100


def _run_on(m: DriftMonitor, s: Stream, cuts: list[int]) -> None:
    for i, j in itertools.pairwise(cuts):
        _drift_feed(m, s, i, j)


# --------------------------------------------------------------------------- per-series state
#
# Every part that keeps state per series speaks SeriesState: drop(series), series(), nbytes().
# The contract, for each: after feeding a few series, series() is exactly them; drop([one])
# removes exactly that one and lowers nbytes() (every part charges per series id held);
# dropping an unknown id changes nothing; a series dropped and fed again behaves like a new
# one: the same outputs a fresh instance gives it.


@dataclass(frozen=True)
class StateCase:
    name: str
    build: Callable[[pytest.FixtureRequest], Any]
    # feed(part, keys, t0, seed) -> comparable outputs; rows of one series follow each other
    # in time, t0 on; the data are a function of (keys, t0, seed) only
    feed: Callable[[Any, list[str], float, int], list[Any]]
    n_first: int  # rows per series in the first feed
    n_again: int  # rows of the dropped series fed again


SERIES = ["s0", "s1", "s2"]


def _interleaved(n_each: int) -> list[str]:
    return [s for _ in range(n_each) for s in SERIES]


def _row_ts(keys: list[str], t0: float) -> np.ndarray:
    """Each series' rows one second apart from t0 (interleaved series share timestamps)."""
    seen: dict[str, int] = {}
    ts = []
    for k in keys:
        ts.append(t0 + seen.get(k, 0))
        seen[k] = seen.get(k, 0) + 1
    return np.array(ts, dtype=np.float64)


def _records(keys: list[str], t0: float, seed: int, d: int) -> RecordBatch:
    values = np.random.default_rng(seed).normal(size=(len(keys), d)).astype(np.float32)
    return RecordBatch(tuple(keys), _row_ts(keys, t0), values)


def _store_feed(store: WindowStore, keys: list[str], t0: float, seed: int) -> list[Any]:
    ready = store.push_many(_records(keys, t0, seed, 2))
    return [
        (k, float(t), v.tobytes())
        for k, t, v in zip(ready.keys, ready.ts, ready.values, strict=True)
    ]


def _ema_state_feed(ema: SeriesEMA, keys: list[str], t0: float, seed: int) -> list[Any]:
    x = np.random.default_rng(seed).gamma(1.0, 1.0, size=len(keys))
    return ema.update(keys, x).tolist()  # type: ignore[no-any-return]


def _novelty_state_feed(nv: SeriesNovelty, keys: list[str], t0: float, seed: int) -> list[Any]:
    # the first feed (seed 0) sets a high maximum; a series fed again without it has a rise
    x = (10.0 if seed == 0 else 1.0) + np.arange(len(keys), dtype=np.float64)
    return nv.update(keys, x).tolist()  # type: ignore[no-any-return]


def _episodes_state_feed(t: EpisodeTracker, keys: list[str], t0: float, seed: int) -> list[Any]:
    # every row is over the threshold: each series opens an episode (and keeps it open)
    x = np.random.default_rng(seed).uniform(1.0, 3.0, size=len(keys))
    events = t.update(keys, _row_ts(keys, t0), x, 1.0)
    return [(e.series_id, e.event, e.ts, e.episode_start_ts, e.peak_score) for e in events]


def _scorer_state_feed(sc: Scorer, keys: list[str], t0: float, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    parts = ScoreParts(
        rng.gamma(1.0, 1.0, size=(len(keys), 3)).astype(np.float32) * 5.0,  # some alert
        rng.gamma(2.0, 1.0, size=len(keys)).astype(np.float32),
    )
    out = sc.update(keys, _row_ts(keys, t0), parts)
    return [out.smoothed.tolist(), [_json.dumps(a.to_dict()) for a in out.alerts]]


def _drift_state_feed(m: DriftMonitor, keys: list[str], t0: float, seed: int) -> list[Any]:
    # one window in 3 of each series is a sample: how many this feed took shows where each
    # series' thinning counter stood
    raw = np.random.default_rng(seed).gamma(1.0, 1.0, size=len(keys))
    before = m.n_sampled
    events = m.update(keys, _row_ts(keys, t0), raw)
    return [m.n_sampled - before, [dataclasses.astuple(e) for e in events]]


def _partition(series: str) -> TopicPartition:
    return TopicPartition("t", int(series[1:]))


def _watermark_feed(w: ReplayWatermark, keys: list[str], t0: float, seed: int) -> list[Any]:
    # offsets per partition from t0 on; in the first feed (seed 0) every series opens an
    # episode, which pins its start; the output: the replay starts of this feed's
    # partitions (a pin that outlived a drop would hold the series' partition back)
    offsets = [int(t0) * 100 + i for i in range(len(keys))]
    w.observe(keys, [_partition(k) for k in keys], offsets)
    if seed == 0:
        for k in dict.fromkeys(keys):
            w.episode_opened(k)
    nxt = {_partition(k): offsets[-1] + 1 for k in keys}
    return sorted((tp.partition, off) for tp, off in w.replay_starts(nxt).items())


def _live_feed(live: LiveModel, keys: list[str], t0: float, seed: int) -> list[Any]:
    ready, scored = live.step(_records(keys, t0, seed, len(live.artifact.feature_names)))
    return [
        list(ready.keys),
        ready.ts.tolist(),
        scored.smoothed.tolist(),
        # the fed series' alerts (the others, silent meanwhile, may go stale: stream time is
        # the fleet's), less their kind's count (the recurring kinds are the fleet's too)
        [_json.dumps(_own(a.to_dict())) for a in scored.alerts if a.series_id in keys],
    ]


def _own(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in alert.items() if k not in ("cluster", "cluster_count")}


def _live(request: pytest.FixtureRequest) -> LiveModel:
    tiny: TinyModel = request.getfixturevalue("tiny")
    return LiveModel(tiny.artifact, DetectorOptions(device="cpu"))


def _low_threshold_scorer() -> Scorer:
    sc = _scorer()
    sc.threshold = 0.5  # some windows alert: the episodes hold state too
    return sc


STATE_CASES = [
    StateCase(
        "WindowStore",
        lambda _: WindowStore(3, 2, max_gap_s=100.0),
        _store_feed,
        n_first=4,
        n_again=2,
    ),
    StateCase("SeriesEMA", lambda _: SeriesEMA(0.7), _ema_state_feed, n_first=4, n_again=2),
    StateCase(
        "EpisodeTracker",
        lambda _: EpisodeTracker(0.9, close_after=50),
        _episodes_state_feed,
        n_first=4,
        n_again=2,
    ),
    StateCase("Scorer", lambda _: _low_threshold_scorer(), _scorer_state_feed, 4, 2),
    StateCase("StreamingThreshold", lambda _: _spot(), _ema_state_feed, n_first=4, n_again=2),
    StateCase("Scorer-dspot", lambda _: _dspot_scorer(), _scorer_state_feed, 4, 2),
    StateCase("SeriesNovelty", lambda _: SeriesNovelty(30), _novelty_state_feed, 4, 2),
    StateCase("Scorer-novelty-gate", lambda _: _gated_scorer(), _scorer_state_feed, 4, 2),
    StateCase("QualityMonitor", lambda _: _quality(), _quality_state_feed, 4, 2),
    StateCase(
        "DriftMonitor",
        lambda _: DriftMonitor(window_size=30, stat_size=10, thin_every=3),
        _drift_state_feed,
        n_first=4,  # each series' counter at 4: its next sample is its 7th window
        n_again=2,  # fresh, the first of these two is a sample
    ),
    StateCase("ReplayWatermark", lambda _: ReplayWatermark(keep=4), _watermark_feed, 4, 2),
    # the tiny model's windows are 16 points: 20 give 5 windows; 17 again give 2 when fresh
    StateCase("LiveModel", _live, _live_feed, n_first=20, n_again=17),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: c.name)
def test_parts_implement_series_state(case: StateCase, request: pytest.FixtureRequest) -> None:
    assert isinstance(case.build(request), SeriesState)


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: c.name)
def test_drop_forgets_exactly_the_series_named(
    case: StateCase, request: pytest.FixtureRequest
) -> None:
    part = case.build(request)
    empty_bytes = part.nbytes()
    assert part.series() == frozenset()
    case.feed(part, _interleaved(case.n_first), 0.0, 0)
    assert part.series() == frozenset(SERIES)
    held = part.nbytes()
    assert held > empty_bytes
    part.drop(["s1"])
    assert part.series() == {"s0", "s2"}
    assert part.nbytes() < held
    part.drop(iter(["s0", "s2"]))  # any iterable
    assert part.series() == frozenset()


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: c.name)
def test_dropping_an_unknown_series_changes_nothing(
    case: StateCase, request: pytest.FixtureRequest
) -> None:
    a, b = case.build(request), case.build(request)
    first = _interleaved(case.n_first)
    assert case.feed(a, first, 0.0, 0) == case.feed(b, first, 0.0, 0)
    b.drop(["nope", "s1-but-not-quite"])
    b.drop([])
    assert b.series() == a.series() and b.nbytes() == a.nbytes()
    # and the series go on as if nothing happened
    t0 = float(case.n_first)
    assert case.feed(a, first, t0, 1) == case.feed(b, first, t0, 1)


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: c.name)
def test_a_dropped_series_fed_again_is_a_new_series(
    case: StateCase, request: pytest.FixtureRequest
) -> None:
    dropped, kept, fresh = case.build(request), case.build(request), case.build(request)
    first = _interleaved(case.n_first)
    case.feed(dropped, first, 0.0, 0)
    case.feed(kept, first, 0.0, 0)
    dropped.drop(["s1"])
    again = ["s1"] * case.n_again
    t0 = float(case.n_first)
    want = case.feed(fresh, again, t0, 1)
    assert case.feed(dropped, again, t0, 1) == want
    assert dropped.series() == fresh.series() | {"s0", "s2"}
    # without the drop the series' history shows: else this check proves nothing
    assert case.feed(kept, again, t0, 1) != want


def test_one_drop_of_the_registry_reaches_every_part() -> None:
    ema, episodes, monitor = SeriesEMA(0.5), EpisodeTracker(close_after=50), _monitor(10_000)
    registry = StateRegistry({"ema": ema, "episodes": episodes})
    registry.register("drift", monitor)
    keys = _interleaved(4)
    _ema_state_feed(ema, keys, 0.0, 0)
    _episodes_state_feed(episodes, keys, 0.0, 0)
    monitor.update(keys, _row_ts(keys, 0.0), np.ones(len(keys)))
    assert registry.series() == frozenset(SERIES)
    assert registry.nbytes() == {
        "ema": ema.nbytes(),
        "episodes": episodes.nbytes(),
        "drift": monitor.nbytes(),
    }
    registry.drop(["s1"])
    for part in (ema, episodes, monitor):
        assert part.series() == {"s0", "s2"}, part
    # a one-shot iterable reaches every part too, not only the first
    registry.drop(s for s in ["s0"])
    for part in (ema, episodes, monitor):
        assert part.series() == {"s2"}, part
    assert registry.series() == {"s2"}


def test_the_registry_refuses_what_is_not_series_state_and_duplicate_names() -> None:
    ema = SeriesEMA(0.5)
    registry = StateRegistry({"ema": ema})
    with pytest.raises(TypeError, match="SeriesState"):
        registry.register("counts", {"a": 1})  # type: ignore[arg-type]  # no series()
    with pytest.raises(TypeError, match="SeriesState"):
        StateRegistry({"x": object()})  # type: ignore[dict-item]
    other = SeriesEMA(0.9)
    with pytest.raises(ValueError, match="registered already"):
        registry.register("ema", other)
    # the refused parts were not registered, and the first "ema" is still the one reached
    assert registry.nbytes().keys() == {"ema"}
    ema.update(["a"], np.ones(1))
    other.update(["a"], np.ones(1))
    registry.drop(["a"])
    assert ema.series() == frozenset() and other.series() == {"a"}

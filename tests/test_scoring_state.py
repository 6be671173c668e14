"""Per-series EMA, alert episodes and threshold calibration: values, contracts, errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from stream_vae.errors import ConfigError, DataError, ShapeError, StreamVAEError
from stream_vae.scoring.ema import SeriesEMA
from stream_vae.scoring.episodes import EpisodeEvent, EpisodeTracker
from stream_vae.scoring.threshold import (
    Calibration,
    CalibrationError,
    PotFit,
    calibrate,
    pot_threshold,
    quantile_threshold,
    trimmed_tail_threshold,
)

# ----------------------------------------------------------------------------------- EMA


def test_ema_exact_sequence_with_repeated_keys_in_one_batch() -> None:
    ema = SeriesEMA(0.5)
    out = ema.update(["a", "a", "b", "a", "b"], np.array([2.0, 4.0, 10.0, 0.0, 0.0]))
    # a: 2 (first value), .5*2+.5*4 = 3, .5*3+.5*0 = 1.5; b: 10, 5
    assert out.tolist() == [2.0, 3.0, 10.0, 1.5, 5.0]
    assert out.dtype == np.float64


def test_ema_two_series_interleaved_across_batches() -> None:
    ema = SeriesEMA(0.75)
    first = ema.update(["a", "b", "a"], np.array([4.0, 1.0, 0.0]))
    second = ema.update(["b", "a"], np.array([3.0, 8.0]))
    assert first.tolist() == [4.0, 1.0, 3.0]
    assert second.tolist() == [1.5, 4.25]  # .75*1+.25*3 ; .75*3+.25*8
    assert len(ema) == 2


def test_ema_first_value_is_not_biased_toward_zero_and_beta_zero_is_identity() -> None:
    assert SeriesEMA(0.9).update(["new"], np.array([7.0])).tolist() == [7.0]
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    assert SeriesEMA(0.0).update(["s"] * 5, x).tolist() == x.tolist()


def test_ema_accepts_float32_and_empty_batches() -> None:
    ema = SeriesEMA(0.5)
    assert ema.update(["a", "a"], np.array([1.0, 2.0], dtype=np.float32)).tolist() == [1.0, 1.5]
    assert ema.update([], np.empty(0)).shape == (0,)
    assert len(ema) == 1


def _many_series_stream(seed: int, n: int, n_series: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = [f"s{k}" for k in rng.integers(0, n_series, size=n)]
    return keys, rng.gamma(1.0, 1.0, size=n)


def _ema_in_chunks(beta: float, keys: list[str], x: np.ndarray, cuts: list[int]) -> list[float]:
    ema, out = SeriesEMA(beta), []
    for i, j in itertools.pairwise(cuts):
        out.extend(ema.update(keys[i:j], x[i:j]).tolist())
    return out


def test_ema_batched_equals_one_by_one_bitwise_on_a_wide_batch() -> None:
    # 60 series in one batch of 2000 rows: the vectorised rounds and the scalar tail both run
    keys, x = _many_series_stream(0, 2000, 60)
    keys += ["hot"] * 300  # one long group: many rounds with a single series
    x = np.concatenate([x, np.linspace(0.0, 3.0, 300)])
    whole = _ema_in_chunks(0.7, keys, x, [0, len(keys)])
    assert _ema_in_chunks(0.7, keys, x, list(range(len(keys) + 1))) == whole
    # reference: the definition, one row at a time with a dict
    ref: dict[str, float] = {}
    expected = []
    for k, v in zip(keys, x.tolist(), strict=True):
        ref[k] = v if k not in ref else 0.7 * ref[k] + 0.3 * v
        expected.append(ref[k])
    np.testing.assert_allclose(whole, expected, rtol=1e-12)


def test_ema_a_batch_of_distinct_held_series_equals_one_by_one() -> None:
    """The one-round path (every row a held series, none repeated: a fleet's usual batch) and
    the batches it must leave to the general path (a new series, a repeated one)."""
    rng = np.random.default_rng(4)
    names = [f"s{i}" for i in range(50)]
    batches = [
        names,  # all new: the general path allocates them
        names[::-1],  # all held, distinct
        names[:30],  # a subset
        [*names[:20], "new"],  # one new series among held ones
        [*names[:20], names[3]],  # a repeat
        names,
    ]
    batched, ref = SeriesEMA(0.6), SeriesEMA(0.6)
    for keys in batches:
        x = rng.gamma(1.0, 2.0, size=len(keys))
        got = batched.update(keys, x)
        one_by_one = [ref.update([k], x[i : i + 1])[0] for i, k in enumerate(keys)]
        assert got.tolist() == one_by_one


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(0, 39), min_size=0, max_size=150),
    beta=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
    cut_seed=st.integers(0, 2**16),
)
def test_ema_property_batched_equals_one_by_one(
    keys: list[int], beta: float, cut_seed: int
) -> None:
    rng = np.random.default_rng(cut_seed)
    names = [f"k{k}" for k in keys]
    x = rng.gamma(1.0, 2.0, size=len(keys))
    n = len(keys)
    whole = _ema_in_chunks(beta, names, x, [0, n])
    assert _ema_in_chunks(beta, names, x, list(range(n + 1))) == whole
    cuts = sorted({0, n, *rng.integers(0, n + 1, size=5).tolist()})
    assert _ema_in_chunks(beta, names, x, cuts) == whole


def test_ema_drop_forgets_only_the_named_series() -> None:
    ema = SeriesEMA(0.5)
    ema.update(["a", "b", "c"], np.array([4.0, 4.0, 4.0]))
    ema.drop(["b", "unknown"])
    assert len(ema) == 2 and "b" not in ema and "a" in ema
    assert ema.update(["a", "b", "c"], np.array([0.0, 0.0, 2.0])).tolist() == [2.0, 0.0, 3.0]


def test_ema_leaves_inputs_unmutated() -> None:
    keys, x = _many_series_stream(2, 200, 20)
    keys_before, x_before = list(keys), x.copy()
    SeriesEMA(0.5).update(keys, x)
    assert keys == keys_before and np.array_equal(x, x_before)


def test_ema_errors() -> None:
    for beta in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError):
            SeriesEMA(beta)
    ema = SeriesEMA(0.5)
    with pytest.raises(ShapeError, match="expected shape"):
        ema.update(["a", "b"], np.array([1.0]))
    with pytest.raises(ShapeError):
        ema.update(["a"], np.array([[1.0]]))
    with pytest.raises(DataError, match="non-finite"):
        ema.update(["a", "b"], np.array([1.0, np.nan]))
    assert len(ema) == 0  # a rejected batch changes nothing


# ------------------------------------------------------------------------------ episodes


def _events(t: EpisodeTracker, keys: list[str], scores: list[float], thr: Any = 1.0) -> list[Any]:
    ts = 100.0 + np.arange(len(scores), dtype=np.float64)
    ev = t.update(keys, ts, np.array(scores), thr)
    return [(e.row, e.series_id, e.event, e.ts, e.episode_start_ts, e.peak_score) for e in ev]


def test_episode_open_close_with_hysteresis_and_peak() -> None:
    t = EpisodeTracker(hysteresis=0.8, close_after=2)
    scores = [0.5, 1.0, 1.7, 0.85, 0.7, 0.9, 0.7, 0.6, 0.95, 1.2]
    # row 1 opens (>= threshold); 0.85 and 0.9 are above the close level 0.8 and reset the count;
    # rows 6, 7 are two consecutive low rows -> close at 7; row 9 opens a new episode
    assert _events(t, ["a"] * 10, scores) == [
        (1, "a", "open", 101.0, 101.0, 1.0),
        (7, "a", "close", 107.0, 101.0, 1.7),
        (9, "a", "open", 109.0, 109.0, 1.2),
    ]
    assert t.is_open("a") and t.open_series() == ("a",)


def test_episode_hysteresis_one_closes_below_the_threshold_itself() -> None:
    t = EpisodeTracker(hysteresis=1.0, close_after=1)
    assert [e[2] for e in _events(t, ["a"] * 4, [1.0, 0.99, 1.0, 0.999])] == [
        "open",
        "close",
        "open",
        "close",
    ]


def test_episode_close_counts_the_closing_rows_peak() -> None:
    t = EpisodeTracker(hysteresis=0.5, close_after=1)
    # the peak is over the whole episode, so a later high row raises it
    ev = _events(t, ["a"] * 4, [1.5, 3.0, 2.0, 0.1])
    assert ev == [(0, "a", "open", 100.0, 100.0, 1.5), (3, "a", "close", 103.0, 100.0, 3.0)]


def test_episode_cooldown_suppresses_flapping() -> None:
    scores = [2.0, 0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 2.0]
    flappy = _events(EpisodeTracker(close_after=1), ["a"] * 8, scores)
    assert [(e[0], e[2]) for e in flappy] == [
        (0, "open"),
        (1, "close"),
        (2, "open"),
        (3, "close"),
        (4, "open"),
        (6, "close"),
        (7, "open"),
    ]
    calm = _events(EpisodeTracker(close_after=1, cooldown=2), ["a"] * 8, scores)
    # close at 1; rows 2, 3 cool down (row 2's 2.0 cannot open); row 4 opens; close at 6; 7 cools
    assert [(e[0], e[2]) for e in calm] == [(0, "open"), (1, "close"), (4, "open"), (6, "close")]


def test_a_settled_newest_point_ends_the_episode_and_the_score_must_fall_before_the_next() -> None:
    # a window score holds an anomaly for W rows after it ended (rows 3-7 here); the newest
    # points settle from row 3 on
    scores = np.array([0.1, 2.0, 2.0, 1.9, 1.9, 1.9, 1.9, 1.9, 0.1, 0.1, 2.0, 0.1, 0.1, 0.1])
    settled = np.zeros(14, dtype=bool)
    settled[[0, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13]] = True
    ts = np.arange(14.0)
    by_score = EpisodeTracker(close_after=2).update(["a"] * 14, ts, scores, 1.0)
    assert [(e.row, e.event) for e in by_score] == [
        (1, "open"),
        (9, "close"),
        (10, "open"),
        (12, "close"),
    ]
    t = EpisodeTracker(close_after=2)
    ev = t.update(["a"] * 14, ts, scores, 1.0, settled=settled)
    # settled at 3 and 4: closed at 4 while the score is still up; 5-7 cannot reopen (the
    # score has not fallen yet); row 8 falls, and a new anomaly at 10 opens again
    assert [(e.row, e.event) for e in ev] == [
        (1, "open"),
        (4, "close"),
        (10, "open"),
        (12, "close"),
    ]
    assert t.series() == frozenset()
    # while the score is still up, data that is off again (row 6 not settled) opens a new one
    again = settled.copy()
    again[6] = False
    off = EpisodeTracker(close_after=2).update(["a"] * 14, ts, scores, 1.0, settled=again)
    assert [(e.row, e.event) for e in off] == [
        (1, "open"), (4, "close"), (6, "open"), (8, "close"), (10, "open"), (12, "close")
    ]  # fmt: skip
    # row by row, the same
    one = EpisodeTracker(close_after=2)
    rows = [one.update(["a"], ts[i : i + 1], scores[i : i + 1], 1.0, settled=settled[i : i + 1])
            for i in range(14)]  # fmt: skip
    assert [(i, e.event) for i, r in enumerate(rows) for e in r] == [(e.row, e.event) for e in ev]


def test_episode_series_are_independent_and_cooldown_is_per_series() -> None:
    t = EpisodeTracker(close_after=1, cooldown=1)
    keys = ["a", "b", "a", "b", "a", "b"]
    ev = _events(t, keys, [2.0, 0.1, 0.0, 3.0, 2.0, 0.0])
    # a opens (0), closes (2) and cools down on row 4; b opens (3) and closes (5)
    assert ev == [
        (0, "a", "open", 100.0, 100.0, 2.0),
        (2, "a", "close", 102.0, 100.0, 2.0),
        (3, "b", "open", 103.0, 103.0, 3.0),
        (5, "b", "close", 105.0, 103.0, 3.0),
    ]
    assert t.open_series() == () and not t.is_open("a")


def test_episode_state_carries_across_batches_and_per_row_thresholds() -> None:
    t = EpisodeTracker(hysteresis=0.9, close_after=2)
    assert _events(t, ["a"], [5.0], np.array([4.0])) == [(0, "a", "open", 100.0, 100.0, 5.0)]
    # the threshold per row moves: 3.5 < 0.9*4 = 3.6 counts low, 3.5 >= 0.9*3 = 2.7 does not
    ev = t.update(
        ["a"] * 3, np.array([200.0, 201.0, 202.0]), np.array([3.5, 3.5, 3.5]), [4.0, 3.0, 4.0]
    )
    assert ev == []
    ev = t.update(["a"], np.array([203.0]), np.array([1.0]), 4.0)
    assert ev == [EpisodeEvent(0, "a", "close", 203.0, 100.0, 5.0)]


def test_episode_drop_forgets_open_episodes_and_cooldowns() -> None:
    t = EpisodeTracker(close_after=1, cooldown=5)
    _events(t, ["a", "b", "b"], [2.0, 2.0, 0.0])  # a open, b cooling down
    assert t.open_series() == ("a",) and t.series() == {"a", "b"}  # b: in its cooldown
    t.drop(["a", "b", "unknown"])
    assert t.open_series() == () and t.series() == frozenset() and t.nbytes() == 0
    assert [e[2] for e in _events(t, ["a", "b"], [2.0, 2.0])] == ["open", "open"]


def _episodes_in_chunks(
    t: EpisodeTracker, keys: list[str], scores: np.ndarray, thr: np.ndarray, cuts: list[int]
) -> list[tuple[Any, ...]]:
    out = []
    for i, j in itertools.pairwise(cuts):
        ts = np.arange(i, j, dtype=np.float64)
        for e in t.update(keys[i:j], ts, scores[i:j], thr[i:j]):
            out.append((e.row + i, e.series_id, e.event, e.ts, e.episode_start_ts, e.peak_score))
    return out


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(0, 5), min_size=0, max_size=120),
    hysteresis=st.sampled_from([0.5, 0.9, 1.0]),
    close_after=st.integers(1, 3),
    cooldown=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_episode_property_batched_equals_one_by_one(
    keys: list[int], hysteresis: float, close_after: int, cooldown: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    names = [f"k{k}" for k in keys]
    n = len(names)
    scores = rng.gamma(2.0, 0.5, size=n)
    thr = np.where(rng.random(n) < 0.8, 1.5, 1.2)

    def run(cuts: list[int]) -> list[tuple[Any, ...]]:
        t = EpisodeTracker(hysteresis, close_after, cooldown)
        return _episodes_in_chunks(t, names, scores, thr, cuts)

    whole = run([0, n])
    assert run(list(range(n + 1))) == whole
    assert run(sorted({0, n, *rng.integers(0, n + 1, size=5).tolist()})) == whole


def test_episode_state_mid_episode_and_mid_cooldown_carries_across_calls() -> None:
    keys, x = _many_series_stream(4, 400, 5)
    x = 1.5 * x
    thr = np.full(400, 1.5)
    a = EpisodeTracker(0.8, 2, 3)
    _episodes_in_chunks(a, keys, x, thr, [0, 200])
    open_at_cut = a.open_series()
    cooling = a.series() - set(open_at_cut)  # held but not in an episode: cooling down
    assert open_at_cut and cooling, "the cut must leave open episodes and cooldowns behind"
    rest = _episodes_in_chunks(a, keys, x, thr, [200, 400])
    whole = _episodes_in_chunks(EpisodeTracker(0.8, 2, 3), keys, x, thr, [0, 400])
    assert rest and rest == [e for e in whole if e[0] >= 200]
    # an episode open at the cut goes on: its series' next event closes the episode opened
    # before the cut (ts = row here), where a tracker started at the cut opens one first
    fresh = _episodes_in_chunks(EpisodeTracker(0.8, 2, 3), keys, x, thr, [200, 400])
    for k in open_at_cut:
        first = next(e for e in rest if e[1] == k)
        assert first[2] == "close" and first[4] < 200, first
        assert next(e for e in fresh if e[1] == k)[2] == "open"
    # the cooldowns left at that cut end before their series run hot again; one that does not:
    t = EpisodeTracker(close_after=1, cooldown=2)
    assert [e[2] for e in _events(t, ["a"] * 2, [2.0, 0.0])] == ["open", "close"]
    assert t.series() == {"a"} and t.open_series() == ()  # cooling down, 2 rows to go
    # the next call: its first two rows cannot open, the third does (from scratch: the first)
    assert [(e[0], e[2]) for e in _events(t, ["a"] * 3, [2.0, 2.0, 2.0])] == [(2, "open")]
    assert [(e[0], e[2]) for e in _events(EpisodeTracker(), ["a"], [2.0])] == [(0, "open")]


def test_episode_leaves_inputs_unmutated() -> None:
    keys, x = _many_series_stream(5, 100, 3)
    ts, thr = np.arange(100.0), np.full(100, 1.0)
    before = (list(keys), x.copy(), ts.copy(), thr.copy())
    EpisodeTracker(close_after=1).update(keys, ts, x, thr)
    assert keys == before[0]
    for got, want in zip((x, ts, thr), before[1:], strict=True):
        assert np.array_equal(got, want)


def test_episode_errors() -> None:
    for kw in ({"hysteresis": 0.0}, {"hysteresis": 1.1}, {"close_after": 0}, {"cooldown": -1}):
        with pytest.raises(ConfigError):
            EpisodeTracker(**kw)
    t = EpisodeTracker()
    with pytest.raises(ShapeError):
        t.update(["a", "b"], np.zeros(2), np.zeros(3), 1.0)
    with pytest.raises(ShapeError):
        t.update(["a", "b"], np.zeros(1), np.zeros(2), 1.0)
    with pytest.raises(ShapeError):
        t.update(["a", "b"], np.zeros(2), np.zeros(2), np.ones(3))
    with pytest.raises(DataError):
        t.update(["a"], np.zeros(1), np.array([np.nan]), 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EpisodeEvent(0, "a", "open", 0.0, 0.0, 1.0).row = 1  # type: ignore[misc]


# ----------------------------------------------------------------------------- threshold


def test_quantile_threshold_on_known_data() -> None:
    assert quantile_threshold(np.arange(1.0, 101.0), 0.05) == 96.0
    s = np.arange(1.0, 1001.0)[::-1].copy()  # order does not matter
    thr = quantile_threshold(s, 0.01)
    assert thr == 991.0 and (s >= thr).sum() == 10  # exactly n*q scores alert
    assert quantile_threshold(np.arange(10.0), 1e-4) == 9.0  # too few scores: the maximum


def test_pot_on_exponential_scores_reaches_a_1e4_target() -> None:
    true_q = np.log(1e4)  # 9.21, the 1 - 1e-4 quantile of Exp(1)
    # fitted on 20k scores (400 peaks): the shape's sampling error (~0.05) moves the
    # extrapolated threshold by ~5% (sd), so check the typical error over 20 fits and a bound on
    # the worst one rather than one lucky seed
    errors = []
    for seed in range(20):
        fit = pot_threshold(np.random.default_rng(seed).exponential(size=20_000), 1e-4)
        assert fit.n_peaks == 400 and fit.n == 20_000
        assert fit.initial_threshold == pytest.approx(np.log(50.0), abs=0.15)
        errors.append(abs(fit.threshold / true_q - 1.0))
    assert np.median(errors) < 0.07 and max(errors) < 0.2
    # 200k scores (4000 peaks): within 5%, and the fitted tail is exponential
    big = np.random.default_rng(99).exponential(size=200_000)
    fit = pot_threshold(big, 1e-4)
    assert fit.threshold == pytest.approx(true_q, rel=0.05)
    assert abs(fit.shape) < 0.05 and fit.scale == pytest.approx(1.0, abs=0.06)
    # a plain quantile of 20k scores rests on the top 2 of them ("higher": the second largest)
    small = big[:20_000]
    assert quantile_threshold(small, 1e-4) == np.sort(small)[-2]


@pytest.mark.parametrize("xi", [-0.2, 0.3])
def test_pot_recovers_a_known_gpd_shape(xi: float) -> None:
    # excesses of a GPD over any threshold are GPD with the same shape
    s = stats.genpareto.rvs(xi, scale=2.0, size=100_000, random_state=7)
    fit = pot_threshold(s, 1e-4)
    assert fit.shape == pytest.approx(xi, abs=0.08)
    true_q = stats.genpareto.ppf(1.0 - 1e-4, xi, scale=2.0)
    assert fit.threshold == pytest.approx(true_q, rel=0.1)


@pytest.mark.parametrize(("xi", "seed"), [(-0.3, 0), (0.0, 1), (0.4, 2), (0.9, 3), (0.2, 4)])
def test_pot_fit_is_at_least_as_likely_as_scipys(xi: float, seed: int) -> None:
    s = stats.genpareto.rvs(xi, size=15_000, random_state=seed)
    fit = pot_threshold(s, 1e-4)
    y = s[s > fit.initial_threshold] - fit.initial_threshold
    assert y.size == fit.n_peaks
    with warnings.catch_warnings():  # scipy's optimiser may warn on flat likelihoods
        warnings.simplefilter("ignore")
        c, _, scale = stats.genpareto.fit(y, floc=0)
    ours = stats.genpareto.logpdf(y, fit.shape, scale=fit.scale).sum()
    theirs = stats.genpareto.logpdf(y, c, scale=scale).sum()
    assert ours >= theirs - 1e-6


def test_pot_threshold_follows_its_formula() -> None:
    s = np.random.default_rng(3).lognormal(size=30_000)
    q = 1e-4
    f = pot_threshold(s, q, initial_quantile=0.95)
    assert f.n_peaks == 1500
    r = q * f.n / f.n_peaks
    expected = f.initial_threshold + f.scale / f.shape * (r ** (-f.shape) - 1.0)
    assert f.threshold == pytest.approx(expected, rel=1e-9)
    assert f.threshold > f.initial_threshold
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.threshold = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(("method", "n"), [("quantile", 5000), ("pot", 3000), ("auto", 1500)])
def test_calibration_holds_its_false_positive_rate_on_fresh_normal_scores(
    method: str, n: int
) -> None:
    rng = np.random.default_rng(11)
    cal = calibrate(rng.normal(size=n), 0.01, method)  # type: ignore[arg-type]
    fresh = rng.normal(size=200_000)
    fpr = float((fresh >= cal.threshold).mean())
    assert 0.005 <= fpr <= 0.02, f"{cal.method}: FPR {fpr:.4f} for a 1% target"
    assert cal.target_fpr == 0.01 and cal.n == n


def test_auto_picks_quantile_with_enough_expected_exceedances_else_pot() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=2000)
    assert calibrate(s, 0.01).method == "quantile"  # n*q = 20 >= 20
    assert calibrate(s[:1999], 0.01).method == "pot"  # 19.99 < 20
    assert calibrate(s, 0.01, min_exceedances=21).method == "pot"
    assert calibrate(s, 0.01, "pot").method == "pot"
    big = rng.exponential(size=20_000)
    q_cal, p_cal = calibrate(big, 1e-4), calibrate(big, 1e-2)
    assert (q_cal.method, p_cal.method) == ("pot", "quantile")
    assert q_cal.details["requested"] == "auto" and q_cal.details["n_peaks"] == 400
    assert q_cal.threshold == pot_threshold(big, 1e-4).threshold
    assert p_cal.threshold == quantile_threshold(big, 1e-2)


def test_calibration_round_trips_through_json() -> None:
    s = np.random.default_rng(1).exponential(size=3000)
    for cal in (calibrate(s, 1e-3), calibrate(s, 0.05)):
        back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
        assert back == cal
        assert back.method in ("quantile", "pot")


def test_calibrate_leaves_its_input_unmutated() -> None:
    s = np.random.default_rng(2).normal(size=1000)
    before = s.copy()
    calibrate(s, 0.01, "pot")
    calibrate(s, 0.01, "quantile")
    assert np.array_equal(s, before)


def test_calibration_errors() -> None:
    good = np.random.default_rng(0).normal(size=1000)
    for bad in (np.array([]), np.array([1.0, np.nan]), np.array([1.0, np.inf])):
        with pytest.raises(CalibrationError):
            calibrate(bad, 0.01)
    with pytest.raises(ShapeError):
        calibrate(good.reshape(10, 100), 0.01)
    for q in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(CalibrationError, match="target_fpr"):
            calibrate(good, q)
    with pytest.raises(CalibrationError, match="unknown"):
        calibrate(good, 0.01, "median")  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="min_exceedances"):
        calibrate(good, 0.01, min_exceedances=0)
    # 400 scores -> 8 above the 0.98 quantile: too few for a tail fit, and the message says so;
    # "auto" falls back to the sample quantile (the maximum here) and records why
    with pytest.raises(CalibrationError, match=r"at least 10 scores above .* got 8 of 400"):
        calibrate(good[:400], 1e-3, "pot")
    fallback = calibrate(good[:400], 1e-3)
    assert fallback.method == "quantile" and "got 8 of 400" in fallback.details["fallback"]
    assert fallback.threshold == float(good[:400].max())
    # a target that is not in the tail above the initial threshold
    with pytest.raises(CalibrationError, match="not in the tail"):
        pot_threshold(good, 0.05)
    with pytest.raises(CalibrationError, match="initial_quantile"):
        pot_threshold(good, 0.01, initial_quantile=1.0)
    assert issubclass(CalibrationError, ValueError) and issubclass(CalibrationError, StreamVAEError)
    with pytest.raises(dataclasses.FrozenInstanceError):
        calibrate(good, 0.01).threshold = 1.0  # type: ignore[misc]
    assert isinstance(PotFit(1.0, 0.5, 0.1, 1.0, 10, 500), PotFit)


# ---------------------------------------------------------- threshold on contaminated scores

_NORMALS = {
    "exponential": lambda rng, n: rng.exponential(size=n),
    "gaussian": lambda rng, n: rng.normal(size=n),
    "log-normal": lambda rng, n: rng.lognormal(sigma=0.5, size=n),
}


@pytest.mark.parametrize("dist", list(_NORMALS))
def test_trimmed_tail_threshold_follows_the_normal_part_of_contaminated_scores(dist: str) -> None:
    """5% of the calibration scores are anomalies, spread from just below the normal 0.99
    quantile to 3 times it: the plain quantile lands among them, alerting on none of the fresh
    normal scores and on 20% of the anomalies; with the contamination stated, the threshold
    keeps at most 3% of fresh normal scores above it (target 1%; a Gaussian's tail, lighter than
    the exponential the fit assumes, keeps fewer) and catches three quarters of the anomalies."""
    rng = np.random.default_rng(3)
    normal, fresh = _NORMALS[dist](rng, 19_000), _NORMALS[dist](rng, 100_000)
    anomalies = float(np.quantile(normal, 0.99)) * rng.uniform(0.8, 3.0, size=1000)
    scores = np.concatenate([normal, anomalies])
    plain = calibrate(scores, 0.01)
    assert (fresh >= plain.threshold).mean() < 0.001
    assert (anomalies >= plain.threshold).mean() < 0.25
    cal = calibrate(scores, 0.01, contamination=0.05)
    assert cal.method == "trimmed" and cal.n == 20_000
    assert cal.details["contamination"] == 0.05
    assert cal.details["set_aside_above"] == pytest.approx(np.quantile(scores, 0.95))
    assert 0.001 <= (fresh >= cal.threshold).mean() <= 0.03, cal
    assert (anomalies >= cal.threshold).mean() > 0.75, cal


@pytest.mark.parametrize("contamination", [0.02, 0.05, 0.1])
def test_trimmed_tail_threshold_on_clean_scores_costs_little(contamination: float) -> None:
    """Stated but absent: the set-aside top was normal tail, and the fitted tail puts it back
    (the rate stays within a factor of 2 of the target, where discarding the top share outright
    would alert on 3-11%)."""
    rng = np.random.default_rng(4)
    scores, fresh = rng.exponential(size=20_000), rng.exponential(size=100_000)
    fit = trimmed_tail_threshold(scores, 0.01, contamination)
    assert 0.005 <= (fresh >= fit.threshold).mean() <= 0.02, fit
    assert fit.initial_threshold == pytest.approx(np.quantile(scores, 0.85 - contamination))
    assert fit.scale == pytest.approx(1.0, rel=0.25)  # Exp(1): the truncated fit finds σ = 1
    discarded = quantile_threshold(np.sort(scores)[: round(20_000 * (1 - contamination))], 0.01)
    assert (fresh >= discarded).mean() > contamination


def test_trimmed_tail_threshold_errors() -> None:
    good = np.random.default_rng(0).exponential(size=1000)
    with pytest.raises(CalibrationError, match="contamination"):
        trimmed_tail_threshold(good, 0.01, 0.0)
    with pytest.raises(CalibrationError, match="at least 10 distinct scores"):
        trimmed_tail_threshold(good[:60], 0.01, 0.05)  # 9 scores between the cuts
    with pytest.raises(CalibrationError, match="at least 10 distinct scores"):
        trimmed_tail_threshold(np.ones(1000), 0.01, 0.05)  # no tail at all

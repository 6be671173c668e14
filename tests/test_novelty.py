"""SeriesNovelty: high at the onset of a new, larger-than-recent excursion, 0 while it lasts;
and the alerts' novelty gate built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_vae.config import AlertSettings, EvaluationSettings
from stream_vae.errors import ConfigError
from stream_vae.evaluation.novelty import carry_novelty, novelty_stage
from stream_vae.runtime.live import build_scorer
from stream_vae.scoring.hybrid import HybridScore, ScoreParts
from stream_vae.scoring.novelty import SeriesNovelty
from stream_vae.scoring.scorer import Scorer

from .conftest import TinyModel


def test_onset_scores_persistence_does_not() -> None:
    base = np.full(300, 1.0)
    base[200:260] = 5.0  # an excursion of 60 rows
    out = SeriesNovelty(window=100, peak_decay=1.0).update(["a"] * 300, base)
    # a series' first row has nothing to be new against; then it sits at its level
    assert np.all(out[:200] == 0.0)
    # the onset: (5 − the recent max 1) / the new peak 5
    assert out[200] == pytest.approx(0.8)
    assert np.all(out[201:] == 0.0)  # the excursion goes on, then ends: nothing new


def test_a_rise_is_flagged_where_it_starts_and_each_row_by_its_own_step() -> None:
    # a rise over 10 rows from 1 to 11: each row steps 1 above everything before it; the
    # first step is the run's largest relative to the peak so far (1/2), later ones are
    # smaller (1/3, 1/4, ...): only the onset is reported
    x = np.r_[np.full(100, 1.0), np.arange(2.0, 12.0), np.full(50, 11.0)]
    out = SeriesNovelty(window=1000, peak_decay=1.0).update(["a"] * len(x), x)
    assert out[100] == pytest.approx(0.5)
    assert np.all(out[101:] == 0.0)
    # a rise that accelerates is reported again where a step beats the run's best: 2 → 4 is
    # 2/4 (not above 1/2), 4 → 10 is 6/10
    y = np.r_[np.full(100, 1.0), 2.0, 4.0, 10.0, np.full(50, 10.0)]
    out = SeriesNovelty(window=1000, peak_decay=1.0).update(["a"] * len(y), y)
    assert out[100:103].tolist() == pytest.approx([0.5, 0.0, 0.6])
    assert np.all(out[103:] == 0.0)


def test_a_repeat_within_the_window_is_not_new_one_after_it_is() -> None:
    x = np.full(3000, 1.0)
    x[100:110] = 5.0
    x[600:610] = 5.0  # within 1,000 rows: the recent max still holds the first
    x[2000:2010] = 5.0  # long after: forgotten
    out = SeriesNovelty(window=1000, peak_decay=1.0).update(["a"] * len(x), x)
    assert out[100] == pytest.approx(0.8)
    assert np.all(out[600:610] == 0.0)
    assert out[2000] == pytest.approx(0.8)


def test_a_smaller_rise_after_a_big_peak_is_scaled_by_that_peak() -> None:
    x = np.full(3000, 1.0)
    x[100] = 101.0  # a big peak sets the scale
    x[1500] = 11.0  # later, a rise of 10 over the recent max: 10 / ~peak
    out = SeriesNovelty(window=1000, peak_decay=1.0).update(["a"] * len(x), x)
    assert out[100] == pytest.approx(100 / 101)
    assert out[1500] == pytest.approx(10 / 101)


def test_the_recent_window_is_block_granular_and_never_shorter_than_asked() -> None:
    # window 100 = 10 blocks of 10 rows: a peak is remembered for at least 100 rows and
    # forgotten within 110
    for at in (50, 59):  # a block's first row (kept longest) and its last (the tight case)
        for gap in range(1, 101):
            x = np.full(400, 1.0)
            x[at], x[at + gap] = 5.0, 5.0
            assert SeriesNovelty(window=100).update(["a"] * 400, x)[at + gap] == 0.0, (at, gap)
    x = np.full(400, 1.0)
    x[50], x[161] = 5.0, 5.0
    assert SeriesNovelty(window=100).update(["a"] * 400, x)[161] > 0.7


def test_series_are_independent_and_drop_forgets() -> None:
    nv = SeriesNovelty()
    nv.update(["a", "b", "a"], np.array([3.0, 1.0, 6.0]))
    assert len(nv) == 2
    assert nv.update(["b"], np.array([2.0]))[0] == pytest.approx(0.5)  # b's own history
    nv.drop(["a"])
    assert len(nv) == 1
    assert nv.update(["a"], np.array([9.0]))[0] == 0.0  # a fresh series: its first row


@pytest.mark.parametrize("window,peak_decay", [(0, 0.5), (10, 0.0), (10, 1.5), (2.5, 0.9)])
def test_bad_parameters(window: int, peak_decay: float) -> None:
    with pytest.raises(ConfigError):
        SeriesNovelty(window, peak_decay)


@pytest.mark.parametrize("censor,runs", [(-0.1, 4), (1.5, 4), (0.4, 0), (0.4, 2.5)])
def test_bad_censoring(censor: float, runs: int) -> None:
    with pytest.raises(ConfigError):
        SeriesNovelty(100, censor=censor, censor_runs=runs)


def _anomalies(n: int = 3000) -> np.ndarray:
    """Noise around 1, then three anomalies 300 rows apart, each smaller than the one before."""
    x = 1.0 + 0.1 * np.random.default_rng(0).random(n)
    x[1000:1005], x[1300:1305], x[1600:1605] = 20.0, 8.0, 4.0
    return x


def test_without_censoring_the_first_anomaly_hides_the_next() -> None:
    out = SeriesNovelty(window=1000, peak_decay=1.0).update(["a"] * 3000, _anomalies())
    assert out[1000] > 0.9
    assert np.all(out[1001:2000] == 0.0)  # 8 and 4 are under the recent max, 20


def test_a_censored_anomaly_does_not_hide_the_next() -> None:
    nv = SeriesNovelty(window=1000, peak_decay=1.0, censor=0.3)
    out = nv.update(["a"] * 3000, _anomalies())
    # each onset is new against the noise (~1.1), scaled by the peak 20
    assert out[1000] == pytest.approx((20 - 1.1) / 20, abs=0.01)
    assert out[1300] == pytest.approx((8 - 1.1) / 20, abs=0.01)
    assert out[1600] == pytest.approx((4 - 1.1) / 20, abs=0.01)
    assert np.count_nonzero(out[900:2000]) == 3  # and nothing else: the noise stays under
    # the first two rose by 0.3 or more and were censored; the third (0.15) was not and
    # entered the maximum: a repeat of it is not new
    x = _anomalies()
    x[1900:1905] = 4.0
    again = SeriesNovelty(window=1000, peak_decay=1.0, censor=0.3).update(["a"] * 3000, x)
    assert again[1600] > 0.1
    assert np.all(again[1900:1905] == 0.0)


def test_a_recurring_high_is_censored_at_most_censor_runs_times_per_window() -> None:
    # a daily high (10 every 288 rows) that first shows after 1,000 rows of 1s: censored on
    # its first days, it would be new every day; after censor_runs of them in the window it
    # enters the maximum and is not new any more
    x = np.ones(4000)
    x[1000::288] = 10.0
    days = np.arange(1000, 4000, 288)
    for runs in (1, 3):
        nv = SeriesNovelty(window=2000, peak_decay=1.0, censor=0.4, censor_runs=runs)
        out = nv.update(["a"] * len(x), x)
        assert np.all(out[days[: runs + 1]] == pytest.approx(0.9))
        assert np.all(out[days[runs + 1 :]] == 0.0)
    plain = SeriesNovelty(window=2000, peak_decay=1.0).update(["a"] * len(x), x)
    assert np.flatnonzero(plain).tolist() == [1000]


def test_inside_a_censored_excursion_each_step_is_measured_against_its_own_highs() -> None:
    # a climb from 1 to 10 over 9 rows: only its onset is new, censored or not (each later row
    # steps less above the excursion's previous high than the onset did above the baseline)
    x = np.r_[np.ones(300), np.arange(2.0, 11.0), np.ones(200)]
    for censor in (0.0, 0.05):
        out = SeriesNovelty(window=1000, peak_decay=1.0, censor=censor).update(["a"] * len(x), x)
        assert np.flatnonzero(out).tolist() == [300], censor


def test_a_lasting_level_shift_enters_the_maximum_after_one_block() -> None:
    # from 1 to 10 for good: censored at first, then (after one block, 100 rows) a new level
    # like any other; a step up from it is new, and so is the same step after the window has
    # forgotten it, as without censoring (a shift censored for good would keep its own
    # maximum, 11.5, for good)
    rng = np.random.default_rng(0)
    x = np.r_[np.ones(500), 10.0 + 0.1 * rng.random(3000)]
    x[2000:2005] = x[3300:3305] = 11.5
    for censor in (0.0, 0.4):
        out = SeriesNovelty(window=1000, peak_decay=1.0, censor=censor).update(["a"] * len(x), x)
        assert out[500] == pytest.approx(0.9, abs=0.01), censor
        assert out[501:2000].max() < 0.01, censor  # the noise sets a few tiny new highs
        assert out[2000] == pytest.approx((11.5 - 10.1) / 11.5, abs=0.01), censor
        assert out[3300] == pytest.approx((11.5 - 10.1) / 11.5, abs=0.01), censor


def test_no_censoring_before_one_block_of_history() -> None:
    # window 1,000: blocks of 100 rows. A rise at row 50 enters the maximum (too little
    # history to call it an anomaly), so the same rise at row 500 is not new; one at row 150
    # is censored, so the same rise at 500 is new again
    for at, new_again in ((50, False), (150, True)):
        x = np.ones(1000)
        x[at] = x[500] = 10.0
        out = SeriesNovelty(window=1000, peak_decay=1.0, censor=0.4).update(["a"] * 1000, x)
        assert out[at] == pytest.approx(0.9)
        assert bool(out[500] > 0.0) == new_again


def test_rescale_keeps_the_history_in_the_new_units() -> None:
    nv = SeriesNovelty(window=100, peak_decay=1.0)
    nv.update(["a"] * 20, np.r_[np.ones(10), 5.0, np.ones(9)])
    nv.rescale(10.0)  # scores are now 10× what they were: the remembered max is 50
    assert nv.update(["a"], np.array([10.0]))[0] == 0.0
    assert nv.update(["a"], np.array([60.0]))[0] == pytest.approx(10 / 60)
    with pytest.raises(ConfigError):
        nv.rescale(0.0)


@pytest.mark.parametrize("censor", [0.0, 0.15])
@pytest.mark.parametrize("split", [37, 250, 333])
def test_a_rescaled_history_continues_like_one_run_on_the_new_scale(
    split: int, censor: float
) -> None:
    # novelty is scale-free: history in old units, rescaled by c, then scores c× as large,
    # must give exactly what one run on the c× scores gives (peak, open block and every block
    # of the ring are rescaled, whatever the split's position in a block; the censored-run
    # counts are not scores and stay as they are)
    x = np.random.default_rng(1).gamma(2.0, 1.0, size=600)
    c = 3.0
    whole = SeriesNovelty(50, 0.999, censor=censor, censor_runs=2).update(["a"] * 600, c * x)
    if censor:
        assert not np.array_equal(whole, SeriesNovelty(50, 0.999).update(["a"] * 600, c * x))
    nv = SeriesNovelty(50, 0.999, censor=censor, censor_runs=2)
    nv.update(["a"] * split, x[:split])
    nv.rescale(c)
    assert nv.update(["a"] * (600 - split), c * x[split:]) == pytest.approx(whole[split:])


def test_rescale_keeps_the_censoring_counts() -> None:
    # one anomaly censored before a swap (the scale triples), at most 2 per window: the next
    # one is censored too, so the third, smaller one is not hidden — as in one run on the new
    # scale (counts are not scores: scaled, 1 would read 3 and stop the second censoring)
    x = np.ones(800)
    x[300:305], x[500:505], x[700:705] = 20.0, 8.0, 4.0
    whole = SeriesNovelty(1000, 1.0, censor=0.3, censor_runs=2).update(["a"] * 800, 3 * x)
    nv = SeriesNovelty(1000, 1.0, censor=0.3, censor_runs=2)
    nv.update(["a"] * 400, x[:400])
    nv.rescale(3.0)
    out = nv.update(["a"] * 400, 3 * x[400:])
    assert out[700 - 400] == pytest.approx((12 - 3) / 60) == whole[700]
    assert out == pytest.approx(whole[400:])


def test_a_swap_inside_a_censored_excursion_rescales_its_maximum() -> None:
    # the excursion's own high (10) is a score: after the swap (×3) its rows (6 → 18) are
    # still under it (30), as in one run on the new scale; unscaled, 18 would rise above 10
    x = np.ones(400)
    x[300], x[301:310] = 10.0, 6.0
    whole = SeriesNovelty(1000, 1.0, censor=0.3).update(["a"] * 400, 3 * x)
    nv = SeriesNovelty(1000, 1.0, censor=0.3)
    nv.update(["a"] * 305, x[:305])
    nv.rescale(3.0)
    out = nv.update(["a"] * 95, 3 * x[305:])
    assert whole[300] > 0.8 and np.all(whole[301:] == 0.0)
    assert out == pytest.approx(whole[305:])


def _history(nv: SeriesNovelty, n: int = 300) -> np.ndarray:
    """Feed series "a" n rows of smoothed-like scores under the old model; return the scores."""
    x = np.random.default_rng(0).gamma(2.0, 1.0, size=n)
    nv.update(["a"] * n, x)
    return x


def test_the_history_carries_over_a_swap_rescaled_by_the_ratio_of_thresholds() -> None:
    # the new model's threshold is c× the old one, so are its scores: the rows the series has
    # already shown, on the new scale, are nothing new against the carried history
    c = 2.5
    nv = SeriesNovelty(window=1000, peak_decay=1.0)
    x = _history(nv)
    carried = carry_novelty(nv, c)
    assert len(carried) == 1  # the history is kept, not started afresh
    assert np.all(carried.update(["a"] * 50, c * x[:50]) == 0.0)
    # without the rescale, the same rows rise above a history in the old units: new
    unscaled = SeriesNovelty(window=1000, peak_decay=1.0)
    _history(unscaled)
    assert np.any(unscaled.update(["a"] * 50, c * x[:50]) > 0.0)
    # afresh, too: the first row has nothing to be new against, the next ones do
    fresh = SeriesNovelty(window=1000, peak_decay=1.0)
    assert np.any(fresh.update(["a"] * 50, c * x[:50]) > 0.0)


@pytest.mark.parametrize("c", [0.5, 4.0])
def test_a_carried_history_continues_like_one_run_on_the_new_scale(c: float) -> None:
    # the swap at row 300 of one series: with the history carried (× c) the rest of the stream
    # on the new scale gives exactly what one run on the new scale gives
    x = np.random.default_rng(2).gamma(2.0, 1.0, size=600)
    x[450:455] = 30.0  # an onset after the swap, new against the history in any units
    stage = EvaluationSettings(novelty_window=200, novelty_peak_decay=0.999, novelty_censor=0.2)
    whole = novelty_stage(stage).update(["a"] * 600, c * x)
    nv = novelty_stage(stage)
    nv.update(["a"] * 300, x[:300])
    out = carry_novelty(nv, c).update(["a"] * 300, c * x[300:])
    assert out == pytest.approx(whole[300:])
    assert out[150] > 0.5


@pytest.mark.parametrize("ratio", [0.0, -2.0, math.nan, math.inf, -math.inf])
def test_a_ratio_that_is_not_finite_and_positive_starts_afresh(ratio: float) -> None:
    nv = SeriesNovelty(window=500, peak_decay=0.99, censor=0.3, censor_runs=2)
    x = _history(nv)
    carried = carry_novelty(nv, ratio)
    assert len(carried) == 0
    assert (carried.window, carried.peak_decay, carried.censor, carried.censor_runs) == (
        500,
        0.99,
        0.3,
        2,
    )
    # the series is new to it: the same as a fresh stage with the same parameters gives
    fresh = SeriesNovelty(window=500, peak_decay=0.99, censor=0.3, censor_runs=2)
    rows = np.r_[x[:50], 9.0, x[50:60]]
    want = fresh.update(["a"] * 61, rows)
    got = carried.update(["a"] * 61, rows)
    assert np.array_equal(got, want)
    assert np.any(got > 0.0)  # a history would have hidden these rows (see above)


def test_novelty_stage_passes_every_setting_through() -> None:
    s = EvaluationSettings(
        novelty_window=321, novelty_peak_decay=0.97, novelty_censor=0.45, novelty_censor_runs=7
    )
    nv = novelty_stage(s)
    assert (nv.window, nv.peak_decay, nv.censor, nv.censor_runs) == (321, 0.97, 0.45, 7)


def test_a_censored_excursion_that_lasts_a_block_enters_the_maximum_and_carries_over() -> None:
    # a censored excursion that lasts one block (100 rows) enters the maximum: a later, higher
    # spike is new against it (10), not against the baseline (1) as after a short excursion
    # that stays censored; fed in two calls cut where the excursion ends (its row count at one
    # block), the rest continues like one run
    def with_excursion(rows: int) -> np.ndarray:
        x = np.ones(600)
        x[300 : 300 + rows], x[550:555] = 10.0, 20.0
        return x

    x = with_excursion(150)
    whole = SeriesNovelty(1000, 1.0, censor=0.4).update(["a"] * len(x), x)
    assert whole[300] == pytest.approx(0.9) and whole[550] == pytest.approx((20 - 10) / 20)
    short = with_excursion(50)
    out = SeriesNovelty(1000, 1.0, censor=0.4).update(["a"] * len(short), short)
    assert out[550] == pytest.approx((20 - 1) / 20)
    nv = SeriesNovelty(1000, 1.0, censor=0.4)
    nv.update(["a"] * 450, x[:450])
    assert np.array_equal(nv.update(["a"] * 150, x[450:]), whole[450:])


# -- the novelty gate of the alerts (alerts.novelty_gate) --------------------------------------


def _gate_stream(n: int = 600) -> ScoreParts:
    """One series at a low error, with the same excursion at rows 100, 250 and 400 (10 rows
    each) and a larger one at row 500."""
    err = np.full((n, 3), 0.5, dtype=np.float32)
    for start in (100, 250, 400):
        err[start : start + 10] = 3.0
    err[500:510] = 6.0
    return ScoreParts(err, np.ones(n, dtype=np.float32))


def _gate_scorer(novelty: SeriesNovelty | None, gate: float = 0.05) -> Scorer:
    fit_on = np.random.default_rng(0).gamma(2.0, 0.25, size=(300, 3)).astype(np.float32)
    hybrid = HybridScore(alpha=1.0).fit(ScoreParts(fit_on, np.ones(300, dtype=np.float32)))
    # between the raw score at the low error and at the excursions'
    parts = _gate_stream(2)
    low = float(hybrid.raw(parts).raw[0])
    high = float(hybrid.raw(ScoreParts(np.full((1, 3), 3.0, np.float32), np.ones(1))).raw[0])
    return Scorer(
        hybrid,
        (low + high) / 2,
        ("a", "b", "c"),
        "v",
        ema_beta=0.0,
        close_after=2,
        novelty=novelty,
        novelty_gate=gate,
    )


def _opens(sc: Scorer, parts: ScoreParts, rows: range) -> list[int]:
    idx = np.asarray(rows)
    out = sc.update(["s"] * len(idx), idx.astype(np.float64), parts.take(idx))
    return [int(a.ts) for a in out.alerts if a.event == "open"]


def test_the_gate_opens_a_recurring_high_once_and_a_new_higher_one_again() -> None:
    parts = _gate_stream()
    assert _opens(_gate_scorer(None), parts, range(600)) == [100, 250, 400, 500]
    gated = _gate_scorer(SeriesNovelty(1000))
    assert _opens(gated, parts, range(600)) == [100, 500]
    # an open episode stays open while its score stays up: the gate is for opens only
    gated = _gate_scorer(SeriesNovelty(1000))
    out = gated.update(["s"] * 105, np.arange(105.0), parts.take(np.arange(105)))
    assert [a.event for a in out.alerts] == ["open"] and gated.open_series() == {"s"}
    # once the history of the first excursion is older than the window, it opens again
    short = _gate_scorer(SeriesNovelty(100))
    assert _opens(short, parts, range(600)) == [100, 250, 400, 500]


def test_a_swap_carries_the_history_the_gate_measures_against() -> None:
    parts = _gate_stream()
    old = _gate_scorer(SeriesNovelty(1000))
    assert _opens(old, parts, range(300)) == [100]
    carried = _gate_scorer(SeriesNovelty(1000))
    carried.carry(old)
    assert _opens(carried, parts, range(300, 600)) == [500]
    fresh = _gate_scorer(SeriesNovelty(1000))  # no history: the repeat at 400 is new to it
    assert _opens(fresh, parts, range(300, 600)) == [400, 500]


def test_the_settings_turn_the_gate_on(tiny: TinyModel) -> None:
    assert build_scorer(tiny.artifact, AlertSettings()).novelty is None
    sc = build_scorer(tiny.artifact, AlertSettings(novelty_gate=0.05, novelty_window=500))
    assert sc.novelty is not None and sc.novelty_gate == 0.05
    assert (sc.novelty.window, sc.novelty.censor) == (500, 0.4)
    assert sc.novelty in sc._parts()  # its per-series state is dropped with the rest
    with pytest.raises(ValueError, match="novelty_gate"):
        AlertSettings(novelty_gate=1.5)

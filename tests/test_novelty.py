"""SeriesNovelty: high at the onset of a new, larger-than-recent excursion, 0 while it lasts."""

from __future__ import annotations

import numpy as np
import pytest

from stream_vae.errors import ConfigError, DataError
from stream_vae.scoring.hybrid import HybridScore, ScoreParts
from stream_vae.scoring.novelty import SeriesNovelty
from stream_vae.scoring.scorer import Scorer


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


def test_rescale_keeps_the_history_in_the_new_units() -> None:
    nv = SeriesNovelty(window=100, peak_decay=1.0)
    nv.update(["a"] * 20, np.r_[np.ones(10), 5.0, np.ones(9)])
    nv.rescale(10.0)  # scores are now 10× what they were: the remembered max is 50
    assert nv.update(["a"], np.array([10.0]))[0] == 0.0
    assert nv.update(["a"], np.array([60.0]))[0] == pytest.approx(10 / 60)
    with pytest.raises(ConfigError):
        nv.rescale(0.0)


@pytest.mark.parametrize("split", [37, 250, 333])
def test_a_rescaled_history_continues_like_one_run_on_the_new_scale(split: int) -> None:
    # novelty is scale-free: history in old units, rescaled by c, then scores c× as large,
    # must give exactly what one run on the c× scores gives (peak, open block and every block
    # of the ring are rescaled, whatever the split's position in a block)
    x = np.random.default_rng(1).gamma(2.0, 1.0, size=600)
    c = 3.0
    whole = SeriesNovelty(window=50, peak_decay=0.999).update(["a"] * 600, c * x)
    nv = SeriesNovelty(window=50, peak_decay=0.999)
    nv.update(["a"] * split, x[:split])
    restored = SeriesNovelty(window=50, peak_decay=0.999)
    restored.restore(nv.snapshot())
    restored.rescale(c)
    assert restored.update(["a"] * (600 - split), c * x[split:]) == pytest.approx(whole[split:])


def test_restore_refuses_another_window() -> None:
    nv = SeriesNovelty(window=1050)
    nv.update(["a"] * 300, np.ones(300))
    with pytest.raises(DataError):
        SeriesNovelty(window=1000).restore(nv.snapshot())


def _novelty_after_swap(
    threshold: float, *, inherit: bool = True, ema_beta: float = 0.5, **kw: int
) -> np.ndarray:
    """A series' novelty over 50 rows it has already shown, scored by a scorer swapped in
    (threshold ``threshold``) after one with threshold 1 scored 300 rows of it."""
    rng = np.random.default_rng(0)
    parts = ScoreParts(
        rng.gamma(1.0, 1.0, size=(300, 2)).astype(np.float32),
        rng.gamma(2.0, 1.0, size=300).astype(np.float32),
    )
    hybrid = HybridScore(0.7).fit(parts)
    keys, ts = ["a"] * 300, np.arange(300.0)
    old = Scorer(hybrid, 1.0, ("x", "y"), "v1", ema_beta=ema_beta)
    old.update(keys, ts, parts)
    new = Scorer(hybrid, threshold, ("x", "y"), "v2", ema_beta=ema_beta, **kw)
    if inherit:
        new.inherit_novelty(old)
    return new.update(keys[:50], ts[:50] + 300, parts.take(np.arange(50))).novelty


def test_a_swapped_in_scorer_inherits_the_novelty_history() -> None:
    # another model, another threshold: rows the series has already shown, under the new
    # scale, are nothing new with the history carried over; a fresh history flags some
    assert np.all(_novelty_after_swap(2.0) == 0.0)
    assert np.any(_novelty_after_swap(2.0, inherit=False) > 0.0)


def test_inherited_history_is_rescaled_by_the_ratio_of_the_thresholds() -> None:
    # no smoothing: both scorers see the same raw scores. Against a history read as half as
    # large (the new threshold is half the old), some rows the series has shown rise above it
    assert np.any(_novelty_after_swap(0.5, ema_beta=0.0) > 0.0)
    assert np.all(_novelty_after_swap(1.0, ema_beta=0.0) == 0.0)
    # another novelty window, or no usable threshold: the history starts afresh
    assert np.any(_novelty_after_swap(1.0, ema_beta=0.0, novelty_window=500) > 0.0)
    assert np.any(_novelty_after_swap(0.0, ema_beta=0.0) > 0.0)

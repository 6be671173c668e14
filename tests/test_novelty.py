"""SeriesNovelty: high at the onset of a new, larger-than-recent excursion, ~0 while it lasts."""

from __future__ import annotations

import numpy as np
import pytest

from stream_vae.errors import ConfigError
from stream_vae.scoring.novelty import SeriesNovelty


def test_onset_scores_persistence_does_not() -> None:
    nv = SeriesNovelty(peak_decay=1.0, decay=0.99)
    base = np.full(300, 1.0)
    base[200:260] = 5.0  # an excursion of 60 rows
    out = nv.update(["a"] * 300, base)
    # the first row is new (novelty 1); then the series sits at its level: nothing new
    assert out[0] == 1.0 and np.all(out[1:200] == 0.0)
    # the onset: (5 − the recent max 1) / the new peak 5
    assert out[200] == pytest.approx(0.8)
    assert np.all(out[201:260] == 0.0)  # the excursion goes on: nothing new
    assert np.all(out[260:] == 0.0)  # back to normal: below the recent peak


def test_a_repeat_soon_after_scores_low_a_repeat_much_later_scores_high() -> None:
    x = np.full(2000, 1.0)
    x[100:110] = 5.0
    x[150:160] = 5.0  # soon after: the recent max still remembers the first
    x[1500:1510] = 5.0  # long after: forgotten (decay 0.99: ~70-row half-life)
    out = SeriesNovelty(peak_decay=1.0, decay=0.99).update(["a"] * len(x), x)
    assert out[100] > 0.7
    assert out[150] < 0.5
    assert out[1500] > 0.7


def test_series_are_independent_and_drop_forgets() -> None:
    nv = SeriesNovelty()
    nv.update(["a", "b"], np.array([3.0, 1.0]))
    assert len(nv) == 2
    nv.drop(["a"])
    assert len(nv) == 1
    assert nv.update(["a"], np.array([1.0]))[0] == 1.0  # a fresh series: its first row is new


@pytest.mark.parametrize("peak_decay,decay", [(0.0, 0.5), (1.5, 0.5), (0.9, 1.0), (0.9, -0.1)])
def test_bad_parameters(peak_decay: float, decay: float) -> None:
    with pytest.raises(ConfigError):
        SeriesNovelty(peak_decay, decay)

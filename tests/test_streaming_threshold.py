"""The streaming (DSPOT) threshold: it keeps the target rate on a stationary stream, follows a
drifting one within its bounds while a spike still alerts, and never learns from what alerts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stream_vae.config import AlertSettings
from stream_vae.errors import ArtifactError, ConfigError
from stream_vae.runtime.live import LiveModel, build_scorer, streaming_threshold
from stream_vae.scoring.spot import StreamingThreshold, TailStart
from stream_vae.scoring.threshold import calibrate

Q = 0.01


def _held_out(rng: np.random.Generator, n: int = 5000) -> np.ndarray:
    # a score's shape: a positive level and a right tail
    return 1.0 + rng.gamma(2.0, 0.5, size=n)


def _spot(rng: np.random.Generator, **kw: float) -> tuple[StreamingThreshold, float]:
    held = _held_out(rng)
    t0 = calibrate(held, Q).threshold
    return StreamingThreshold(TailStart.fit(held, t0, Q), t0, Q, **kw), t0  # type: ignore[arg-type]


def test_the_start_is_the_calibrated_threshold() -> None:
    rng = np.random.default_rng(0)
    for t0_quantile in (0.99, 0.995):
        held = _held_out(rng)
        t0 = float(np.quantile(held, t0_quantile))
        spot = StreamingThreshold(TailStart.fit(held, t0, Q), t0, Q)
        assert spot.update(["a"], [0.0])[0] == pytest.approx(t0, rel=1e-9)


def test_a_stationary_stream_keeps_the_target_rate() -> None:
    rng = np.random.default_rng(1)
    spot, t0 = _spot(rng, depth=500)
    keys = [f"s{i % 5}" for i in range(50_000)]
    x = _held_out(rng, 50_000)
    thr = spot.update(keys, x)
    rate = float((x >= thr).mean())
    assert 0.5 * Q < rate < 2.0 * Q, rate
    # and the threshold stays near the calibrated one
    assert 0.85 * t0 < float(np.median(thr)) < 1.15 * t0


def test_a_drifting_stream_keeps_its_rate_and_a_spike_still_alerts() -> None:
    rng = np.random.default_rng(2)
    spot, t0 = _spot(rng, depth=500, ceiling=3.0)
    n = 20_000
    drift = np.linspace(0.0, 2.5, n)  # the whole distribution moves up by 2.5 (t0 is ~4.3)
    x = _held_out(rng, n) + drift
    x[-100] = 2.5 * t0  # a spike, after the drift
    keys = ["a"] * n
    thr = spot.update(keys, x)
    static_rate = float((x[-5000:] >= t0).mean())
    rate = float((x[-5000:] >= thr[-5000:]).mean())
    assert static_rate > 10 * Q  # the calibrated threshold is long out of date
    assert rate < 3 * Q, rate
    assert x[-100] >= thr[-100]


def test_what_alerts_moves_the_bar_three_rows_at_most_and_the_bounds_hold() -> None:
    rng = np.random.default_rng(3)
    spot, t0 = _spot(rng, depth=50, floor=0.8, ceiling=1.5)
    spot.update(["a"] * 200, _held_out(rng, 200))
    during = spot.update(["a"] * 500, np.full(500, 10.0 * t0))  # a long anomaly
    # its first three rows are learned as censored peaks (they passed the bar), no more
    np.testing.assert_array_equal(during[3:], np.full(497, during[3]))
    assert during[3] <= 1.5 * t0 + 1e-12
    high = spot.update(["b"] * 2000, np.linspace(1.0, 1.49, 2000) * t0)  # a slow ramp, below
    assert high.max() <= 1.5 * t0 + 1e-12
    low = spot.update(["c"] * 2000, np.zeros(2000))  # silence
    assert low.min() >= 0.8 * t0 - 1e-12


def test_a_slow_ramp_under_the_ceiling_is_absorbed_a_fast_one_is_not() -> None:
    """The trade-off docs/scoring.md measures: an adaptive threshold adapts to a slow fault."""
    rng = np.random.default_rng(4)
    found = {}
    for n_ramp in (50, 20_000):
        spot, t0 = _spot(rng, depth=500, ceiling=3.0)
        # normal, then a fault that grows by t0 over n_ramp rows (to below the ceiling) and
        # stays: found is the share of its last 300 rows that alert
        ramp = np.r_[np.zeros(2000), np.linspace(0.0, 1.0, n_ramp), np.ones(300)] * t0
        x = _held_out(rng, len(ramp)) + ramp
        thr = spot.update(["a"] * len(x), x)
        found[n_ramp] = float((x[-300:] >= thr[-300:]).mean())
    assert found[50] > 0.5
    assert found[20_000] < 0.2


def test_drop_forgets_and_a_swap_carries_the_state() -> None:
    rng = np.random.default_rng(5)
    spot, _ = _spot(rng, depth=100)
    spot.update(["a"] * 3000, _held_out(rng, 3000) + 2.0)
    moved = spot.ratios(["a"])["a"]
    assert moved > 1.2
    other, _ = _spot(np.random.default_rng(6), depth=100)
    other.carry(spot)
    assert other.ratios(["a"])["a"] == pytest.approx(moved, rel=0.1)
    spot.drop(["a"])
    assert spot.series() == frozenset()


def test_bad_parameters_are_refused() -> None:
    start = TailStart(1.0, 1.0, 0.02, 0.0, 0.5)
    for kw in ({"depth": 5}, {"floor": 1.5}, {"ceiling": 0.9}, {"floor": 0.0}):
        with pytest.raises(ConfigError):
            StreamingThreshold(start, 2.0, Q, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        StreamingThreshold(start, 0.0, Q)


def test_training_stores_the_start_an_old_model_is_refused_and_a_swap_carries(tiny) -> None:  # type: ignore[no-untyped-def]
    dspot = AlertSettings(threshold_mode="dspot")
    art = tiny.artifact
    assert set(art.calibration.details["stream"]) == {
        "level", "peak_threshold", "peak_rate", "shape", "scale", "units",
    }  # fmt: skip
    details = {k: v for k, v in art.calibration.details.items() if k != "stream"}
    old = replace(art, calibration=replace(art.calibration, details=details), version="")
    with pytest.raises(ArtifactError, match="threshold_mode"):
        build_scorer(old, dspot)
    # a hot swap to it is refused, and the live model goes on
    live = LiveModel(art, alerts=dspot)
    with pytest.raises(ArtifactError):
        live.install(old, ts=0.0)
    assert live.version == art.version and live.scorer.streaming is not None
    live = LiveModel(art, alerts=dspot)
    assert live.scorer.streaming is not None
    assert streaming_threshold(art, dspot).update(["x"], [0.0])[0] == pytest.approx(art.threshold)
    live.scorer.streaming.update(["x"] * 500, np.full(500, 0.95 * art.threshold))
    ratio = live.scorer.streaming.ratios(["x"])["x"]
    assert ratio != pytest.approx(1.0)
    live.install(replace(art, version="v-next"), ts=0.0)
    assert live.scorer.streaming is not None
    assert live.scorer.streaming.ratios(["x"])["x"] == pytest.approx(ratio)


def test_the_tail_factor_moves_the_rate_it_holds_and_an_impossible_one_is_refused(tiny) -> None:  # type: ignore[no-untyped-def]
    """alerts.threshold_tail_factor: the streaming threshold sits at factor × target_fpr of the
    recent tail, so on a stationary stream the rows over it are that share, not the target."""
    rng = np.random.default_rng(1)
    held = _held_out(rng)
    t0 = calibrate(held, Q).threshold
    x = _held_out(rng, 50_000)
    keys = [f"s{i % 5}" for i in range(len(x))]
    rates = {}
    for factor in (1.0, 5.0):
        spot = StreamingThreshold(TailStart.fit(held, t0, Q), t0, Q * factor, depth=500)
        rates[factor] = float((x >= spot.update(keys, x)).mean())
    assert 0.5 * Q < rates[1.0] < 2.0 * Q, rates
    assert 2.5 * Q < rates[5.0] < 10.0 * Q, rates
    # through the settings: the product's threshold for a model starts lower, at the wider tail
    art = tiny.artifact
    wide = AlertSettings(threshold_mode="dspot", threshold_tail_factor=5.0)
    assert streaming_threshold(art, wide).update(["x"], [0.0])[0] < 0.99 * art.threshold
    too_wide = AlertSettings(threshold_mode="dspot", threshold_tail_factor=0.5 / Q)
    assert art.calibration.target_fpr == Q
    with pytest.raises(ArtifactError, match="threshold_tail_factor"):
        build_scorer(art, too_wide)

"""RetrainPolicy: when a retrain starts and on which windows (stream time only, no I/O).

The policy is built from its settings (and a drift monitor where a test needs drift): no model
is trained for these tests, except the one that checks :meth:`RetrainPolicy.for_model` reads
the monitor's thinning and features from an artifact.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pytest

from stream_vae.config import load_settings
from stream_vae.core.windows import ReadyWindows
from stream_vae.lifecycle.drift import DriftEvent, DriftMonitor
from stream_vae.lifecycle.policy import RetrainPolicy
from stream_vae.scoring.hybrid import HybridScore, ScoreParts
from stream_vae.scoring.scorer import ScoredBatch, Scorer

from .conftest import TinyModel

W, D = 4, 2  # the windows' shape (W points, D channels): the policy never looks inside


def _policy(monitor: DriftMonitor | None = None, **retrain: Any) -> RetrainPolicy:
    settings = load_settings(
        env={}, retrain={"min_windows": 50, "bucket_s": 1e9, "reservoir_buckets": 1, **retrain}
    )
    return RetrainPolicy(settings.retrain, monitor, seed=0)


def _add(policy: RetrainPolicy, ts: np.ndarray) -> None:
    policy.reservoir.add(["a"] * len(ts), ts, np.zeros((len(ts), W, D), np.float32))


def _drift(since_ts: float, kind: Literal["score", "input"] = "score") -> DriftEvent:
    channel = "score" if kind == "score" else "x"
    return DriftEvent(kind, channel, since_ts + 10.0, since_ts, 300, 1e-9)


def _scored(
    keys: list[str], ts: np.ndarray, raw: np.ndarray, smoothed: np.ndarray | None = None
) -> ScoredBatch:
    """A scored batch as the scorer hands it over (only keys, ts, raw, smoothed are read)."""
    s = raw if smoothed is None else smoothed
    zeros = np.zeros(len(keys))
    return ScoredBatch(tuple(keys), ts, raw, s, zeros, zeros, 1.0, ())


def test_the_policy_keeps_its_settings_and_seeds_its_reservoir() -> None:
    settings = load_settings(env={}, retrain={"reservoir_windows": 120, "reservoir_buckets": 6})
    p = RetrainPolicy(settings.retrain, seed=7)
    assert p.settings is settings.retrain and p.monitor is None
    assert (p.reservoir.capacity, p.reservoir.n_buckets, p.reservoir.seed) == (120, 6, 7)
    assert p.reservoir.bucket_s == settings.retrain.bucket_s


def test_a_drift_job_waits_for_enough_windows_after_the_change() -> None:
    p = _policy()
    _add(p, np.arange(100.0))  # 100 windows before the change
    p.on_drift(_drift(since_ts=100.0))
    assert p.due(100.0) is None  # none after the change yet
    _add(p, np.arange(100.0, 149.0))
    assert p.due(149.0) is None  # 49 < min_windows
    _add(p, np.array([149.0]))
    job = p.due(149.0)
    assert job is not None and job.trigger == "drift" and job.drift is not None
    assert len(job.sample) == 50 and float(job.sample.ts.min()) == 100.0  # the new normal only
    assert p.due(150.0) is None  # one job per event


def test_input_drift_arms_only_when_asked() -> None:
    p = _policy()
    p.on_drift(_drift(0.0, "input"))
    assert p.armed is None
    p = _policy(on_input_drift=True)
    p.on_drift(_drift(0.0, "input"))
    assert p.armed is not None and p.armed.kind == "input"
    p = _policy(on_drift=False)
    p.on_drift(_drift(0.0))
    assert p.armed is None


def test_a_rejected_drift_job_is_retried_on_newer_windows_three_times() -> None:
    p = _policy()
    p.on_drift(_drift(since_ts=0.0))
    _add(p, np.arange(50.0))
    t = 50.0
    for attempt in range(3):
        job = p.due(t)
        assert job is not None, attempt
        assert p.rejected(job)
        assert p.due(t) is None  # waits for min_windows windows newer than the failed try
        _add(p, np.arange(t, t + 50.0))
        t += 50.0
    job = p.due(t)
    assert job is not None and len(job.sample) == 200  # everything since the change
    assert not p.rejected(job)  # a fourth rejection: wait for the next drift event
    _add(p, np.arange(t, t + 100.0))
    assert p.due(t + 100.0) is None


def test_a_drift_event_while_a_retry_waits_does_not_push_it_out() -> None:
    p = _policy()
    p.on_drift(_drift(since_ts=0.0))
    _add(p, np.arange(50.0))
    job = p.due(50.0)
    assert job is not None and p.rejected(job)
    p.on_drift(_drift(since_ts=90.0))  # the same change, seen again by the restarted monitor
    _add(p, np.arange(50.0, 100.0))
    retry = p.due(100.0)  # 50 windows newer than the failed try, as without that event
    assert retry is not None and retry.drift is not None and retry.drift.since_ts == 0.0
    assert len(retry.sample) == 100
    # with no retry waiting, a new event re-arms as before
    p.on_drift(_drift(since_ts=150.0))
    assert p.armed is not None and p.armed.since_ts == 150.0


def test_schedule_counts_from_the_first_full_reservoir() -> None:
    p = _policy(schedule_s=100.0)
    _add(p, np.arange(50.0))
    assert p.due(49.0) is None  # the clock starts here
    assert p.due(148.0) is None
    job = p.due(149.0)
    assert job is not None and job.trigger == "schedule" and job.drift is None
    assert not p.rejected(job)  # schedule jobs are not retried: the next tick is
    assert p.due(200.0) is None and p.due(249.0) is not None


def test_swapped_disarms() -> None:
    p = _policy()
    _add(p, np.arange(60.0))
    p.on_drift(_drift(since_ts=0.0))
    p.swapped()
    assert p.armed is None and p.due(60.0) is None


def _monitor(**kw: Any) -> DriftMonitor:
    return DriftMonitor(
        window_size=60, stat_size=20, max_samples_per_batch=10_000, min_interval_s=0, **kw
    )


def _ready(ts: np.ndarray, values: np.ndarray) -> ReadyWindows:
    return ReadyWindows(("a",) * len(ts), ts, values.astype(np.float32))


def test_watch_arms_on_its_monitors_score_drift() -> None:
    rng = np.random.default_rng(0)
    p = _policy(_monitor())
    ts = np.arange(1200.0)
    raw = np.r_[rng.normal(size=600), rng.normal(3.0, 1.0, size=600)]  # the scores shift
    ready = _ready(ts, np.zeros((1200, W, D)))
    assert (
        p.watch(_ready(ts[:600], ready.values[:600]), _scored(["a"] * 600, ts[:600], raw[:600]))
        == []
    )
    assert p.armed is None
    events = p.watch(
        _ready(ts[600:], ready.values[600:]), _scored(["a"] * 600, ts[600:], raw[600:])
    )
    assert [e.kind for e in events] == ["score"]
    assert p.armed is events[0]
    assert _policy().watch(ready, _scored(["a"] * 1200, ts, raw)) == []  # no monitor: no drift


def test_watch_feeds_the_feature_means_but_not_the_calendar_channels() -> None:
    # feature x's window mean shifts, the score does not; a calendar channel (the third) cycles
    # wildly and must not reach the monitor (it has two channels, one per feature)
    rng = np.random.default_rng(1)
    n = 1600  # input samples are every 4th score sample
    values = rng.normal(size=(n, W, 3)).astype(np.float32)
    values[n // 2 :, :, 0] += 3.0
    values[:, :, 2] = np.sin(np.arange(n, dtype=np.float32))[:, None] * 100.0
    ts, raw = np.arange(float(n)), rng.normal(size=n)
    for on_input_drift in (False, True):
        p = _policy(_monitor(feature_names=("x", "y")), on_input_drift=on_input_drift)
        ready = _ready(ts, values)
        means = p.window_means(ready)
        assert means is not None and means.shape == (n, 2)
        assert np.allclose(means, values[..., :2].mean(axis=1))
        events = p.watch(ready, _scored(["a"] * n, ts, raw))
        assert {(e.kind, e.channel) for e in events} == {("input", "x")}
        assert (p.armed is not None) == on_input_drift
    assert _policy().window_means(_ready(ts, values)) is None
    assert _policy(_monitor()).window_means(_ready(ts, values)) is None  # input drift off


def test_a_swap_restarts_the_monitor_so_a_new_scale_is_not_drift() -> None:
    # the old model's scores, then the new model's on another scale: reported as drift unless
    # the swap restarts the monitor's detectors
    rng = np.random.default_rng(0)
    before, after = rng.normal(size=600), rng.normal(3.0, 1.0, size=600)
    ts = np.arange(1200.0)
    values = np.zeros((600, W, D))
    for swap, drifts in ((False, True), (True, False)):
        p = _policy(_monitor())
        assert p.watch(_ready(ts[:600], values), _scored(["a"] * 600, ts[:600], before)) == []
        if swap:
            p.swapped()
        events = p.watch(_ready(ts[600:], values), _scored(["a"] * 600, ts[600:], after))
        assert bool(events) == drifts, swap
        assert (p.armed is not None) == drifts, swap


def _scorer(close_after: int = 100) -> Scorer:
    rng = np.random.default_rng(0)
    fit_on = ScoreParts(
        rng.gamma(1.0, 1.0, size=(200, 2)).astype(np.float32),
        rng.gamma(2.0, 1.0, size=200).astype(np.float32),
    )
    return Scorer(
        HybridScore(0.7).fit(fit_on), 1.0, ("x", "y"), "v", hysteresis=0.9, close_after=close_after
    )


def test_offer_keeps_the_clean_windows_only() -> None:
    scorer = _scorer()
    hot = ScoreParts(np.full((1, 2), 1e3, np.float32), np.full(1, 1e3, np.float32))
    scorer.update(["b"], [0.0], hot)
    assert scorer.open_series() == {"b"}
    keys = ["a", "a", "b", "c"]
    ts = np.array([1.0, 2.0, 3.0, 4.0])
    values = np.arange(4 * W * D, dtype=np.float32).reshape(4, W, D)
    # under threshold × hysteresis (0.9) and not in an episode: rows 0 and 3
    scored = _scored(keys, ts, np.zeros(4), smoothed=np.array([0.5, 0.95, 0.1, 0.89]))
    ready = ReadyWindows(tuple(keys), ts, values)
    p = _policy(fleet_min_series=10)
    p.offer(ready, scored, scorer, n_series=3)
    sample = p.reservoir.sample()
    assert sample.keys == ("a", "c") and sample.ts.tolist() == [1.0, 4.0]
    assert np.array_equal(sample.windows, values[[0, 3]])
    # the fleet rule: one of two series in an episode is half the fleet: every window counts
    p = _policy(fleet_change_share=0.5, fleet_min_series=2)
    p.offer(ready, scored, scorer, n_series=2)
    assert len(p.reservoir) == 4
    p.offer(
        ReadyWindows((), np.empty(0), np.empty((0, W, D), np.float32)),
        _scored([], np.empty(0), np.empty(0)),
        scorer,
        2,
    )
    assert len(p.reservoir) == 4


@pytest.mark.parametrize("input_drift", [True, False])
def test_for_model_builds_the_monitor_from_the_artifact(tiny: TinyModel, input_drift: bool) -> None:
    art = tiny.artifact
    # a stride that does not divide the window: thin_every is ceil(W / stride)
    art = replace(
        art,
        spec=art.spec.model_copy(
            update={"window": art.spec.window.model_copy(update={"stride": 3})}
        ),
    )
    w = art.vae_config.window
    settings = load_settings(env={}, drift={"input_drift": input_drift})
    p = RetrainPolicy.for_model(art, settings.drift, settings.retrain, seed=5)
    assert p.settings is settings.retrain
    m = p.monitor
    assert m is not None
    assert m.thin_every == math.ceil(w / 3) and m.thin_every != w
    assert m.feature_names == (art.feature_names if input_drift else None)
    assert m.seed == 5 and p.reservoir.seed == 5
    assert (m.alpha, m.window_size) == (settings.drift.alpha, settings.drift.window_size)
    # the settings' own thin_every wins over the model's
    thin = load_settings(env={}, drift={"thin_every": 2})
    m2 = RetrainPolicy.for_model(art, thin.drift, thin.retrain).monitor
    assert m2 is not None and m2.thin_every == 2
    off = load_settings(env={}, drift={"enabled": False})
    p_off = RetrainPolicy.for_model(art, off.drift, off.retrain, seed=5)
    assert p_off.monitor is None and p_off.reservoir.seed == 5

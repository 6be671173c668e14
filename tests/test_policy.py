"""RetrainPolicy: when a retrain starts and on which windows (stream time only, no I/O)."""

from __future__ import annotations

import numpy as np

from stream_vae.config import load_settings
from stream_vae.lifecycle.drift import DriftEvent
from stream_vae.lifecycle.policy import RetrainPolicy

from .conftest import TinyModel


def _policy(tiny: TinyModel, **retrain: object) -> RetrainPolicy:
    settings = load_settings(
        env={}, retrain={"min_windows": 50, "bucket_s": 1e9, "reservoir_buckets": 1, **retrain}
    )
    return RetrainPolicy(settings, tiny.artifact)


def _add(policy: RetrainPolicy, tiny: TinyModel, ts: np.ndarray) -> None:
    w, d = tiny.window_shape
    policy.reservoir.add(["a"] * len(ts), ts, np.zeros((len(ts), w, d), np.float32))


def _drift(since_ts: float) -> DriftEvent:
    return DriftEvent("score", "score", since_ts + 10.0, since_ts, 300, 1e-9)


def test_a_drift_job_waits_for_enough_windows_after_the_change(tiny: TinyModel) -> None:
    p = _policy(tiny)
    _add(p, tiny, np.arange(100.0))  # 100 windows before the change
    p.on_drift(_drift(since_ts=100.0))
    assert p.due(100.0) is None  # none after the change yet
    _add(p, tiny, np.arange(100.0, 149.0))
    assert p.due(149.0) is None  # 49 < min_windows
    _add(p, tiny, np.array([149.0]))
    job = p.due(149.0)
    assert job is not None and job.trigger == "drift" and job.drift is not None
    assert len(job.sample) == 50 and float(job.sample.ts.min()) == 100.0  # the new normal only
    assert p.due(150.0) is None  # one job per event


def test_a_rejected_drift_job_is_retried_on_newer_windows_three_times(tiny: TinyModel) -> None:
    p = _policy(tiny)
    p.on_drift(_drift(since_ts=0.0))
    _add(p, tiny, np.arange(50.0))
    t = 50.0
    for attempt in range(3):
        job = p.due(t)
        assert job is not None, attempt
        assert p.rejected(job)
        assert p.due(t) is None  # waits for min_windows windows newer than the failed try
        _add(p, tiny, np.arange(t, t + 50.0))
        t += 50.0
    job = p.due(t)
    assert job is not None and len(job.sample) == 200  # everything since the change
    assert not p.rejected(job)  # a fourth rejection: wait for the next drift event
    _add(p, tiny, np.arange(t, t + 100.0))
    assert p.due(t + 100.0) is None


def test_schedule_counts_from_the_first_full_reservoir(tiny: TinyModel) -> None:
    p = _policy(tiny, schedule_s=100.0)
    _add(p, tiny, np.arange(50.0))
    assert p.due(49.0) is None  # the clock starts here
    assert p.due(148.0) is None
    job = p.due(149.0)
    assert job is not None and job.trigger == "schedule" and job.drift is None
    assert not p.rejected(job)  # schedule jobs are not retried: the next tick is
    assert p.due(200.0) is None and p.due(249.0) is not None


def test_swapped_disarms(tiny: TinyModel) -> None:
    p = _policy(tiny)
    _add(p, tiny, np.arange(60.0))
    p.on_drift(_drift(since_ts=0.0))
    p.swapped()
    assert p.armed is None and p.due(60.0) is None

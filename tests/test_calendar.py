"""Calendar channels (``window.calendar``): each point also carries the phase of its timestamp
in a day or a week, the model reads it, and only the data's error is scored."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stream_vae.config import Settings, WindowSettings
from stream_vae.core.calendar import calendar_columns
from stream_vae.core.records import RecordBatch
from stream_vae.core.scaler import Scaler
from stream_vae.core.windows import WindowStore
from stream_vae.errors import ArtifactError
from stream_vae.lifecycle.policy import RetrainPolicy
from stream_vae.lifecycle.reservoir import ReservoirSample
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.storage.artifact import Artifact
from stream_vae.storage.files import load_artifact, save_artifact
from stream_vae.training.build import train_artifact
from stream_vae.training.gate import retrain

HOUR = 3600.0


def test_calendar_columns_are_the_phase_of_each_cycle() -> None:
    ts = np.array([0.0, 6 * HOUR, 12 * HOUR, 24 * HOUR, 3.5 * 86_400])
    day = calendar_columns(ts, ["day"])
    np.testing.assert_allclose(day[:, 0], [0, 1, 0, 0, 0], atol=1e-6)  # sin
    np.testing.assert_allclose(day[:, 1], [1, 0, -1, 1, -1], atol=1e-6)  # cos
    both = calendar_columns(ts, ["day", "week"])
    assert both.shape == (5, 4) and both.dtype == np.float32
    np.testing.assert_allclose(both[:, :2], day)
    np.testing.assert_allclose(both[4, 2:], [0, -1], atol=1e-6)  # half a week: phase π
    assert calendar_columns(ts, []).shape == (5, 0)


def test_settings_take_each_known_cycle_once() -> None:
    assert WindowSettings(calendar=("day", "week")).n_context == 4
    assert WindowSettings().n_context == 0
    for bad in (["day", "day"], ["month"]):
        with pytest.raises(ValidationError):
            WindowSettings(calendar=bad)


def test_store_appends_the_calendar_after_the_values() -> None:
    ts = np.arange(6, dtype=np.float64) * 6 * HOUR
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    store = WindowStore(3, 2, calendar=("day",))
    assert store.n_channels == 4
    ready = store.push_many(RecordBatch(("a",) * 4, ts[:4], values[:4]))
    assert ready.values.shape == (2, 3, 4)
    np.testing.assert_array_equal(ready.values[-1, :, :2], values[1:4])
    np.testing.assert_allclose(ready.values[-1, :, 2:], calendar_columns(ts[1:4], ["day"]))
    # the ring keeps each point's calendar with its values: windows that span two calls
    # carry the phase of every point's own time, the earlier call's points included
    ready = store.push_many(RecordBatch(("a",) * 2, ts[4:], values[4:]))
    assert ready.values.shape == (2, 3, 4)
    np.testing.assert_array_equal(ready.values[0, :, :2], values[2:5])
    np.testing.assert_allclose(ready.values[0, :, 2:], calendar_columns(ts[2:5], ["day"]))


def test_scaler_passes_the_calendar_through() -> None:
    s = Scaler.fit(np.array([[0.0], [4.0]]), std_floor=0.1).passing(2)
    x = np.array([[2.0, 0.5, -1.0]], np.float32)
    assert s.transform(x).tolist() == [[0.0, 0.5, -1.0]]


def _daily_square(days: int, gap_day: int | None, seed: int) -> RecordBatch:
    """One series, one row an hour, high from 06:00 to 18:00; on ``gap_day`` the high phase
    never comes (a missing shift): a shape that is normal at night and anomalous by day."""
    rng = np.random.default_rng(seed)
    ts = np.arange(days * 24, dtype=np.float64) * HOUR
    hour = (ts / HOUR) % 24
    v = ((hour >= 6) & (hour < 18)).astype(np.float32)
    if gap_day is not None:
        v[gap_day * 24 : (gap_day + 1) * 24] = 0.0
    v += rng.normal(0.0, 0.05, len(v)).astype(np.float32)
    return RecordBatch(("s",) * len(ts), ts, v[:, None])


def _settings(calendar: tuple[str, ...]) -> Settings:
    return Settings.model_validate(
        {
            "window": {"size": 8, "calendar": calendar},
            "model": {"hidden": 16, "latent": 4},
            "train": {"epochs": 40, "patience": 40, "batch_size": 32, "lr": 0.005},
            "scoring": {"recon_mode": "last", "alpha": 1.0},
        }
    )


def _scores(calendar: tuple[str, ...]) -> tuple[Artifact, np.ndarray, np.ndarray]:
    art = train_artifact(
        _daily_square(20, None, 0), ["v"], _settings(calendar), device="cpu", progress=False
    )
    test = _daily_square(6, 3, 1)
    scored = LiveModel(art, DetectorOptions(device="cpu")).process(test)
    rows = np.searchsorted(test.ts, scored.ts)
    day = (test.ts[rows] // 86_400).astype(int)
    return art, scored.smoothed, day


def test_the_model_reads_the_calendar_and_sees_a_missing_shift(tmp_path: Path) -> None:
    art, smoothed, day = _scores(("day",))
    assert art.vae_config.n_features == 3  # the value, then sin and cos of the hour
    assert art.scaler.std[1:].tolist() == [1.0, 1.0]
    # The day without its high phase stands out over every normal day; without the calendar,
    # a run of low values is what every night looks like.
    missing, normal = smoothed[day == 3].max(), smoothed[day != 3].max()
    assert missing > 2 * normal, (missing, normal)
    assert missing > art.threshold
    blind_art, blind, _ = _scores(())
    blind_ratio = blind[day == 3].max() / blind[day != 3].max()
    assert missing / normal > 2 * blind_ratio, (missing / normal, blind_ratio)

    # The calendar is part of the model: saved, loaded, and required of the store: windows
    # cut with it cannot feed a model without it (nor the other way round).
    loaded = load_artifact(save_artifact(art, tmp_path / "m"))
    assert loaded.spec.window.calendar == ("day",)
    test = _daily_square(6, 3, 1)
    live = LiveModel(loaded, DetectorOptions(device="cpu"))
    assert live.store.calendar == ("day",) and live.store.n_channels == 3
    again = live.process(test)
    np.testing.assert_allclose(again.smoothed, smoothed, rtol=1e-5)
    assert again.recon.shape == (len(again),)
    assert blind_art.vae_config.window == loaded.vae_config.window  # only the calendar differs
    with pytest.raises(ArtifactError, match="calendar"):
        live.install(blind_art, float(test.ts[-1]))
    assert live.artifact is loaded  # refused: nothing changed
    with pytest.raises(ArtifactError, match="calendar"):
        LiveModel(blind_art, DetectorOptions(device="cpu")).install(loaded, float(test.ts[-1]))


def test_retraining_keeps_the_calendar() -> None:
    live = train_artifact(
        _daily_square(12, None, 0), ["v"], _settings(("day",)), device="cpu", progress=False
    )
    recent = _daily_square(12, None, 2)
    ready = LiveModel(live, DetectorOptions(device="cpu")).prepare(recent)
    assert ready.values.shape[-1] == 3  # the value, then the calendar
    sample = ReservoirSample(ready.values, ready.keys, ready.ts)
    settings = Settings.model_validate({"retrain": {"min_windows": 100, "epochs": 2}})
    result = retrain(live, sample, settings)
    cand = result.candidate
    assert cand.spec.window.calendar == ("day",) and cand.vae_config.n_features == 3
    assert cand.scaler.mean[1:].tolist() == [0.0, 0.0] and cand.scaler.std[1:].tolist() == [1, 1]
    assert math.isfinite(cand.threshold)


def test_filled_points_carry_their_own_time() -> None:
    """A forward-filled point repeats the last values, at one typical step after the point
    before it: its calendar phase moves on."""
    store = WindowStore(
        4, 1, max_gap_s=1.5 * HOUR, gap_policy="ffill", max_fill=2, calendar=["day"]
    )
    ts = np.array([0.0, 1.0, 4.0]) * HOUR  # a gap of 3 h: points at 2 h and 3 h are filled
    ready = store.push_many(
        RecordBatch(("a",) * 3, ts, np.array([[1], [2], [3]], dtype=np.float32))
    )
    assert ready.values[0, :, 0].tolist() == [2.0, 2.0, 2.0, 3.0]
    hours = np.array([1.0, 2.0, 3.0, 4.0]) * HOUR
    np.testing.assert_allclose(ready.values[0, :, 1:], calendar_columns(hours, ["day"]), atol=1e-6)


def test_input_drift_watches_the_values_not_the_calendar() -> None:
    settings = Settings()
    art = train_artifact(
        _daily_square(4, None, 0), ["v"], _settings(("day",)), device="cpu", progress=False
    )
    policy = RetrainPolicy.for_model(art, settings.drift, settings.retrain)
    ready, scored = LiveModel(art, DetectorOptions(device="cpu")).step(_daily_square(2, None, 3))
    assert ready.values.shape[-1] == 3  # the value, then the calendar
    means = policy.window_means(ready)
    assert means is not None and means.shape == (len(ready), 1)
    np.testing.assert_allclose(means[:, 0], ready.values[..., 0].mean(axis=1))
    policy.watch(ready, scored)  # the monitor takes (n, d)


def test_warm_start_needs_the_same_calendar() -> None:
    live = train_artifact(
        _daily_square(4, None, 0), ["v"], _settings(("day",)), device="cpu", progress=False
    )
    with pytest.raises(ArtifactError, match="calendar"):
        train_artifact(
            _daily_square(4, None, 0), ["v"], _settings(()), warm_start=live, progress=False
        )

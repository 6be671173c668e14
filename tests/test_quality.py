"""Data-quality alerts: a flat-lined channel and a value out of range give their own alert kinds,
open and close where they should, and leave the anomaly alerts as they were."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stream_vae.config import AlertSettings
from stream_vae.core.records import RecordBatch
from stream_vae.errors import ConfigError
from stream_vae.runtime.live import DetectorOptions, LiveModel, build_scorer
from stream_vae.scoring.alerts import alert_id
from stream_vae.scoring.quality import QualityMonitor
from stream_vae.scoring.reference import QualityReference, ScoreReference
from stream_vae.storage.tabular import read_table


def _reference() -> QualityReference:
    # feature 0 moves, feature 1 moves, feature 2 never moves within a window in training
    rng = np.random.default_rng(0)
    w = rng.normal(size=(200, 8, 3))
    w[:, :, 2] = rng.normal(size=(200, 1))
    return QualityReference.fit(w)


def test_a_flatline_opens_after_k_flat_windows_and_closes_when_it_moves() -> None:
    mon = QualityMonitor(_reference(), kinds=["flatline"], flatline_windows=3)
    w = np.random.default_rng(1).normal(size=(12, 8, 3))
    w[2:8, :, 0] = 1.25  # feature 0 frozen in windows 2..7
    ev = mon.update(["a"] * 12, np.arange(12.0), w)
    assert [(e.row, e.event, e.features) for e in ev] == [(4, "open", (0,)), (8, "close", ())]
    assert ev[0].severity == np.inf and ev[0].limit == pytest.approx(20.0)
    # feature 2 never moves inside a training window: never flagged
    assert not [e for e in ev if 2 in e.features]


def test_out_of_range_opens_on_the_value_and_closes_after_close_after_windows() -> None:
    ref = _reference()
    mon = QualityMonitor(ref, kinds=["out_of_range"], range_margin=0.5, close_after=2)
    w = np.random.default_rng(2).normal(size=(8, 8, 3)) * 0.1
    span = float(ref.high[1] - ref.low[1])
    w[3, -1, 1] = ref.high[1] + 0.4 * span  # beyond the range, inside the margin: nothing
    w[4, -1, 1] = ref.high[1] + 0.6 * span  # out of range
    ev = mon.update(["a"] * 8, np.arange(8.0), w)
    assert [(e.row, e.event) for e in ev] == [(4, "open"), (6, "close")]
    assert ev[0].features == (1,) and ev[0].severity == pytest.approx(0.6, rel=1e-4)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        QualityMonitor(_reference(), kinds=["stale"])
    with pytest.raises(ConfigError):
        QualityMonitor(_reference(), flatline_ratio=1.5)


def test_a_frozen_sensor_gives_a_flatline_alert_through_the_live_model(tiny) -> None:  # type: ignore[no-untyped-def]
    art = tiny.artifact
    assert art.reference.quality is not None  # training stores the reference
    w = art.vae_config.window
    rng = np.random.default_rng(3)
    x = rng.normal(size=(w + 40, 3)).astype(np.float32)
    x = x * art.scaler.std[:3] + art.scaler.mean[:3]  # normal-looking values
    x[w:, 1] = x[w, 1]  # the second sensor freezes at a plausible level
    x[-1, 0] = art.reference.quality.high[0] * 10 + 100  # and the last value is absurd
    batch = RecordBatch(("m-1",) * len(x), np.arange(len(x), dtype=np.float64), x)
    live = LiveModel(art, DetectorOptions(device="cpu"))
    alerts = [a for s in live.stream(batch) for a in s.alerts]
    kinds = {(a.kind, a.event) for a in alerts}
    assert ("flatline", "open") in kinds and ("out_of_range", "open") in kinds
    flat = next(a for a in alerts if a.kind == "flatline")
    assert flat.top_features[0][0] == art.feature_names[1]
    assert flat.alert_id == alert_id("m-1", flat.episode_start_ts, art.version, "flatline")
    assert flat.alert_id != alert_id("m-1", flat.episode_start_ts, art.version)
    assert flat.to_dict()["kind"] == "flatline"
    assert "m-1" in live.open_series(all_kinds=True)
    # a swap closes them like anomaly episodes, and switching the checks off silences them
    closed = live.install(replace(art, version="v-next"), float(len(x)))
    assert {a.kind for a in closed} >= {"flatline", "out_of_range"}
    assert all(a.reason == "model_swap" for a in closed)
    quiet = LiveModel(art, DetectorOptions(device="cpu"), alerts=AlertSettings(quality_kinds=()))
    assert all(a.kind == "anomaly" for s in quiet.stream(batch) for a in s.alerts)
    # a model trained before the checks existed has no reference: no quality alerts, no error
    old = replace(art, reference=ScoreReference(), version="")
    assert LiveModel(old, DetectorOptions(device="cpu")).scorer.quality is None


def test_alerts_show_the_models_reconstruction_of_the_newest_point(tiny) -> None:  # type: ignore[no-untyped-def]
    """``expected`` is the decoder's output at z = μ for the window's newest point, unscaled."""
    import torch

    art = tiny.artifact
    w, d = art.vae_config.window, art.vae_config.n_features
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(5, w, d)) * art.scaler.std + art.scaler.mean).astype(np.float32)
    live = LiveModel(art, DetectorOptions(device="cpu"))
    parts = live.detector.infer(x)
    with torch.no_grad():
        out = art.model()(torch.from_numpy(art.scaler.transform(x)), sample=False)
    want = out.recon[:, -1, :].numpy() * art.scaler.std + art.scaler.mean
    assert parts.expected is not None
    np.testing.assert_allclose(parts.expected, want, rtol=1e-5, atol=1e-5)


def test_a_silent_series_is_stale_until_it_comes_back(tiny) -> None:  # type: ignore[no-untyped-def]
    art = tiny.artifact
    rng = np.random.default_rng(5)

    def records(series: list[str], t0: int, n: int) -> RecordBatch:
        keys = [s for _ in range(n) for s in series]
        ts = np.array([60.0 * (t0 + i) for i in range(n) for _ in series])
        x = rng.normal(size=(len(keys), 3)) * art.scaler.std[:3] + art.scaler.mean[:3]
        return RecordBatch(tuple(keys), ts, x.astype(np.float32))

    on = AlertSettings(quality_kinds=("stale",), stale_factor=5)  # opt-in
    live = LiveModel(art, DetectorOptions(device="cpu"), alerts=on)
    quiet = [a for a in live.process(records(["a", "b"], 0, 30)).alerts if a.kind == "stale"]
    assert quiet == []
    gone = [a for a in live.process(records(["b"], 30, 10)).alerts if a.kind == "stale"]
    assert [(a.series_id, a.event) for a in gone] == [("a", "open")]
    assert gone[0].ts == 60.0 * 39 and gone[0].score > 5  # silent 10 intervals at the check
    back = [a for a in live.process(records(["a", "b"], 40, 1)).alerts if a.kind == "stale"]
    assert [(a.series_id, a.event, a.alert_id) for a in back] == [("a", "close", gone[0].alert_id)]


def test_the_wall_clock_sees_a_silent_fleet_and_a_revoke_closes_its_episodes(tiny) -> None:  # type: ignore[no-untyped-def]
    art = tiny.artifact
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 3)) * art.scaler.std[:3] + art.scaler.mean[:3]
    # 30 records a series, one a second: 15 windows of 16 points each
    batch = RecordBatch(("a", "b") * 30, np.repeat(np.arange(30.0), 2), x.astype(np.float32))
    stream = LiveModel(art, DetectorOptions(device="cpu"), alerts=AlertSettings(
        quality_kinds=("stale",)))  # fmt: skip
    stream.process(batch)
    assert stream.scorer.tick() == ()  # stream time: nothing moves without a window
    wall = LiveModel(art, DetectorOptions(device="cpu"), alerts=AlertSettings(
        quality_kinds=("stale",), stale_clock="wall", stale_factor=3.0))  # fmt: skip
    assert wall.scorer.stale is not None and wall.scorer.stale.clock is not None
    now = [1000.0]
    wall.scorer.stale.clock = lambda: now[0]
    wall.process(batch)  # both arrive at 1000, one each second of event time
    now[0] = 1002.0
    assert wall.scorer.tick() == ()
    now[0] = 1004.0  # 4 s with nothing: 4 usual intervals
    opened = wall.scorer.tick()
    assert [(a.series_id, a.kind, a.event, a.ts) for a in opened] == [
        ("a", "stale", "open", 1004.0),
        ("b", "stale", "open", 1004.0),
    ]
    assert wall.open_series(all_kinds=True) == {"a", "b"}
    # a revoke closes what the next owner's replay cannot rebuild, of the series named only
    closed = wall.scorer.close_wall_stale(1005.0, "revoked", ["b"])
    assert [(a.series_id, a.event, a.reason, a.alert_id) for a in closed] == [
        ("b", "close", "revoked", opened[1].alert_id)
    ]
    assert stream.scorer.close_wall_stale(1005.0, "revoked", ["a", "b"]) == ()
    # an open forgotten so (say, it could not be published) is raised again by a later check
    now[0] = 1007.0
    assert [(a.series_id, a.event) for a in wall.scorer.tick()] == [("b", "open")]
    # "a" comes back: its episode closes with its next window
    back = wall.process(RecordBatch(("a",), np.array([30.0]), x[:1].astype(np.float32)))
    stale = [(a.series_id, a.event) for a in back.alerts if a.kind == "stale"]
    assert stale == [("a", "close")]


def test_an_episode_ends_when_the_data_settles_not_a_window_later(tiny) -> None:  # type: ignore[no-untyped-def]
    art = tiny.artifact
    settle = art.calibration.details["settle"]  # trained with it: the validation windows' level
    assert settle["quantile"] == 0.99 and settle["level"] > 0
    table = read_table(tiny.test_csv, feature_names=art.feature_names)
    b = table.batch
    idx = np.flatnonzero(np.asarray(b.series_ids) == b.series_ids[0])[:120]
    ts = b.ts[idx]
    x = b.values[idx].copy()
    x[60:63, 0] += 12.0 * art.scaler.std[0]  # a 3-point spike
    batch = RecordBatch((b.series_ids[0],) * len(idx), ts, x)

    def anomaly_episodes(close_on_settle: bool) -> list[tuple[int, int]]:
        a = AlertSettings(quality_kinds=(), close_on_settle=close_on_settle)
        out = LiveModel(art, DetectorOptions(device="cpu"), alerts=a).process(batch)
        rows = {float(t): i for i, t in enumerate(ts)}
        ev = [(rows[a.ts], a.event) for a in out.alerts if a.kind == "anomaly"]
        opens = [r for r, e in ev if e == "open"]
        closes = [r for r, e in ev if e == "close"]
        return list(zip(opens, closes, strict=False))

    w = art.spec.window.size  # 16
    by_score = anomaly_episodes(False)
    settled = anomaly_episodes(True)
    assert by_score and settled and by_score[0][0] == settled[0][0] == 60
    # the window's score holds the spike until it leaves the window; the newest point lets go
    assert by_score[0][1] >= 60 + w
    assert settled[0][1] <= 63 + AlertSettings().close_after  # 3 settled rows after the spike
    assert len(settled) == 1  # and no second episode while the window still holds the spike
    # a model trained before the level existed closes on its score alone
    older = replace(art, calibration=replace(art.calibration, details={"quantile": 0.99}))
    assert build_scorer(older, AlertSettings(close_on_settle=True)).settle is None
    on = build_scorer(art, AlertSettings(close_on_settle=True, settle_factor=2.0)).settle
    assert on is not None and on[0] == pytest.approx(2.0 * settle["level"])

"""The demo's "as it alerts" figures: events, false alerts per series per day and the alert
rate on normal windows, from alert messages as they arrive on the topic."""

from __future__ import annotations

import numpy as np
import pytest

from stream_vae.config import load_settings
from stream_vae.demo.alerting import DRIFT_STDS, drifting_fleet, own_threshold, stream_offline
from stream_vae.evaluation.events import Segment
from stream_vae.storage.tabular import read_table

from .conftest import TinyModel


def _alert(sid: str, event: str, step: int, aid: str, kind: str = "anomaly") -> dict[str, object]:
    return {"series_id": sid, "event": event, "ts": 60.0 * step, "alert_id": aid, "kind": kind}


def test_own_threshold_counts_events_false_alerts_and_normal_windows() -> None:
    alerts = [
        _alert("s1", "open", 52, "a"),  # inside the fault: detected
        _alert("s2", "open", 10, "b"),  # no fault on s2: false, 10 normal steps flagged
        _alert("*", "open", 12, "i", "incident"),  # a fleet incident is not a series' alert
        _alert("s2", "close", 19, "b"),
        _alert("s1", "close", 58, "a"),
        _alert("s2", "open", 95, "c"),  # false, still open at the end: steps 95..99
    ]
    got = own_threshold(
        alerts,
        [Segment("s1", 50, 60, "spike")],
        series_ids=["s1", "s2"],
        t0=0.0,
        step_s=60.0,
        steps=(0, 100),
        tolerance=5,
        target=0.01,
    )
    e = got.events
    assert (e.n_segments, e.n_detected, e.n_alerts, e.n_false) == (1, 1, 3, 2)
    assert e.delays == (2,)
    # normal steps: s1 100 - 15 (the fault and its tolerance), s2 100; flagged: s2's 10 + 5
    assert got.normal_rate == pytest.approx(15 / 185)
    assert got.false_per_series_day == pytest.approx(2 / (2 * 100 * 60 / 86_400))
    line = got.line()
    assert "precision 0.33, recall 1.00, F1 0.50" in line and "(target 1.00%, 8.1×)" in line


def test_drifting_fleet_moves_every_level_linearly_and_keeps_the_rest(tiny: TinyModel) -> None:
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    batch = table.batch
    drifted = drifting_fleet(batch, tiny.artifact)
    shift = drifted.values - batch.values
    first, last = int(np.argmin(batch.ts)), int(np.argmax(batch.ts))
    std = tiny.artifact.scaler.std
    np.testing.assert_allclose(shift[first], 0.0, atol=1e-9)
    np.testing.assert_allclose(shift[last], DRIFT_STDS * std, rtol=1e-6)
    assert drifted.series_ids == batch.series_ids and np.array_equal(drifted.ts, batch.ts)


def test_without_retraining_the_static_threshold_alerts_more_on_a_drift(tiny: TinyModel) -> None:
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    batch = table.batch.in_time_order()
    settings = load_settings(env={})
    calm = stream_offline(tiny.artifact, settings, batch, "static")
    drift = stream_offline(tiny.artifact, settings, drifting_fleet(batch, tiny.artifact), "static")
    assert all(a["kind"] in ("anomaly", "flatline", "out_of_range") for a in calm + drift)
    assert len([a for a in drift if a["event"] == "open"]) > len(
        [a for a in calm if a["event"] == "open"]
    )

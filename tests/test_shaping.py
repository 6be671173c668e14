"""Alert shaping: a fleet-wide change is one incident, not one alert per machine; a series over
its budget is held back, and counted."""

from __future__ import annotations

import numpy as np

from stream_vae.config import AlertSettings
from stream_vae.core.records import RecordBatch
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.scoring.alerts import Alert, alert_id
from stream_vae.scoring.shaping import FLEET, AlertShaper


def _alert(series: str, event: str, ts: float, start: float, feature: str = "temp") -> Alert:
    return Alert(
        alert_id(series, start, "v1"),
        series,
        event,
        ts,
        start,
        2.0,
        1.0,
        2.0,
        2.0,
        0.1,
        2.0,
        ((feature, 0.8), ("flow", 0.2)),
        "v1",
    )


def test_a_fleet_wide_change_is_one_incident_with_its_members() -> None:
    shaper = AlertShaper(incident_share=0.5, incident_min_series=3, incident_window_s=100.0)
    opens = [_alert(f"m{i}", "open", 10.0 * i, 10.0 * i) for i in range(8)]  # 8 of 10, 70 s
    out = shaper.shape(opens, n_active=10)
    # m0..m3 are published as they come; the fifth tips it (5 of 10 = the share)
    assert [(a.series_id, a.kind) for a in out] == [
        *((f"m{i}", "anomaly") for i in range(4)),
        (FLEET, "incident"),
    ]
    incident = out[-1]
    assert incident.event == "open" and incident.ts == 40.0
    assert [(m, sup) for m, _, sup in incident.members] == [
        *((f"m{i}", False) for i in range(4)),
        ("m4", True),
    ]
    assert incident.top_features[0][0] == "temp"
    assert incident.to_dict()["members"][4] == {"series_id": "m4", "ts": 40.0, "suppressed": True}
    assert shaper.counters == {"budget": 0, "incident": 4}  # m4..m7
    # closes: those of suppressed opens are dropped; the last member's close closes the incident
    closes = [_alert(f"m{i}", "close", 200.0 + i, 10.0 * i) for i in range(8)]
    out = shaper.shape(closes, n_active=10)
    assert [(a.series_id, a.event) for a in out] == [
        *((f"m{i}", "close") for i in range(4)),
        (FLEET, "close"),
    ]
    assert out[-1].alert_id == incident.alert_id and out[-1].ts == 207.0
    # the fleet calms down: a lone open afterwards is an ordinary alert again
    assert [a.kind for a in shaper.shape([_alert("m1", "open", 900.0, 900.0)], 10)] == ["anomaly"]


def test_an_incident_does_not_wait_for_a_member_that_closed_before_it() -> None:
    shaper = AlertShaper(incident_share=0.5, incident_min_series=3, incident_window_s=100.0)
    out = shaper.shape(
        [_alert("a", "open", 0.0, 0.0), _alert("a", "close", 5.0, 0.0)]
        + [_alert(s, "open", t, t) for s, t in (("b", 10.0), ("c", 20.0))],
        n_active=4,
    )
    assert out[-1].kind == "incident" and {m for m, _, _ in out[-1].members} == {"a", "b", "c"}
    # b and c close: the incident closes (a closed before it and is not waited for)
    out = shaper.shape([_alert("b", "close", 30.0, 10.0), _alert("c", "close", 40.0, 20.0)], 4)
    assert [(a.series_id, a.event) for a in out] == [("b", "close"), ("*", "close")]


def test_an_incident_whose_members_leave_the_replica_ends() -> None:
    shaper = AlertShaper(incident_share=0.5, incident_min_series=2, incident_window_s=100.0)
    out = shaper.shape([_alert("a", "open", 0.0, 0.0), _alert("b", "open", 1.0, 1.0)], 2)
    assert out[-1].kind == "incident"
    shaper.drop(["a", "b"])  # their partition was revoked
    assert [a.kind for a in shaper.shape([_alert("c", "open", 500.0, 500.0)], 4)] == ["anomaly"]


def test_opens_spread_out_in_time_make_no_incident() -> None:
    shaper = AlertShaper(incident_share=0.5, incident_min_series=3, incident_window_s=100.0)
    opens = [_alert(f"m{i}", "open", 150.0 * i, 150.0 * i) for i in range(8)]
    assert all(a.kind == "anomaly" for a in shaper.shape(opens, n_active=10))


def test_a_series_over_its_budget_is_held_back_and_counted() -> None:
    shaper = AlertShaper(max_opens_per_hour=2)
    out = []
    for i in range(5):  # five episodes in 50 minutes
        t = 600.0 * i
        out += shaper.shape(
            [_alert("m", "open", t, t), _alert("m", "close", t + 60, t)], n_active=1
        )
    assert [(a.event, a.ts) for a in out] == [
        ("open", 0.0),
        ("close", 60.0),
        ("open", 600.0),
        ("close", 660.0),
    ]
    assert shaper.counters["budget"] == 3
    # an hour after the first, the budget has room again
    assert [a.event for a in shaper.shape([_alert("m", "open", 3600.0, 3600.0)], 1)] == ["open"]


def test_a_fleet_shift_through_the_live_model_is_one_incident(tiny) -> None:  # type: ignore[no-untyped-def]
    art = tiny.artifact
    w = art.vae_config.window
    n_series, steps = 8, w + 30
    rng = np.random.default_rng(0)
    keys, ts, values = [], [], []
    for t in range(steps):
        for s in range(n_series):
            x = rng.normal(size=3) * art.scaler.std[:3] + art.scaler.mean[:3]
            if t >= w + 10:  # every machine shifts at once
                x = x + 6 * art.scaler.std[:3]
            keys.append(f"m{s}")
            ts.append(float(t * 60))
            values.append(x)
    batch = RecordBatch(tuple(keys), np.array(ts), np.array(values, np.float32))
    settings = AlertSettings(quality_kinds=(), incident_min_series=3, incident_window_s=600)
    live = LiveModel(art, DetectorOptions(device="cpu"), alerts=settings)
    alerts = [a for s in live.stream(batch, 64) for a in s.alerts]
    incidents = [a for a in alerts if a.kind == "incident" and a.event == "open"]
    assert len(incidents) == 1
    published = [a for a in alerts if a.kind == "anomaly" and a.event == "open"]
    # the machines that opened before it are its first members; the rest joined it unpublished
    assert {m for m, _, sup in incidents[0].members if not sup} == {a.series_id for a in published}
    assert live.scorer.shaper is not None
    # every other open (re-opens too) joined the incident instead, and was counted
    assert live.scorer.shaper.counters["incident"] >= n_series - len(published)
    assert len(published) < n_series
    off = LiveModel(
        art, DetectorOptions(device="cpu"), alerts=settings.model_copy(update={"incident_share": 0})
    )
    alone = [a for s in off.stream(batch, 64) for a in s.alerts if a.event == "open"]
    assert {a.series_id for a in alone} == {f"m{s}" for s in range(n_series)}


def test_episodes_that_blame_the_same_features_are_one_recurring_kind(tiny) -> None:  # type: ignore[no-untyped-def]
    art = tiny.artifact
    w = art.vae_config.window
    rng = np.random.default_rng(1)
    # three machines; a and b get a fault on the first sensor, c on the third, at other times
    faults = {"a": (w + 5, 0), "b": (w + 25, 0), "c": (w + 45, 2)}
    keys, ts, values = [], [], []
    for t in range(w + 60):
        for s, (at, f) in faults.items():
            x = rng.normal(size=3) * 0.3 * art.scaler.std[:3] + art.scaler.mean[:3]
            if at <= t < at + 4:
                x[f] += 25 * art.scaler.std[f]
            keys.append(s)
            ts.append(60.0 * t)
            values.append(x)
    batch = RecordBatch(tuple(keys), np.array(ts), np.array(values, np.float32))
    settings = AlertSettings(quality_kinds=(), incident_share=0)
    live = LiveModel(art, DetectorOptions(device="cpu"), alerts=settings)
    opens = {}
    for s in live.stream(batch, 64):
        for a in s.alerts:
            if a.event == "open" and a.ts >= 60.0 * (faults[a.series_id][0]):
                opens.setdefault(a.series_id, a)
    assert set(opens) == {"a", "b", "c"}
    assert opens["a"].cluster == opens["b"].cluster != opens["c"].cluster
    assert opens["b"].cluster_count == opens["a"].cluster_count + 1
    assert opens["a"].to_dict()["cluster"] == opens["a"].cluster


def test_the_incidents_command_summarises_a_topic_dump(
    tmp_path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    from stream_vae import _json
    from stream_vae.cli.main import main

    shaper = AlertShaper(incident_share=0.5, incident_min_series=3, incident_window_s=100.0)
    opens = [_alert(f"m{i}", "open", 10.0 * i, 10.0 * i) for i in range(6)]
    opens += [_alert("m9", "open", 900.0, 900.0, feature="flow")]
    dump = tmp_path / "alerts.jsonl"
    dump.write_bytes(b"\n".join(_json.dumps(a.to_dict()) for a in shaper.shape(opens, 8)))
    assert main(["incidents", "--alerts", str(dump)]) == 0
    out = capsys.readouterr().out
    # m0..m2 published, m3 tips the incident (4 of 8), m4, m5 and m9 join it
    assert "anomaly: 3" in out and "incident: 1" in out and "fleet incidents: 1" in out
    assert "3 episodes on 3 series, blaming temp, flow" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "open", "series_id": "a"}\nnot json\n')
    assert main(["incidents", "--alerts", str(bad)]) == 65
    assert ":2: not a JSON object" in capsys.readouterr().err

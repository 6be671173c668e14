"""The trained detector separates anomalous from normal windows on a generated fleet.

One model is trained (CPU, a few seconds) on the clean first part of a fleet with seasonal,
cross-correlated channels; the rest, with injected spikes, level shifts, variance bursts, stuck
sensors and correlation breaks, streams through the real path (WindowStore → model → scorer).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import numpy as np
import pytest

from stream_vae.config import Settings, load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import Fleet, generate_fleet
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.scoring.hybrid import roc_auc
from stream_vae.storage.artifact import Artifact
from stream_vae.training.build import rescore_artifact, train_artifact

from .conftest import TINY_TOML

W = 24


@dataclass(frozen=True)
class Trained:
    artifact: Artifact
    train: Fleet
    test: Fleet
    settings: Settings


def _batch(f: Fleet) -> RecordBatch:
    sids, ts, values, _ = f.interleaved()
    return RecordBatch(tuple(sids), ts, values)


@pytest.fixture(scope="module")
def trained() -> Trained:
    fleet = generate_fleet(12, 6, 1800, seed=3, anomaly_start=1000, n_anomalies_per_series=2)
    train, test = fleet.split(1000)
    assert not train.labels.any()
    settings = load_settings(
        env={},
        window={"size": W},
        model={"hidden": 64, "latent": 16},
        train={"epochs": 30, "batch_size": 64, "lr": 3e-3, "patience": 5},
        scoring={"target_fpr": 0.01},
    )
    art = train_artifact(_batch(train), fleet.feature_names, settings, device="cpu", progress=False)
    return Trained(art, train, test, settings)


def _window_scores(art: Artifact, test: Fleet) -> tuple[dict[str, list[float]], np.ndarray]:
    pipe = LiveModel(art, DetectorOptions(device="cpu"))
    out = list(pipe.stream(_batch(test), 1000))
    keys = [k for o in out for k in o.keys]
    raw = np.concatenate([o.raw for o in out])
    by_series: dict[str, list[float]] = {}
    for k, r in zip(keys, raw, strict=True):
        by_series.setdefault(k, []).append(float(r))
    return by_series, np.concatenate([o.smoothed for o in out])


def test_scores_separate_anomalies_per_kind(trained: Trained) -> None:
    by_series, _ = _window_scores(trained.artifact, trained.test)
    test = trained.test
    normal: list[float] = []
    kind_of: dict[str, list[float]] = {}
    for si, sid in enumerate(test.series_ids):
        scores = np.asarray(by_series[sid])  # window j ends at row j + W - 1
        ends = np.arange(W - 1, W - 1 + len(scores))
        n_bad = np.array([test.labels[si, e - W + 1 : e + 1].sum() for e in ends])
        normal.extend(scores[n_bad == 0])
        for inj in (i for i in test.injections if i.series_index == si):
            # Anomalous windows: those where the fault fills at least a quarter of the window
            # (or all of a shorter fault). A window holding one stuck row cannot look stuck;
            # windows with fewer faulty rows are neither normal nor anomalous and are left out.
            need = min(W // 4, inj.end - inj.start)
            first = np.maximum(ends - W + 1, inj.start)
            last = np.minimum(ends, inj.end - 1)
            n_fault = np.maximum(last - first + 1, 0)
            kind_of.setdefault(inj.kind, []).extend(scores[n_fault >= need])
    anomalous = [v for vs in kind_of.values() for v in vs]
    overall = roc_auc(normal, anomalous)
    per_kind = {k: roc_auc(normal, v) for k, v in kind_of.items()}
    print(
        f"ROC-AUC overall {overall:.3f}; per kind "
        + ", ".join(f"{k} {v:.3f} ({len(kind_of[k])} windows)" for k, v in sorted(per_kind.items()))
    )
    assert len(per_kind) == 5
    assert overall >= 0.95
    assert min(per_kind.values()) >= 0.85


def test_calibrated_threshold_holds_its_false_positive_rate(trained: Trained) -> None:
    # Fresh normal data: the same machines, the 300 steps right after training, no injections.
    # (Further out the fleet's slow cycle, up to 1,600 steps and longer than the 1,000 training
    # steps, moves the data away from what the model saw and the rate climbs to ~5%: that is
    # drift, which retraining answers, not calibration.)
    fresh = generate_fleet(12, 6, 1800, seed=3, anomaly_start=1000, n_anomalies_per_series=0)
    clean = fresh.split(1000)[1].split(300)[0]
    assert not clean.labels.any()
    _, smoothed = _window_scores(trained.artifact, clean)
    fpr = float((smoothed >= trained.artifact.threshold).mean())
    print(f"false-positive rate {fpr:.4f} over {len(smoothed)} windows for a 1% target")
    assert trained.artifact.calibration.target_fpr == 0.01
    assert 0.005 <= fpr <= 0.02, f"FPR {fpr:.4f} for a 1% target"


def test_a_stride_scores_every_sth_window_with_a_threshold_calibrated_for_it(
    trained: Trained,
) -> None:
    """``window.stride = 4``: the same weights score every 4th window of a series, and the
    threshold, calibrated on the EMA of every 4th validation window (as the service smooths
    them), holds the 1% target on the fresh normal data of the test above."""
    s = trained.settings
    four = s.model_copy(update={"window": s.window.model_copy(update={"stride": 4})})
    art = rescore_artifact(trained.artifact, _batch(trained.train), four)
    assert art.spec.window.stride == 4
    assert all((art.state_dict[k] == v).all() for k, v in trained.artifact.state_dict.items())
    fresh = generate_fleet(12, 6, 1800, seed=3, anomaly_start=1000, n_anomalies_per_series=0)
    clean = fresh.split(1000)[1].split(300)[0]
    out = list(LiveModel(art, DetectorOptions(device="cpu")).stream(_batch(clean), 1000))
    ts = np.concatenate([o.ts for o in out])
    step = float(clean.ts[1] - clean.ts[0])
    first = float(clean.ts[0]) + (W - 1) * step
    assert np.allclose((ts - first) / step % 4, 0)  # windows end at steps W-1, W+3, ...
    assert len(ts) == 12 * ((300 - W) // 4 + 1)
    smoothed = np.concatenate([o.smoothed for o in out])
    fpr = float((smoothed >= art.threshold).mean())
    at_stride_1 = float((smoothed >= trained.artifact.threshold).mean())
    print(f"stride 4: false-positive rate {fpr:.4f} ({at_stride_1:.4f} at the stride-1 threshold)")
    assert 0.004 <= fpr <= 0.025, f"FPR {fpr:.4f} for a 1% target"


@pytest.fixture(scope="module")
def small() -> tuple[Fleet, Artifact]:
    """The tiny model's settings, trained on three clean 2-feature machines."""
    settings = load_settings(env={}, **tomllib.loads(TINY_TOML))
    fleet = generate_fleet(3, 2, 400, seed=5, n_anomalies_per_series=0)
    sids, ts, values, _ = fleet.interleaved()
    art = train_artifact(RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings,
                         device="cpu", progress=False)  # fmt: skip
    return fleet, art


@pytest.mark.parametrize("value", [1e20, 1.2345679e29, -3e38])
def test_an_absurd_finite_value_alerts_instead_of_crashing(
    value: float, small: tuple[Fleet, Artifact]
) -> None:
    """Issue 16: `{"values": [1e20, 43.0]}` squared to inf in float32, the series' EMA raised
    and the service crash-looped on the record. The point is clipped at MAX_SCALED standard
    deviations: its window scores finite and high, and the series opens an episode."""
    fleet, art = small
    sids, ts, values, _ = fleet.interleaved()
    live = LiveModel(art, DetectorOptions(device="cpu"))
    live.process(RecordBatch(tuple(sids), ts, values))  # warm: every series has its window
    step = float(fleet.ts[1] - fleet.ts[0])
    t = float(fleet.ts[-1]) + step
    bad = np.array([[value, 43.0]], np.float32)
    scored = live.process(RecordBatch(("machine-000",), np.array([t]), bad))
    assert np.isfinite(scored.raw).all() and np.isfinite(scored.smoothed).all()
    assert scored.smoothed[0] > 10 * art.threshold
    # the model's alert, and the out-of-range one that does not ask the model
    assert [(a.series_id, a.event, a.kind) for a in scored.alerts] == [
        ("machine-000", "open", "anomaly"),
        ("machine-000", "open", "out_of_range"),
    ]
    # what was seen against what the model expected there, in the data's units
    for alert in scored.alerts:
        seen = {f: (o, e) for f, o, e in alert.expected}
        observed, expected = seen[art.feature_names[0]]
        assert observed == float(np.float32(value))
        lo, hi = art.reference.quality.low[0], art.reference.quality.high[0]  # type: ignore[union-attr]
        assert lo - 10 * (hi - lo) < expected < hi + 10 * (hi - lo)  # a normal value, not the input
    # and the series goes on: the next normal point is scored, finite
    normal = fleet.values[0, -1:]  # (1, d): machine-000's last normal point
    nxt = live.process(RecordBatch(("machine-000",), np.array([t + step]), normal))
    assert np.isfinite(nxt.smoothed).all()

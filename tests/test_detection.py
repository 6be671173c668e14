"""The trained detector separates anomalous from normal windows on a generated fleet.

One model is trained (CPU, a few seconds) on the clean first part of a fleet with seasonal,
cross-correlated channels; the rest, with injected spikes, level shifts, variance bursts, stuck
sensors and correlation breaks, streams through the real path (WindowStore → model → scorer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from stream_vae.artifact import Artifact
from stream_vae.config import load_settings
from stream_vae.pipeline import Pipeline
from stream_vae.records import RecordBatch
from stream_vae.scoring.hybrid import roc_auc
from stream_vae.synthetic import Fleet, generate_fleet
from stream_vae.trainer import train_artifact

W = 24


@dataclass(frozen=True)
class Trained:
    artifact: Artifact
    train: Fleet
    test: Fleet


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
        model={"hidden": 32, "latent": 8},
        train={"epochs": 12, "batch_size": 128, "lr": 3e-3, "patience": 3},
        scoring={"target_fpr": 0.01},
    )
    art = train_artifact(_batch(train), fleet.feature_names, settings, device="cpu", progress=False)
    return Trained(art, train, test)


def _window_scores(art: Artifact, test: Fleet) -> tuple[dict[str, list[float]], np.ndarray]:
    pipe = Pipeline.from_artifact(art, "cpu")
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
    normal, anomalous, kind_of = [], [], {}
    for si, sid in enumerate(test.series_ids):
        scores = np.asarray(by_series[sid])  # one per window, window j ends at row j + W - 1
        labels = test.labels[si]
        ends = np.arange(W - 1, W - 1 + len(scores))
        hit = np.array([labels[e - W + 1 : e + 1].any() for e in ends])
        normal.extend(scores[~hit])
        anomalous.extend(scores[hit])
        for inj in (i for i in test.injections if i.series_index == si):
            # windows that contain the injected segment's rows
            mask = (ends >= inj.start) & (ends - W + 1 < inj.end)
            kind_of.setdefault(inj.kind, []).extend(scores[mask])
    overall = roc_auc(normal, anomalous)
    per_kind = {k: roc_auc(normal, v) for k, v in kind_of.items()}
    print(
        f"ROC-AUC overall {overall:.3f}; per kind "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(per_kind.items()))
    )
    assert len(per_kind) == 5
    assert overall >= 0.95
    assert min(per_kind.values()) >= 0.85


def test_calibrated_threshold_holds_its_false_positive_rate(trained: Trained) -> None:
    # fresh normal data from the same fleet (same series, later, no injections)
    fresh = generate_fleet(12, 6, 1800, seed=3, anomaly_start=1000, n_anomalies_per_series=0)
    _, clean = fresh.split(1000)
    assert not clean.labels.any()
    _, smoothed = _window_scores(trained.artifact, clean)
    fpr = float((smoothed >= trained.artifact.threshold).mean())
    assert trained.artifact.calibration.target_fpr == 0.01
    assert 0.005 <= fpr <= 0.02, f"FPR {fpr:.4f} for a 1% target"

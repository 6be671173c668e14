"""Training on data that is not perfectly clean (issue 17, item 3).

The same fleet twice: its normal signal is identical, only where faults are injected differs
(``generate_fleet`` draws them after the signal). Clean: faults only after the training rows.
Dirty: faults anywhere, in 5% of the training windows (3% of the rows). Trained on the dirty
rows as they are, the held-out tail's top scores are faults and the calibrated threshold lands
among them: recall at that threshold collapses. With ``train.contamination`` the worst windows
are trimmed before a second fit, the threshold is fitted on the tail below the set-aside top
scores, and recall holds within 5 points of the model trained on clean rows.
"""

from __future__ import annotations

import numpy as np

from stream_vae.config import load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import Fleet, generate_fleet
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.storage.artifact import Artifact
from stream_vae.training.build import train_artifact

W, SPLIT = 16, 1000


def _fleet(seed: int, anomaly_start: int, rate: float) -> Fleet:
    return generate_fleet(
        10, 4, 1500, seed=seed, anomaly_start=anomaly_start, n_anomalies_per_series=rate
    )


def _batch(f: Fleet) -> RecordBatch:
    sids, ts, values, _ = f.interleaved()
    return RecordBatch(tuple(sids), ts, values)


def _train(f: Fleet, contamination: float) -> Artifact:
    settings = load_settings(
        env={},
        window={"size": W},
        model={"hidden": 32, "latent": 8},
        train={
            "epochs": 6,
            "batch_size": 64,
            "lr": 3e-3,
            "contamination": contamination,
            "torch_threads": 1,
        },
        scoring={"target_fpr": 0.01},
    )
    return train_artifact(_batch(f), f.feature_names, settings, device="cpu", progress=False)


def _rates(art: Artifact, test: Fleet) -> tuple[float, float]:
    """(recall, false-alert rate) at the calibrated threshold: the share of the windows a fault
    fills at least a quarter of, and of the windows no fault touches, whose smoothed score
    reaches it."""
    out = list(LiveModel(art, DetectorOptions(device="cpu")).stream(_batch(test), 2000))
    by: dict[str, list[float]] = {}
    for o in out:
        for k, s in zip(o.keys, o.smoothed, strict=True):
            by.setdefault(k, []).append(float(s))
    hits: list[bool] = []
    false: list[bool] = []
    for si, sid in enumerate(test.series_ids):
        s = np.asarray(by[sid]) >= art.threshold
        ends = np.arange(W - 1, W - 1 + len(s))
        touched = np.zeros(len(s), bool)
        for inj in (i for i in test.injections if i.series_index == si):
            overlap = np.minimum(ends, inj.end - 1) - np.maximum(ends - W + 1, inj.start) + 1
            hits.extend(s[overlap >= min(W // 4, inj.end - inj.start)])
            touched |= overlap > 0
        false.extend(s[~touched])
    return float(np.mean(hits)), float(np.mean(false))


def test_contamination_keeps_recall_within_5_points_of_clean_training() -> None:
    """Three fleets (recall at a calibrated threshold on one fleet's ~200 faulty windows moves by
    ±0.1 between fleets, so one fleet cannot show a 5-point bound): the mean recall with
    ``contamination = 0.05`` is within 5 points of clean training's, at about as many false
    alerts. Trained 6 epochs to fit CI's budget: clean 0.469 (false alerts 1.6%), dirty with
    contamination 0.441 (2.1%); at 10 epochs (docs/results.md) 0.475 (1.4%) and 0.443 (1.0%),
    and 0.097 (0%) for the dirty rows as they are."""
    clean_rates: list[tuple[float, float]] = []
    robust_rates: list[tuple[float, float]] = []
    for seed in (7, 8, 9):
        clean, dirty = _fleet(seed, SPLIT, 2.0), _fleet(seed, 0, 1.25)
        train_clean, test = clean.split(SPLIT)
        train_dirty = dirty.split(SPLIT)[0]
        assert not train_clean.labels.any()
        view = np.lib.stride_tricks.sliding_window_view
        touched = view(train_dirty.labels, W, axis=1).any(axis=2)
        assert 0.04 < touched.mean() < 0.065  # 5-6% of the training windows hold a fault
        clean_rates.append(_rates(_train(train_clean, 0.0), test))
        art = _train(train_dirty, 0.05)
        robust_rates.append(_rates(art, test))
        if seed == 7:  # the harm is real: trained as they are, the threshold sits among faults
            untrimmed, _ = _rates(_train(train_dirty, 0.0), test)
            assert untrimmed < clean_rates[0][0] - 0.15, (untrimmed, clean_rates[0])
        record = art.training["metrics"]["trim"]
        assert record["fraction"] == 0.05 and record["removed"] > 0
        assert record["kept"] == art.training["metrics"]["n_windows"]["train"]  # fitted on those
        assert art.calibration.method == "trimmed"
        assert art.calibration.details["contamination"] == 0.05
    (recall, false), (robust, robust_false) = np.mean(clean_rates, 0), np.mean(robust_rates, 0)
    print(f"recall (false alerts): clean {clean_rates}, dirty with contamination {robust_rates}")
    assert robust >= recall - 0.05, (clean_rates, robust_rates)
    assert robust_false <= max(1.5 * false, 0.02), (clean_rates, robust_rates)

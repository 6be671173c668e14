"""`stream-vae evaluate smd|csv` end to end on a small generated fleet in the SMD layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from stream_vae import _json
from stream_vae.cli.main import main
from stream_vae.config import load_settings
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.evaluation.datasets import LabelledSeries, read_labelled_csv, read_smd
from stream_vae.evaluation.detectors import run_detector

from .conftest import TINY_TOML


@pytest.fixture(scope="module")
def smd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three machines: 600 clean training rows, 400 test rows with 2 labelled anomalies each."""
    root = tmp_path_factory.mktemp("smd")
    fleet = generate_fleet(3, 3, 1000, seed=3, anomaly_start=600, n_anomalies_per_series=2)
    for sub in ("train", "test", "test_label", "interpretation_label"):
        (root / sub).mkdir()
    for i, sid in enumerate(fleet.series_ids):
        x, y = fleet.values[i], fleet.labels[i]
        np.savetxt(root / "train" / f"{sid}.txt", x[:600], delimiter=",", fmt="%.5f")
        np.savetxt(root / "test" / f"{sid}.txt", x[600:], delimiter=",", fmt="%.5f")
        np.savetxt(root / "test_label" / f"{sid}.txt", y[600:].astype(int), fmt="%d")
        lines = [
            f"{j.start - 600}-{j.end - 601}:{','.join(str(f + 1) for f in j.features)}"
            for j in fleet.injections
            if j.series_id == sid
        ]
        (root / "interpretation_label" / f"{sid}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_read_smd_layout(smd_dir: Path) -> None:
    series = read_smd(smd_dir)
    assert [s.name for s in series] == ["machine-000", "machine-001", "machine-002"]
    s = series[0]
    assert s.train.shape == (600, 3) and s.test.shape == (400, 3)
    # interpretation rows are inclusive in the file, half-open here, and cover the labels
    covered = np.zeros(400, bool)
    for a, b, dims in s.interpretation:
        covered[a:b] = True
        assert dims <= {0, 1, 2}
    assert (covered == s.labels).all()


def test_evaluate_smd_writes_a_report_with_every_detector(smd_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    out = tmp_path / "report"
    assert main(["--config", str(cfg), "evaluate", "smd", str(smd_dir), "--out", str(out)]) == 0
    report = _json.loads((out / "report.json").read_bytes())
    assert set(report) == {
        "stream-vae",
        "stream-vae-dspot",  # the same scores as they alert under the streaming threshold
        "vae-recon",
        "vae-latent",
        "lstm-ae",
        "pca",
        "hst",
        "random",
    }
    ours, noise = report["stream-vae"], report["random"]
    assert ours["n_series"] == 3
    # only our detector has its own threshold: the threshold metrics are ours alone
    assert {"f1", "event_f1", "delay", "alert_rate", "pa_f1"} <= set(ours)
    assert "f1" not in noise
    # what users get: the alert rate on normal points (median and worst series), false alerts
    what = {"normal_alert_rate", "normal_alert_rate_median", "normal_alert_rate_max"}
    assert what | {"false_alerts_per_day"} <= set(ours) & set(report["stream-vae-dspot"])
    assert 0.0 <= ours["normal_alert_rate_median"] <= ours["normal_alert_rate_max"] <= 1.0
    assert report["stream-vae-dspot"]["vus_pr"] == ours["vus_pr"]  # same scores
    assert "Alert rate on normal points" in (out / "report.md").read_text()
    # the injected faults are plain to see: far above noise on every threshold-free metric
    for key in ("vus_pr", "auc_pr", "roc_auc"):
        assert ours[key] > noise[key] + 0.1, (key, ours[key], noise[key])
    assert ours["roc_auc"] > 0.6
    assert 0.0 <= ours["attribution"] <= 1.0
    table = [x for x in (out / "report.md").read_text().splitlines() if x.startswith("| ")]
    assert len(table) == 2 + 8  # header, rule, one row per detector
    details = _json.loads((out / "details.json").read_bytes())
    assert set(details["per_series"]["pca"]) == {"machine-000", "machine-001", "machine-002"}


def test_labelled_csv_splits_each_series_in_file_order(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    rows = ["series_id,ts,a,b,label"]
    rows += [f"s1,{t},{t},{2 * t},{int(t == 8)}" for t in range(10)]
    rows += [f"s2,{t},{t},{-t},0" for t in range(5)]
    f.write_text("\n".join(rows) + "\n")
    s1, s2 = read_labelled_csv(f, train_fraction=0.3)
    assert s1.name == "s1" and s1.feature_names == ("a", "b")
    assert s1.train[:, 0].tolist() == [0, 1, 2] and len(s1.test) == 7
    assert s1.labels.tolist() == [False] * 5 + [True, False]
    assert len(s2.train) == 1 and not s2.labels.any()


def test_evaluate_the_latent_modes_in_one_command(smd_dir: Path, tmp_path: Path) -> None:
    """`--detectors stream-vae-modes`: one training per series, one row per latent mode for the
    hybrid and one for the latent term alone, each scored and thresholded on its own."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    out = tmp_path / "report"
    args = ["--config", str(cfg), "evaluate", "smd", str(smd_dir), "--out", str(out)]
    assert main([*args, "--detectors", "stream-vae-modes"]) == 0
    report = _json.loads((out / "report.json").read_bytes())
    modes = ("kl", "aggregate", "knn", "knn_whitened", "recon_prob")  # iwae: the Gaussian head
    assert set(report) == {f"vae-{part}-{m}" for m in modes for part in ("hybrid", "latent")}
    for m in modes:
        row = report[f"vae-hybrid-{m}"]
        assert {"f1", "event_f1", "alert_rate"} <= set(row), m  # its own threshold
        assert row["roc_auc"] > 0.6, (m, row["roc_auc"])
    assert report["vae-latent-knn"] != report["vae-latent-aggregate"]
    assert report["vae-latent-knn_whitened"] != report["vae-latent-knn"]


def test_the_dspot_row_covers_a_series_too_short_for_a_streaming_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A short NAB file holds out 2-3 windows, too few to fit a streaming-threshold start. The
    other-threshold row (``stream-vae-dspot`` beside a static product) keeps the calibrated
    threshold for it instead of leaving it out: NAB scores a detector only on every file, and a
    full NAB run used to fail at its end on one such file."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    t = np.arange(285.0)
    x = np.sin(t / 5.0)[:, None]
    x[250] += 4.0  # one spike in the test part
    labels = np.zeros(200, bool)
    labels[163:170] = True
    series = LabelledSeries("short", x[:85], x[85:], labels)
    with caplog.at_level(logging.WARNING, logger="stream_vae.evaluation.detectors"):
        out = run_detector("stream-vae", series, load_settings(cfg), 0)
    assert "the dspot row keeps the calibrated threshold" in caplog.text
    dspot, ours = out["stream-vae-dspot"], out["stream-vae"]
    assert dspot.predictions is not None and dspot.predictions.shape == (200,)
    assert np.array_equal(dspot.scores, ours.scores)
    assert dspot.novelty is not None and ours.novelty is not None  # what NAB's sweep scores
    assert np.array_equal(dspot.novelty, ours.novelty)
    assert dspot.predictions[163:175].any()  # the spike alerts at the calibrated threshold

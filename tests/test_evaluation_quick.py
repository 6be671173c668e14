"""`stream-vae evaluate smd|nab --quick` on the shared ASD and NAB data: regression floors on
detection quality. The floors sit just under what the shipped parameter sets measured
(docs/results.md); skipped where the shared data is absent (set STREAM_VAE_DATA to its
directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stream_vae import _json
from stream_vae.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STREAM_VAE_DATA", ROOT.parent / "shared" / "data"))

# measured 2026-11-29 (omi-1, omi-3; seed 0): VUS-PR 0.405, AUC-PR 0.315, ROC-AUC 0.803;
# PCA 0.308 / 0.253 / 0.704. The same code and seed on another machine of the same kind
# (2026-12-04; its CPU rounds the float kernels differently, so training takes another path):
# 0.408 / 0.321 / 0.768. On an AVX2-only AMD EPYC (2026-12-07, one torch thread as under
# xdist): 0.385 / 0.298 / 0.740. The floors sit under all three, and above PCA.
ASD_FLOORS = {"vus_pr": 0.37, "auc_pr": 0.28, "roc_auc": 0.72}

# measured 2026-11-29 (art_daily_jumpsup, art_daily_no_noise, ec2_request_latency_system_failure;
# calendar channels, censored novelty): standard 81.1 / 80.9 / 80.9, low-FP 76.0 / 75.8 / 75.8,
# low-FN 87.4 / 87.3 / 87.3 on seeds 0-2; PCA 59.0 / 57.6 / 64.3
NAB_FLOORS = {"standard": 79.0, "reward_low_FP_rate": 74.0, "reward_low_FN_rate": 85.0}
# as it alerts (no labels), with the parameter set's novelty gate: measured 2026-12-07 (seed 0)
# standard_own 79.7, low-FP 73.2, low-FN 86.5
OWN_FLOORS = {"nab": {"standard_own": 76.0, "reward_low_FP_rate_own": 69.0}}
# as it alerts on ASD (dspot at 5× the target's tail, close_on_settle, close_after 2): measured
# 2026-12-07 (seed 0, the AVX2 CPU, one torch thread) on normal points 0.13% median, 0.26%
# worst for a 0.1% target; the ceiling is the bound (no server over 10× the target).
# The static threshold without the settle close alerted on ~16× the target on the 12 servers'
# median (docs/results.md).
OWN_CEILINGS = {"asd": {"normal_alert_rate_max": 0.01}}


def _quick(data: str, command: str, config: str, floors: dict[str, float]) -> object:
    return pytest.param(
        data,
        command,
        config,
        floors,
        id=data,
        marks=pytest.mark.skipif(not (DATA / data).is_dir(), reason=f"no {data} data under {DATA}"),
    )


@pytest.mark.parametrize(
    ("data", "command", "config", "floors"),
    [
        _quick("asd", "smd", "asd.toml", ASD_FLOORS),
        _quick("nab", "nab", "nab.toml", NAB_FLOORS),
    ],
)
def test_quick_evaluation_stays_above_its_floors(
    data: str, command: str, config: str, floors: dict[str, float], tmp_path: Path
) -> None:
    args = ["--config", str(ROOT / "bench" / "configs" / config), "evaluate", command]
    args += [str(DATA / data), "--quick", "--out", str(tmp_path)]
    assert main([*args, "--detectors", "stream-vae", "pca", "random"]) == 0
    report = _json.loads((tmp_path / "report.json").read_bytes())
    ours = report["stream-vae"]
    for key, floor in floors.items():
        assert ours[key] >= floor, (key, ours[key])
        assert ours[key] > report["pca"][key] > report["random"][key], key
    for key, floor in OWN_FLOORS.get(data, {}).items():
        assert ours[key] >= floor, (key, ours[key])
    for key, ceiling in OWN_CEILINGS.get(data, {}).items():
        assert ours[key] <= ceiling, (key, ours[key])

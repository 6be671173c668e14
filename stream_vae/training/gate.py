"""The warm-start retraining job and its validation gate.

``reservoir sample → (older part: training | newest part: held out) → warm start from the live
weights → gate on the held-out part → recalibrate → candidate`` — :func:`retrain` is pure
compute; :func:`run_job` adds the registry (publish every candidate with its lineage, promote
the ones that pass) and is what the service runs in another process (:func:`job_main`), so that
training never shares the scoring process's torch threads or its GIL.

The gate, on the newest ``retrain.holdout_fraction`` of the clean windows (never trained on):

(a) **ELBO**: the candidate's negative ELBO (z = μ, reconstruction error in the *live* model's
    scaled units, so that a refitted scaler cannot make it look better) is below the live one's;
(b) **alert rate**: the candidate's alerts on that clean data are not more than
    ``max_alert_rate_ratio`` × the target false-positive rate — tested as "the count is within
    the binomial 99% bound at that rate", because a few hundred windows cannot measure a 0.1%
    rate to a factor of two;
(c) **shadow recall** (when ``retrain.shadow_path`` names an ``.npz`` with ``windows``
    (m, W, d) of labelled anomalies never used in training): the candidate's recall is not more
    than ``max_recall_drop`` below the live model's.

The threshold is calibrated on the held-out windows' raw scores (see
:func:`stream_vae.training.build.fit_artifact` on why not the EMA), first on the older half (so
that (b) is measured on windows it was not set on), then, once the gate passed, on all of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import stats

from ..config import ModelSettings, RetrainSettings, Settings
from ..core.scaler import Scaler
from ..errors import DataError
from ..lifecycle.reservoir import ReservoirSample
from ..model.detector import TorchBackend
from ..scoring.threshold import calibrate
from ..storage.artifact import Artifact
from ..storage.registry import Registry
from .build import fit_artifact

__all__ = [
    "GateResult",
    "RetrainResult",
    "job_main",
    "neg_elbo",
    "retrain",
    "run_job",
    "save_sample",
    "validate",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]  # why it was rejected; empty when it passed
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetrainResult:
    candidate: Artifact
    gate: GateResult
    trigger: str
    data_from_ts: float
    data_to_ts: float
    n_windows: int  # trained on
    train_seconds: float


def neg_elbo(
    artifact: Artifact, windows: npt.NDArray[Any], reference: Scaler, beta: float
) -> float:
    """Mean −ELBO per point (z = μ) of raw windows (n, W, d), errors in ``reference`` units."""
    backend = TorchBackend(artifact.model(), "cpu")
    recon, _, mu, logvar = backend(artifact.scaler.transform(windows))  # (n, W, d), (n, k) ×2
    # back to raw units, then into the reference scaler's: comparable across scalers
    recon_raw = recon * artifact.scaler.std + artifact.scaler.mean
    d = len(artifact.feature_names)  # the data's channels, not the calendar's
    err = (reference.transform(windows) - reference.transform(recon_raw))[..., :d]  # (n, W, d)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).sum(axis=1)  # (n,)
    n_points = windows.shape[1] * windows.shape[2]
    return float((err**2).mean() + beta * kl.mean() / n_points)


def _raw_scores(artifact: Artifact, windows: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    parts = artifact.detector("cpu").infer(windows)
    return np.asarray(artifact.hybrid.raw(parts).raw, dtype=np.float64)


def validate(
    live: Artifact,
    candidate: Artifact,
    holdout: npt.NDArray[Any],
    settings: RetrainSettings,
    *,
    target_fpr: float,
    beta: float,
    shadow: npt.NDArray[Any] | None = None,
) -> GateResult:
    """The gate (see the module docstring) on held-out clean windows (n, W, d)."""
    reasons = []
    live_loss = neg_elbo(live, holdout, live.scaler, beta)
    cand_loss = neg_elbo(candidate, holdout, live.scaler, beta)
    if not cand_loss < live_loss:
        reasons.append(f"elbo: candidate −ELBO {cand_loss:.4g} ≥ live {live_loss:.4g}")
    n = len(holdout)
    n_alerts = int((_raw_scores(candidate, holdout) >= candidate.threshold).sum())
    allowed = int(stats.binom.ppf(0.99, n, min(1.0, settings.max_alert_rate_ratio * target_fpr)))
    if n_alerts > allowed:
        reasons.append(
            f"alert rate: {n_alerts}/{n} clean windows alert (> {allowed}, the 99% bound at "
            f"{settings.max_alert_rate_ratio:g} × target {target_fpr:g})"
        )
    metrics = {
        "live_neg_elbo": live_loss,
        "candidate_neg_elbo": cand_loss,
        "n_holdout": float(n),
        "alert_rate": n_alerts / n,
        "max_alerts": float(allowed),
    }
    if shadow is not None and len(shadow):
        live_recall = float((_raw_scores(live, shadow) >= live.threshold).mean())
        cand_recall = float((_raw_scores(candidate, shadow) >= candidate.threshold).mean())
        metrics |= {"live_recall": live_recall, "candidate_recall": cand_recall}
        if cand_recall < live_recall - settings.max_recall_drop:
            reasons.append(
                f"shadow recall: {cand_recall:.3f} < live {live_recall:.3f} − "
                f"{settings.max_recall_drop:g}"
            )
    return GateResult(not reasons, tuple(reasons), metrics)


def _job_settings(live: Artifact, settings: Settings) -> Settings:
    """The live model's architecture, window and scoring; the retrain slice's budget."""
    r = settings.retrain
    cfg = live.vae_config
    model = ModelSettings(
        hidden=cfg.hidden,
        latent=cfg.latent,
        layers=cfg.layers,
        gaussian_output=cfg.gaussian_output,
        dropout=cfg.dropout,
    )
    train = settings.train.model_copy(update={"epochs": r.epochs, "torch_threads": r.torch_threads})
    return settings.model_copy(
        update={"model": model, "train": train, "window": live.window, "scoring": live.scoring}
    )


def retrain(
    live: Artifact,
    sample: ReservoirSample,
    settings: Settings,
    *,
    trigger: str = "manual",
    shadow: npt.NDArray[Any] | None = None,
    progress: bool = False,
) -> RetrainResult:
    """Warm-start a candidate from ``live`` on a reservoir sample and run the gate (CPU)."""
    r = settings.retrain
    if len(sample) < r.min_windows:
        raise DataError(
            f"retrain needs ≥ {r.min_windows} clean windows, the reservoir has {len(sample)}"
        )
    t0 = time.time()
    job = _job_settings(live, settings)
    train, holdout = sample.split(r.holdout_fraction)
    calib, gate_part = holdout.split(0.5)
    d = len(live.feature_names)  # the data's channels; the calendar's follow, unscaled
    scaler = (
        Scaler.fit(train.windows[..., :d].reshape(-1, d), job.train.std_floor).passing(
            live.window.n_context
        )
        if r.refit_scaler
        else live.scaler
    )
    candidate = fit_artifact(
        train.windows,
        calib.windows,
        calib.keys,
        live.feature_names,
        job,
        scaler=scaler,
        warm_start=live,
        device="cpu",
        progress=progress,
        smooth_calibration=False,
    )
    beta = float(live.training.get("settings", {}).get("beta", settings.train.beta))
    target = live.scoring.target_fpr
    gate = validate(
        live, candidate, gate_part.windows, r, target_fpr=target, beta=beta, shadow=shadow
    )
    if gate.passed:
        # recalibrate on every held-out window now that the gate has used its half
        cal = calibrate(
            _raw_scores(candidate, holdout.windows), target, live.scoring.threshold_method
        )
        candidate = replace(candidate, calibration=cal, version="")
    return RetrainResult(
        candidate,
        gate,
        trigger,
        float(sample.ts[0]),
        float(sample.ts[-1]),
        len(train),
        round(time.time() - t0, 2),
    )


def run_job(
    registry: Registry,
    sample: ReservoirSample,
    settings: Settings,
    *,
    trigger: str = "manual",
    live_version: str | None = None,
) -> dict[str, Any]:
    """Retrain from the registry's current (or ``live_version``) model; publish the candidate
    with its lineage; promote it if it passed. Returns a ``model-events`` message."""
    live = registry.load(live_version)
    shadow = _load_shadow(settings.retrain.shadow_path)
    result = retrain(live, sample, settings, trigger=trigger, shadow=shadow)
    cand = result.candidate
    gate = {
        "passed": result.gate.passed,
        "reasons": list(result.gate.reasons),
        **result.gate.metrics,
    }
    registry.publish(
        cand,
        trigger=trigger,
        data_from_ts=result.data_from_ts,
        data_to_ts=result.data_to_ts,
        n_windows=result.n_windows,
        gate=gate,
    )
    if result.gate.passed:
        registry.promote(cand.version, reason=f"{trigger}: gate passed")
    log.info(
        "retrain (%s) from %s: candidate %s %s %s",
        trigger,
        live.version,
        cand.version,
        "promoted" if result.gate.passed else "rejected",
        "; ".join(result.gate.reasons) or "",
    )
    return {
        "event": "promoted" if result.gate.passed else "rejected",
        "version": cand.version,
        "parent": live.version,
        "trigger": trigger,
        "data_from_ts": result.data_from_ts,
        "data_to_ts": result.data_to_ts,
        "n_windows": result.n_windows,
        "train_seconds": result.train_seconds,
        "threshold": cand.threshold,
        "gate": gate,
    }


def _load_shadow(path: Path | None) -> F32 | None:
    if path is None:
        return None
    with np.load(path) as f:
        return np.asarray(f["windows"], dtype=np.float32)


def job_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point in a worker process: ``spec`` names the registry, the sample file and the
    settings (a JSON-able dict); the sample travels as an ``.npz`` file, not through a pipe."""
    settings = Settings.model_validate(spec["settings"])
    torch.set_num_threads(settings.retrain.torch_threads)
    with np.load(spec["sample_path"]) as f:
        sample = ReservoirSample(f["windows"], tuple(str(k) for k in f["keys"].tolist()), f["ts"])
    return run_job(
        Registry(spec["registry_root"]),
        sample,
        settings,
        trigger=spec["trigger"],
        live_version=spec.get("live_version"),
    )


def save_sample(sample: ReservoirSample, path: Path) -> Path:
    """Write a reservoir sample for :func:`job_main` (uncompressed: it is read once, soon)."""
    np.savez(path, windows=sample.windows, keys=np.array(sample.keys), ts=sample.ts)
    return path

"""Warm-start retraining and its validation gate.

``reservoir sample → (older part: training | newest part: held out) → warm start from the live
weights → gate on the held-out part → recalibrate → candidate`` — :func:`retrain` is pure
compute; :func:`stream_vae.lifecycle.job.run_job` adds the registry (publish every candidate with
its lineage, promote the ones that pass) and is what the service runs in another process, so
that training never shares the scoring process's torch threads or its GIL.

The gate, on the newest ``retrain.holdout_fraction`` of the clean windows (never trained on):

(a) **ELBO**: the candidate's negative ELBO (z = μ, reconstruction error in the *live* model's
    scaled units, so that a refitted scaler cannot make it look better) is below the live one's;
(b) **alert rate**: the candidate's alerts on that clean data are not more than
    ``max_alert_rate_ratio`` × the target false-positive rate — tested as "the count is within
    the binomial 99% bound at that rate", because a few hundred windows cannot measure a 0.1%
    rate to a factor of two;
(c) **shadow recall** (when ``retrain.shadow_path`` names an ``.npz`` with ``windows``
    (m, W, d) of labelled anomalies never used in training, and the windows of alerts people
    confirmed, :mod:`stream_vae.lifecycle.feedback`): the candidate's recall is not more than
    ``max_recall_drop`` below the live model's.

Windows of alerts people marked as false positives join the training windows (and the windows
early stopping measures), repeated to at least ``feedback.share`` of them. They are normal now,
so (a) measures them too, at that share; (b) stays on clean windows only. The gate reports how
many of them each model alerts on (``fp_alert_rate_live``, ``fp_alert_rate_candidate``).

The threshold is calibrated on the held-out windows' raw scores (see
:func:`stream_vae.training.build.fit_artifact` on why not the EMA), first on the older half (so
that (b) is measured on windows it was not set on), then, once the gate passed, on all of them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from ..core.sample import ReservoirSample
from ..core.scaler import Scaler
from ..errors import DataError
from ..model.backends import TorchBackend
from ..model.detector import Detector
from ..model.vae import kl_per_dim, point_error
from ..scoring.spot import with_stream_start
from ..scoring.threshold import calibrate
from ..storage.artifact import Artifact
from .build import fit_artifact

if TYPE_CHECKING:  # annotations only: the loader is the entry point's
    from ..config import RetrainSettings, Settings

__all__ = [
    "GateResult",
    "RetrainResult",
    "neg_elbo",
    "retrain",
    "validate",
    "with_false_positives",
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
    """Mean −ELBO per point (z = μ) of raw windows (n, W, d), as training measures it (the
    training loss's terms, :func:`stream_vae.model.vae.point_error` and ``kl_per_dim``), with the
    reconstruction in ``reference`` units so that a refitted scaler cannot make it look better.
    """
    backend = TorchBackend(artifact.model(), "cpu")
    recon, recon_lv, mu, logvar = backend(artifact.scaler.transform(windows))  # (n, W, d), (n, k)
    d = len(artifact.feature_names)  # the data's channels, not the calendar's
    # back to raw units, then into the reference scaler's: comparable across scalers
    recon_raw = recon * artifact.scaler.std + artifact.scaler.mean
    x_ref = reference.transform(windows)[..., :d]  # (n, W, d)
    recon_ref = reference.transform(recon_raw)[..., :d]
    lv_ref = None
    if recon_lv is not None:  # a variance in the artifact's units, rescaled to the reference's
        lv_ref = recon_lv[..., :d] + 2.0 * np.log(artifact.scaler.std[:d] / reference.std[:d])
    err = point_error(x_ref, recon_ref, lv_ref)  # (n, W, d)
    kl = kl_per_dim(mu, logvar).sum(axis=1)  # (n, k) → (n,)
    n_points = windows.shape[1] * windows.shape[2]
    return float(err.mean() + beta * kl.mean() / n_points)


def _raw_scores(artifact: Artifact, windows: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    detector = Detector.from_spec(
        TorchBackend(artifact.model(), "cpu"),
        artifact.scaler,
        artifact.spec,
        reference=artifact.reference,
    )
    parts = detector.infer(windows)
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
    false_positives: F32 | None = None,
    fp_share: float = 0.0,
) -> GateResult:
    """The gate (see the module docstring) on held-out clean windows (n, W, d)."""
    reasons = []
    # Windows people marked as false positives are normal now: (a) measures them too, at the
    # share they were trained at (the live model, which alerted on them, fits them worst)
    normal = with_false_positives(holdout, false_positives, fp_share)
    live_loss = neg_elbo(live, normal, live.scaler, beta)
    cand_loss = neg_elbo(candidate, normal, live.scaler, beta)
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
    if false_positives is not None and len(false_positives):
        for name, art in (("live", live), ("candidate", candidate)):
            rate = (_raw_scores(art, false_positives) >= art.threshold).mean()
            metrics[f"fp_alert_rate_{name}"] = float(rate)
    return GateResult(not reasons, tuple(reasons), metrics)


def with_false_positives(train: F32, false_positives: F32 | None, share: float) -> F32:
    """Training windows (n, W, d) plus the false positives' (m, W, d), cycled to at least
    ``share`` of the result: a dozen windows among thousands would barely move a warm start.

    Examples
    --------
    >>> t, fp = np.zeros((90, 2, 1), np.float32), np.ones((3, 2, 1), np.float32)
    >>> out = with_false_positives(t, fp, 0.1)
    >>> out.shape, int(out[:, 0, 0].sum())
    ((100, 2, 1), 10)
    """
    if false_positives is None or not len(false_positives):
        return train
    m = max(len(false_positives), math.ceil(share / (1.0 - share) * len(train)))
    extra = np.resize(false_positives, (m, *false_positives.shape[1:]))  # cycles through them
    return np.concatenate([train, extra.astype(train.dtype, copy=False)])


def _job_settings(live: Artifact, settings: Settings) -> Settings:
    """The live model's spec (window, architecture, scoring); the retrain slice's budget."""
    r = settings.retrain
    train = settings.train.model_copy(update={"epochs": r.epochs, "torch_threads": r.torch_threads})
    return settings.with_spec(live.spec).model_copy(update={"train": train})


def retrain(
    live: Artifact,
    sample: ReservoirSample,
    settings: Settings,
    *,
    trigger: str = "manual",
    shadow: npt.NDArray[Any] | None = None,
    false_positives: F32 | None = None,
    progress: bool = False,
) -> RetrainResult:
    """Warm-start a candidate from ``live`` on a reservoir sample (plus the windows of alerts
    marked as false positives) and run the gate (CPU)."""
    r = settings.retrain
    if len(sample) < r.min_windows:
        raise DataError(
            f"retrain needs ≥ {r.min_windows} clean windows, the reservoir has {len(sample)}"
        )
    t0 = time.time()
    job = _job_settings(live, settings)
    train, holdout = sample.split(r.holdout_fraction)
    calib, gate_part = holdout.split(0.5)
    train_windows = with_false_positives(train.windows, false_positives, settings.feedback.share)
    d = len(live.feature_names)  # the data's channels; the calendar's follow, unscaled
    scaler = (
        Scaler.fit(train_windows[..., :d].reshape(-1, d), job.train.std_floor).passing(
            live.spec.window.n_context
        )
        if r.refit_scaler
        else live.scaler
    )
    candidate = fit_artifact(
        train_windows,
        calib.windows,
        calib.keys,
        live.feature_names,
        job,
        scaler=scaler,
        warm_start=live,
        device="cpu",
        progress=progress,
        smooth_calibration=False,
        stop_windows=(
            None
            if false_positives is None
            else with_false_positives(calib.windows, false_positives, settings.feedback.share)
        ),
    )
    beta = float(live.training.get("settings", {}).get("beta", settings.train.beta))
    target = live.spec.scoring.target_fpr
    gate = validate(
        live,
        candidate,
        gate_part.windows,
        r,
        target_fpr=target,
        beta=beta,
        shadow=shadow,
        false_positives=false_positives,
        fp_share=settings.feedback.share,
    )
    if gate.passed:
        # recalibrate on every held-out window now that the gate has used its half
        held = _raw_scores(candidate, holdout.windows)
        cal = with_stream_start(calibrate(held, target, live.spec.scoring.threshold_method), held)
        candidate = replace(candidate, calibration=cal, version="")
    return RetrainResult(
        candidate,
        gate,
        trigger,
        float(sample.ts[0]),
        float(sample.ts[-1]),
        len(train_windows),
        round(time.time() - t0, 2),
    )

"""From normal telemetry to a validated model version.

``records → split by time (train | held-out tail) → scaler → windows → fit (early stopping on the
tail) → score normalisers, α and threshold on the tail → Artifact``. The weights never see the
tail; the normalisers are monotone and α is chosen against synthetic faults, so neither biases
the threshold, and using the whole tail for it halves the variance of its tail estimate against
a separate calibration split (fresh-data FPR for a 1% target: 2.8% → 1.8%, docs/scoring.md).
Warm start reuses the previous weights as the starting point (the scaler, normalisers and
threshold are always refitted on the new data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.records import RecordBatch
from ..core.scaler import Scaler
from ..core.windows import ReadyWindows
from ..errors import ArtifactError, DataError
from ..model.backends import TorchBackend
from ..model.detector import Detector
from ..model.vae import LSTMVAE, pick_device
from ..scoring.alpha import choose_weights, corrupt_windows
from ..scoring.ema import SeriesEMA
from ..scoring.hybrid import HybridScore, ScoreParts, Weights
from ..scoring.reference import (
    MAX_LINEAR_ROWS,
    REFERENCE_MODES,
    LatentReference,
    LinearReference,
    PriorReference,
    QualityReference,
    RepeatsReference,
    ScoreReference,
)
from ..scoring.spot import with_stream_start
from ..scoring.threshold import calibrate, newest_point_error, with_settle_level
from ..storage.artifact import Artifact
from .fit import FitResult, fit, make_windows, split_by_time

if TYPE_CHECKING:  # annotations only: the loader is the entry point's
    from ..config import Settings

__all__ = [
    "MAX_TRAIN_ABS",
    "fit_artifact",
    "package_artifact",
    "rescore_artifact",
    "train_artifact",
]

log = logging.getLogger(__name__)

# The alpha search scores this many validation windows (and as many corrupted copies): enough
# for an AUC to ±0.01, cheap next to training.
_ALPHA_WINDOWS = 4000
# The largest magnitude a raw training value may have. The scaler's mean and std come from the
# training values, so one absurd value decides them: a single 1e20 among readings near 1 gave a
# std of 5e18; every real reading then scales to ~0, and only values near 1e19 and beyond score
# as anything (the detector clips scaled values at MAX_SCALED = 1e6 stds). 1e15 is above any
# physical reading in its usual unit (a petabyte counter in bytes, a frequency in Hz) and below
# the values that stand in for "no reading" (1e20, 1e30, 9.9e37, float32's max 3.4e38).
MAX_TRAIN_ABS = 1e15


def train_artifact(
    batch: RecordBatch,
    feature_names: Sequence[str],
    settings: Settings,
    *,
    warm_start: Artifact | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Artifact:
    """Train, calibrate and package a model from normal records (any order, many series)."""
    t0 = time.time()
    win = settings.window
    if warm_start is not None:
        warm_start.check_features(feature_names)
        if warm_start.spec.window.calendar != win.calendar:
            raise ArtifactError(
                f"warm start from a model with calendar {warm_start.spec.window.calendar}, "
                f"these settings have {win.calendar}"
            )
    _check_magnitudes(batch, feature_names)
    batch = batch.in_time_order()  # training files need not be in time order; windows must
    scaler, w_train, w_val = _split_windows(batch, settings)
    art = fit_artifact(
        w_train.values,
        w_val.values,
        w_val.keys,
        feature_names,
        settings,
        scaler=scaler,
        warm_start=warm_start,
        device=device,
        progress=progress,
    )
    art.training["metrics"].update(
        n_rows=len(batch),
        n_series=len(set(batch.series_ids)),
        train_seconds=round(time.time() - t0, 2),
    )
    return art


def rescore_artifact(art: Artifact, batch: RecordBatch, settings: Settings) -> Artifact:
    """``art``'s weights and scaler under ``settings.scoring``: the references, the hybrid and
    the threshold refitted on the same split of the same training records (``settings``' window
    and train sections must be those ``art`` was trained with). One training serves every
    latent mode in an evaluation (``vae-hybrid-<mode>``). With ``train.contamination`` the
    references are fitted on every training window (which ones the fit trimmed is not kept).
    ``settings.window.stride`` may differ from the model's: the threshold is then calibrated
    for that stride."""
    # the stride only decides which windows are scored: the same weights serve any
    window = settings.window.model_copy(update={"stride": art.spec.window.stride})
    if window != art.spec.window or settings.model != art.spec.model:
        raise ArtifactError("rescore_artifact: the window and model settings must be the model's")
    _, w_train, w_val = _split_windows(batch.in_time_order(), settings)
    out = package_artifact(
        art.model(),
        w_train.values,
        w_val.values,
        w_val.keys,
        art.feature_names,
        settings,
        scaler=art.scaler,
        parent=art.parent,
    )
    out.training["metrics"] = {**art.training["metrics"], **out.training["metrics"]}
    return out


def _split_windows(
    batch: RecordBatch, settings: Settings
) -> tuple[Scaler, ReadyWindows, ReadyWindows]:
    """The training records (in time order) → the scaler fitted on the head of every series,
    and the windows of the head (training) and the tail (validation)."""
    win = settings.window
    head, tail = split_by_time(batch, settings.train.val_fraction)
    scaler = Scaler.fit(head.values, settings.train.std_floor).passing(win.n_context)
    w_train = make_windows(head, win.size, calendar=win.calendar)
    w_val = make_windows(tail, win.size, calendar=win.calendar)
    for name, w in (("training", w_train), ("validation", w_val)):
        if len(w) == 0:
            raise DataError(
                f"no {name} windows: every series needs more than {win.size} points in its "
                f"{name} part (got {len(batch)} rows over {len(set(batch.series_ids))} series)"
            )
    return scaler, w_train, w_val


def stride_phases(keys: Sequence[str], stride: int) -> list[str]:
    r"""The windows of each series (stride-1 windows, in order) as ``stride`` interleaved
    sequences of every ``stride``-th window: the key of the series and its window's phase.

    >>> stride_phases(["a", "b", "a", "a"], 2)
    ['a', 'b', 'a\x001', 'a']
    """
    if stride == 1:
        return list(keys)
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        n = seen.get(k, 0)
        seen[k] = n + 1
        out.append(k if n % stride == 0 else f"{k}\x00{n % stride}")
    return out


def _check_magnitudes(batch: RecordBatch, feature_names: Sequence[str]) -> None:
    """Refuse a non-finite value or one beyond ±``MAX_TRAIN_ABS``, naming the first (in the
    batch's order) by series, time and feature (``read_table(..., max_abs=MAX_TRAIN_ABS)``
    names the file and line instead)."""
    bad = ~(np.abs(batch.values) <= MAX_TRAIN_ABS)  # (n, d); NaN compares False: bad too
    if not bad.any():
        return
    i, j = np.argwhere(bad)[0]
    raise DataError(
        f"series {batch.series_ids[i]} at ts {float(batch.ts[i])!r}: feature {feature_names[j]} is "
        f"{batch.values[i, j]:g}: training values must be finite and within "
        f"±{MAX_TRAIN_ABS:g}"
    )


def fit_artifact(
    train_windows: np.ndarray,
    val_windows: np.ndarray,
    val_keys: Sequence[str],
    feature_names: Sequence[str],
    settings: Settings,
    *,
    scaler: Scaler,
    warm_start: Artifact | None = None,
    device: str = "auto",
    progress: bool = True,
    smooth_calibration: bool = True,
    stop_windows: np.ndarray | None = None,
) -> Artifact:
    """Fit on raw windows (n, W, d), then choose α and calibrate on the validation windows.

    ``stop_windows``: what early stopping measures instead of the validation windows (a
    retrain that learns alerts marked as false positives measures them too: on clean windows
    alone, the epoch that best fits them is often one that has not learned the pattern yet).

    ``smooth_calibration``: the threshold is set on the per-series EMA of the validation scores
    (consecutive windows, as the service sees them). Retraining calibrates on a sample of
    non-adjacent windows, where an EMA would average independent scores and set the threshold
    too low; it passes False and calibrates on the raw score, which the EMA of adjacent,
    overlapping windows hardly narrows (conservative: the live rate is at most the target).
    """
    t0 = time.time()
    dev = pick_device(device)

    def fit_on(windows: np.ndarray) -> FitResult:
        return fit(
            scaler.transform(windows),
            scaler.transform(val_windows if stop_windows is None else stop_windows),
            settings.model,
            settings.train,
            init_state=warm_start.state_dict if warm_start is not None else None,
            device=dev,
            progress=progress,
        )

    result = fit_on(train_windows)
    trim: dict[str, float | int] = {}
    if settings.train.contamination > 0:
        train_windows, trim = _trim(result, scaler, settings, train_windows, dev)
        result = fit_on(train_windows)
    art = package_artifact(
        result.model,
        train_windows,
        val_windows,
        val_keys,
        feature_names,
        settings,
        scaler=scaler,
        device=dev,
        smooth_calibration=smooth_calibration,
        parent=warm_start.version if warm_start is not None else None,
    )
    art.training["metrics"] = {
        **result.metrics(),
        **art.training["metrics"],
        **({"trim": trim} if trim else {}),
        "train_seconds": round(time.time() - t0, 2),
    }
    return art


def package_artifact(
    model: LSTMVAE,
    train_windows: np.ndarray,
    val_windows: np.ndarray,
    val_keys: Sequence[str],
    feature_names: Sequence[str],
    settings: Settings,
    *,
    scaler: Scaler,
    device: torch.device | str = "cpu",
    smooth_calibration: bool = True,
    parent: str | None = None,
) -> Artifact:
    """A fitted model → an artifact scored as ``settings.scoring`` says: the references its
    components measure against (from the training windows), the hybrid's normalisers and weights
    and the threshold (on the validation windows). :func:`fit_artifact` after the fit;
    :func:`rescore_artifact` for the same weights under other scoring settings."""
    spec = settings.spec()
    backend = TorchBackend(model, device)
    reference = _fit_reference(backend, scaler, settings, train_windows)
    detector = Detector.from_spec(backend, scaler, spec, reference=reference)
    val_parts = detector.infer(val_windows)
    hybrid, weight_aucs = _fit_hybrid(detector, val_windows, val_parts, settings)
    raw = hybrid.raw(val_parts).raw
    # The threshold applies to the smoothed score, so calibrate on exactly that: the validation
    # windows in order through a fresh per-series EMA, of every `stride`-th window as the
    # service scores them (each of the stride's phases its own sequence, so none is wasted).
    stride = settings.window.stride
    smoothed = (
        SeriesEMA(settings.scoring.ema_beta).update(stride_phases(val_keys, stride), raw)
        if smooth_calibration
        else raw
    )
    calibration = calibrate(
        smoothed,
        settings.scoring.target_fpr,
        settings.scoring.threshold_method,
        contamination=settings.train.contamination,
    )
    calibration = with_stream_start(calibration, smoothed)
    if val_parts.expected is not None:
        errors = newest_point_error(
            val_windows, val_parts.expected, scaler.std[: detector.n_values]
        )
        calibration = with_settle_level(calibration, errors)
    metrics = {
        "n_windows": {"train": len(train_windows), "val": len(val_windows)},
        **_auc_metrics(weight_aucs, hybrid.has_linear),
    }
    return Artifact(
        feature_names=tuple(feature_names),
        vae_config=model.config,
        state_dict={k: v.cpu() for k, v in model.state_dict().items()},
        scaler=scaler,
        hybrid=hybrid,
        calibration=calibration,
        spec=spec,
        training={"settings": settings.train.model_dump(), "metrics": metrics},
        parent=parent,
        created_at=time.time(),
        reference=reference,
    )


def _trim(
    first: FitResult,
    scaler: Scaler,
    settings: Settings,
    train_windows: np.ndarray,
    device: torch.device,
) -> tuple[np.ndarray, dict[str, float | int]]:
    """The training windows without the worst-reconstructed ``train.contamination`` of them
    (by the first fit's mean reconstruction error over the window's values), and a record of
    what was removed."""
    win = settings.window
    backend = TorchBackend(first.model, device)
    parts = Detector(backend, scaler, win.size, n_context=win.n_context).infer(train_windows)
    err = parts.recon_features.astype(np.float64).mean(axis=1)  # (n,)
    cutoff = float(np.quantile(err, 1.0 - settings.train.contamination))
    keep = err <= cutoff
    record: dict[str, float | int] = {
        "fraction": settings.train.contamination,
        "removed": int((~keep).sum()),
        "kept": int(keep.sum()),
        "error_cutoff": cutoff,
        "first_fit_best_epoch": first.best_epoch,
    }
    log.info(
        "trimmed %d of %d training windows (reconstruction error > %.4g); fitting again",
        record["removed"],
        len(err),
        cutoff,
    )
    return train_windows[keep], record


def _fit_reference(
    backend: TorchBackend, scaler: Scaler, settings: Settings, train_windows: np.ndarray
) -> ScoreReference:
    """What the latent modes ``aggregate``/``knn*`` and the linear residual measure against:
    the posterior means and the principal subspace of (a sample of) the training windows."""
    s, win = settings.scoring, settings.window
    need_latent = s.latent_mode in REFERENCE_MODES
    prior = None
    comps = backend.model.prior_components()
    if comps is not None:
        with torch.no_grad():
            mu, logvar = (c.detach().cpu().numpy().astype(np.float32) for c in comps)
        prior = PriorReference(mu, logvar)
    # the data-quality alerts' reference: the values' range and movement (not the calendar)
    values = train_windows[:, :, : train_windows.shape[2] - win.n_context]
    quality = QualityReference.fit(values)
    repeats = RepeatsReference.fit(values) if s.repeats else None
    if not need_latent and s.linear_variance == 0:
        return ScoreReference(prior=prior, quality=quality, repeats=repeats)
    rng = np.random.default_rng(settings.train.seed)
    n = min(MAX_LINEAR_ROWS, len(train_windows))
    sample = train_windows[np.sort(rng.choice(len(train_windows), size=n, replace=False))]
    probe = Detector(backend, scaler, win.size, n_context=win.n_context)
    latent = linear = None
    if need_latent:
        mu, _ = probe.encode(sample)
        latent = LatentReference.fit(mu, rng)
    if s.linear_variance > 0:
        data = probe.scaled(sample)[:, :, : probe.n_values]  # the values, not the calendar
        linear = LinearReference.fit(data.reshape(n, -1), s.linear_variance, rng)
    return ScoreReference(latent, linear, prior, quality, repeats)


def _auc_metrics(aucs: dict[Weights, float], has_linear: bool) -> dict[str, dict[str, float]]:
    """The AUC of each weighting tried, for the manifest: by α (two components) or by
    ``"w_recon/w_latent/w_linear"``."""
    if not aucs:
        return {}
    if has_linear:
        return {"weights_auc": {"/".join(f"{x:g}" for x in w): v for w, v in aucs.items()}}
    return {"alpha_auc": {str(w[0]): v for w, v in aucs.items()}}


def _fit_hybrid(
    detector: Detector, val_windows: np.ndarray, parts: ScoreParts, settings: Settings
) -> tuple[HybridScore, dict[Weights, float]]:
    s = settings.scoring
    hybrid = HybridScore(
        0.5 if s.alpha == "auto" else float(s.alpha), s.normaliser, s.transform, s.combine
    ).fit(parts)
    if s.alpha != "auto":
        return hybrid, {}
    rng = np.random.default_rng(settings.train.seed)
    idx = rng.choice(len(val_windows), size=min(_ALPHA_WINDOWS, len(val_windows)), replace=False)
    clean = val_windows[np.sort(idx)]
    data_std = detector.scaler.std[: detector.n_values]  # the calendar is not faulted
    corrupted = detector.infer(corrupt_windows(clean, data_std, rng))
    weights, aucs = choose_weights(hybrid, parts.take(np.sort(idx)), corrupted)
    log.info(
        "weights (recon, latent, linear) = %s chosen on %d validation windows (best AUC %.3f)",
        weights,
        len(clean),
        aucs[weights],
    )
    return hybrid.with_weights(weights), aucs

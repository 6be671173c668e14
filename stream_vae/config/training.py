"""Training's settings: how a model is fitted, and when and how it is retrained."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from .model import FROZEN

__all__ = ["FeedbackSettings", "RetrainSettings", "TrainSettings"]


class TrainSettings(BaseModel):
    """How a model is fitted on normal windows (see :func:`stream_vae.training.fit.fit`)."""

    model_config = FROZEN

    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0, lt=1)
    beta: float = Field(0.05, ge=0, description="weight of the KL term (β-VAE)")
    # KL annealing: β ramps linearly from 0 over this many optimiser steps, which keeps the
    # encoder from collapsing the posterior to the prior before the decoder learns anything.
    kl_anneal_steps: int = Field(500, ge=0)
    # Free bits: each latent dimension's KL below this many nats is not penalised.
    free_bits: float = Field(0.02, ge=0)
    val_fraction: float = Field(0.2, gt=0, lt=0.9, description="tail of each series held out")
    patience: int = Field(5, ge=1, description="epochs without val improvement before stopping")
    noise_std: float = Field(0.0, ge=0, description="Gaussian input noise (scaled units)")
    max_windows: int = Field(200_000, ge=1, description="cap on training windows (subsampled)")
    # Features whose std is below this (in data units) are scaled by the floor instead, so a
    # near-constant metric cannot dominate the reconstruction error when it moves slightly.
    std_floor: float = Field(1e-2, gt=0)
    seed: int = 0
    torch_threads: int = Field(2, ge=1, le=256)
    # Training data is rarely perfectly clean: the share of windows that may be anomalous.
    # With contamination > 0 a first fit scores every training window, the worst-reconstructed
    # share is removed and the model is fitted again on the rest (twice the training time), and
    # the threshold is calibrated with that share of the held-out tail's top scores set aside
    # (scoring.threshold.trimmed_tail_threshold). The manifest records what was removed
    # (training.metrics.trim). On clean data it costs little: docs/scoring.md.
    contamination: float = Field(0.0, ge=0.0, le=0.2)


class RetrainSettings(BaseModel):
    """The warm-start retraining job and its validation gate (see stream_vae.training.gate)."""

    model_config = FROZEN

    on_drift: bool = Field(True, description="a score drift event starts a job")
    on_input_drift: bool = Field(False, description="an input drift event starts a job")
    schedule_s: float | None = Field(None, gt=0, description="also retrain this often")
    # The clean-data reservoir: windows not in an alert episode, stratified by stream time.
    reservoir_windows: int = Field(20_000, ge=10, description="windows held, all buckets")
    reservoir_buckets: int = Field(24, ge=1, description="time strata; oldest dropped first")
    bucket_s: float = Field(3600.0, gt=0, description="stream seconds per stratum")
    # When at least this share of ≥ fleet_min_series series alerts at once, it is the fleet
    # that changed, not a machine: their windows enter the reservoir anyway.
    fleet_change_share: float = Field(0.5, gt=0, le=1)
    fleet_min_series: int = Field(10, ge=1)
    # Enough to cover the data's cycles: in tests/test_lifecycle.py a model retrained on 125
    # steps of 12 series alerted on 7.7% of the rest of the stream, one on 600 steps on 0.85-3.2%
    # (target 1%; the data's slow cycle, 240-1,600 steps, is longer still).
    min_windows: int = Field(5000, ge=10, description="fewer clean windows: no job")
    epochs: int = Field(10, ge=1, le=10_000)
    refit_scaler: bool = True
    holdout_fraction: float = Field(0.3, gt=0, lt=0.9, description="newest share for the gate")
    max_alert_rate_ratio: float = Field(2.0, ge=1, description="gate: alert rate ≤ this × FPR")
    max_recall_drop: float = Field(0.05, ge=0, le=1, description="gate: vs the live model")
    shadow_path: Path | None = Field(None, description=".npz of labelled anomalous windows")
    torch_threads: int = Field(1, ge=1, le=256, description="the job's own thread budget")


class FeedbackSettings(BaseModel):
    """What people's verdicts on alerts teach the next retrain (stream_vae.lifecycle.feedback);
    read from ``kafka.feedback_topic``."""

    model_config = FROZEN

    # Each recent anomaly episode's windows are held, thinned evenly, so that a verdict on it
    # finds them: at most windows_per_alert of each of the newest alerts_held episodes
    # (32 × 500 windows of W = 64, d = 8: 33 MB).
    windows_per_alert: int = Field(32, ge=1, le=4096, description="windows held per episode")
    alerts_held: int = Field(500, ge=1, description="newest episodes whose windows are held")
    # The score rises before its smoothed value crosses the threshold: the windows leading
    # into an open (those of the batch that opened it) are part of the pattern. Without them,
    # a smooth 4σ bump fed back still opened an episode on its rising edge in 2 of 3 seeds.
    lead_windows: int = Field(8, ge=0, le=4096, description="windows before the open held")
    max_windows: int = Field(4000, ge=1, description="per verdict; the oldest alert goes first")
    # False-positive windows are repeated to at least this share of a retrain's training
    # windows: a dozen windows among thousands barely move a warm start. On a generated fleet
    # with a 3σ level shift of two features marked (3 seeds), the candidate alerted on 38%,
    # 20%, 38% of the marked windows at 0.1 and 19%, 5%, 38% at 0.2 (docs/lifecycle.md).
    share: float = Field(0.2, ge=0, lt=0.5, description="least share of training windows")
    # A retrain starts once this many false positives were fed back since the last job (and
    # the reservoir holds retrain.min_windows); None: they wait for a drift or schedule job.
    retrain_after: int | None = Field(1, ge=1, description="false positives that start a job")

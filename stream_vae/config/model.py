"""The model's settings: fixed at training, stored in the artifact (:class:`ModelSpec`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["FROZEN", "ModelSettings", "ModelSpec", "ScoringSettings", "WindowSettings"]

FROZEN = ConfigDict(frozen=True, extra="forbid")


class WindowSettings(BaseModel):
    """How a model's windows are cut (see :class:`stream_vae.core.windows.WindowStore`); how many
    series a deployment holds, and for how long, are ``service`` settings."""

    model_config = FROZEN

    size: int = Field(32, ge=2, le=4096, description="points per window (W)")
    # Training always learns from every window; the stride decides which the service scores
    # (each series' every S-th), and the threshold is calibrated for it (docs/operations.md).
    stride: int = Field(1, ge=1, description="new points between two scored windows")
    # A gap longer than this (event time) breaks a series: reset, or forward-fill a few points.
    max_gap_s: float | None = Field(None, gt=0)
    gap_policy: Literal["reset", "ffill"] = "reset"
    max_fill: int = Field(0, ge=0, le=1024)
    # Each point also carries its phase in these cycles (sin, cos): the model sees the time of
    # day or week a shape happens at; only the values' error is scored (stream_vae.core.windows).
    calendar: tuple[Literal["day", "week"], ...] = ()

    @field_validator("calendar")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"calendar: each cycle once, got {list(v)}")
        return v

    @property
    def n_context(self) -> int:
        """Channels a point carries besides its values: two per calendar cycle."""
        return 2 * len(self.calendar)


class ModelSettings(BaseModel):
    """Shape of the LSTM-VAE (see :class:`stream_vae.model.vae.VAEConfig`)."""

    model_config = FROZEN

    hidden: int = Field(64, ge=1, le=4096)
    latent: int = Field(16, ge=1, le=1024)
    layers: int = Field(1, ge=1, le=8)
    gaussian_output: bool = Field(False, description="decoder also predicts a log-variance")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # The prior the KL is measured against: N(0, I), or a VampPrior — the mixture of the
    # posteriors of n_pseudo learned pseudo-windows (Tomczak & Welling, 2018), so that the
    # latent term says how far a window's posterior is from what normal windows look like.
    prior: Literal["normal", "vamp"] = "normal"
    n_pseudo: int = Field(16, ge=1, le=1024, description="pseudo-windows of the VampPrior")


class ScoringSettings(BaseModel):
    """How the score is formed, smoothed and calibrated (see :mod:`stream_vae.scoring`): the
    calibrated threshold depends on every field here, so they are fixed with the model."""

    model_config = FROZEN

    recon_mode: Literal["window", "last"] = "window"
    # The latent term: KL to the prior, −log N(μ; 0, I), or how far μ lies from the posterior
    # means of the normal training windows (one Gaussian: "aggregate"; its nearest neighbours:
    # "knn", or "knn_whitened" under that Gaussian's metric), stored with the model; or,
    # sampling latent_samples codes per window (the torch backend only, latent_samples decoder
    # passes each), the reconstruction probability "recon_prob" or the importance-weighted
    # −log p(x) "iwae" (see docs/scoring.md).
    latent_mode: Literal[
        "kl", "prior_nll", "aggregate", "knn", "knn_whitened", "recon_prob", "iwae"
    ] = "kl"
    latent_samples: int = Field(16, ge=1, le=1024)
    # A third component, PCA's view of the same scaled window: its residual off the subspace
    # that explains this share of the normal windows' variance; 0 = no linear component.
    linear_variance: float = Field(0.0, ge=0.0, lt=1.0)
    # For sensors with continuous values: a window whose channel repeats its value exactly for
    # more steps than that channel ever did in training (a stuck sensor) scores at least that
    # surprise, max(hybrid, repeats). Needs normaliser = "tail" (both sides in nats).
    repeats: bool = False
    normaliser: Literal["robust", "standard", "tail"] = "robust"
    transform: Literal["softplus", "sigmoid"] = "softplus"
    combine: Literal["sum", "product"] = "sum"
    # α weighs reconstruction against the latent term; "auto" picks it on validation windows
    # against synthetic corruptions of the same windows (see docs/scoring.md).
    alpha: float | Literal["auto"] = "auto"
    ema_beta: float = Field(0.5, ge=0, lt=1)
    target_fpr: float = Field(1e-3, gt=0, lt=0.5)
    threshold_method: Literal["quantile", "pot", "auto"] = "auto"

    @model_validator(mode="after")
    def _alpha_range(self) -> ScoringSettings:
        if self.alpha != "auto" and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError("alpha must be in [0, 1] or 'auto'")
        if self.alpha != "auto" and self.linear_variance > 0:
            raise ValueError("linear_variance > 0 needs alpha = 'auto' (its weight is chosen)")
        if self.repeats and self.normaliser != "tail":
            raise ValueError("repeats needs normaliser = 'tail' (its surprise is in nats)")
        return self


class ModelSpec(BaseModel):
    """What a trained model fixes, stored in its artifact: the windows it was trained on, its
    architecture, and how its score is formed and calibrated."""

    model_config = FROZEN

    window: WindowSettings = WindowSettings()
    model: ModelSettings = ModelSettings()
    scoring: ScoringSettings = ScoringSettings()

    @model_validator(mode="after")
    def _likelihood_needs_a_variance(self) -> ModelSpec:
        if self.scoring.latent_mode == "iwae" and not self.model.gaussian_output:
            raise ValueError(
                "latent_mode 'iwae' needs model.gaussian_output = true: with the mean-only "
                "decoder p(x|z) has no scale, and its estimate is not a likelihood"
            )
        return self

"""One settings tree for the whole product.

Built once in the entry point (:func:`load_settings`), frozen, and handed out slice by slice: each
component receives only the sub-model it needs. Sources, highest priority first: explicit
arguments, environment variables (``STREAM_VAE_`` prefix, ``__`` between levels, e.g.
``STREAM_VAE_WINDOW__SIZE=64``), an optional TOML file, then the defaults below.

Examples
--------
>>> s = load_settings(env={"STREAM_VAE_WINDOW__SIZE": "48"})
>>> s.window.size, s.window.stride
(48, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from . import _json
from .errors import ConfigError

__all__ = [
    "DriftSettings",
    "KafkaSettings",
    "ModelSettings",
    "RegistrySettings",
    "RetrainSettings",
    "ScoringSettings",
    "ServiceSettings",
    "Settings",
    "TrainSettings",
    "WindowSettings",
    "format_validation_error",
    "load_settings",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class WindowSettings(BaseModel):
    """Sliding windows per series (see :class:`stream_vae.core.windows.WindowStore`)."""

    model_config = _FROZEN

    size: int = Field(32, ge=2, le=4096, description="points per window (W)")
    stride: int = Field(1, ge=1, description="new points between two scored windows")
    # A gap longer than this (event time) breaks a series: reset, or forward-fill a few points.
    max_gap_s: float | None = Field(None, gt=0)
    gap_policy: Literal["reset", "ffill"] = "reset"
    max_fill: int = Field(0, ge=0, le=1024)
    idle_ttl_s: float | None = Field(None, gt=0, description="evict series silent this long")
    max_series: int | None = Field(None, ge=1, description="LRU bound on series held")
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

    model_config = _FROZEN

    hidden: int = Field(64, ge=1, le=4096)
    latent: int = Field(16, ge=1, le=1024)
    layers: int = Field(1, ge=1, le=8)
    gaussian_output: bool = Field(False, description="decoder also predicts a log-variance")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class TrainSettings(BaseModel):
    """How a model is fitted on normal windows (see :func:`stream_vae.training.fit.fit`)."""

    model_config = _FROZEN

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


class ScoringSettings(BaseModel):
    """Hybrid score, smoothing, threshold and episodes (see :mod:`stream_vae.scoring`)."""

    model_config = _FROZEN

    recon_mode: Literal["window", "last"] = "window"
    latent_mode: Literal["kl", "prior_nll"] = "kl"
    normaliser: Literal["robust", "standard"] = "robust"
    transform: Literal["softplus", "sigmoid"] = "softplus"
    combine: Literal["sum", "product"] = "sum"
    # α weighs reconstruction against the latent term; "auto" picks it on validation windows
    # against synthetic corruptions of the same windows (see docs/scoring.md).
    alpha: float | Literal["auto"] = "auto"
    ema_beta: float = Field(0.5, ge=0, lt=1)
    target_fpr: float = Field(1e-3, gt=0, lt=0.5)
    threshold_method: Literal["quantile", "pot", "auto"] = "auto"
    hysteresis: float = Field(0.9, gt=0, le=1)
    close_after: int = Field(3, ge=1)
    cooldown: int = Field(0, ge=0)
    top_k: int = Field(3, ge=1)
    # Novelty (stream_vae.evaluation.novelty): a per-row score that rises at the onset of a new,
    # larger-than-recent excursion; what the NAB evaluation scores for us. "Recent": the
    # series' last novelty_window windows.
    novelty_window: int = Field(1000, ge=1)
    novelty_peak_decay: float = Field(0.9999, gt=0, le=1)
    # An excursion whose novelty reaches novelty_censor (0: off) is taken for an anomaly and
    # stays out of the recent maximum (until it falls back, or for a tenth of the window at
    # most: longer, it is a new level), so it cannot hide the next one; at most
    # novelty_censor_runs such excursions per novelty_window windows (more are a pattern).
    novelty_censor: float = Field(0.0, ge=0, le=1)
    novelty_censor_runs: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _alpha_range(self) -> ScoringSettings:
        if self.alpha != "auto" and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError("alpha must be in [0, 1] or 'auto'")
        return self


class KafkaSettings(BaseModel):
    """Where the service reads and writes, and how it authenticates (stream_vae.service.kafka)."""

    model_config = _FROZEN

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "stream-vae"
    group_id: str = "stream-vae"
    input_topics: tuple[str, ...] = ("telemetry",)
    input_pattern: str | None = Field(None, description="regex; replaces input_topics")
    alert_topic: str = "telemetry.alerts"
    dead_letter_topic: str = "telemetry.dead-letter"
    model_events_topic: str = "stream-vae.model-events"  # drift, retrain, promote, reject
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    # Create missing topics at start-up (off by default: production topics are provisioned).
    auto_create_topics: bool = False
    topic_partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)
    # Idempotent produce needs InitProducerId, which some Kafka-compatible brokers lack.
    enable_idempotence: bool = False
    max_message_bytes: int = Field(1 << 20, ge=1024, description="larger values: dead letter")
    # A member silent this long leaves the group. Some brokers hold a join for half of it.
    session_timeout_ms: int = Field(10_000, ge=1000, le=300_000)
    # Bound what the consumer buffers ahead of the service (it fetches a partition again only
    # once the service took its buffered records): at most fetch_max_bytes in flight per broker
    # and max_partition_fetch_bytes held per assigned partition.
    fetch_max_bytes: int = Field(16 << 20, ge=1024, description="one fetch response, at most")
    max_partition_fetch_bytes: int = Field(1 << 20, ge=1024, description="per partition fetch")

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                n
                for n in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, n) is None
            ]
            if missing:
                raise ValueError(f"{self.security_protocol} needs {', '.join(missing)}")
        if not self.input_topics and self.input_pattern is None:
            raise ValueError("set input_topics or input_pattern")
        return self


class ServiceSettings(BaseModel):
    """The streaming loop (see stream_vae.service)."""

    model_config = _FROZEN

    max_batch_records: int = Field(2048, ge=1, le=1_000_000, description="records per batch")
    max_wait_ms: int = Field(50, ge=0, le=60_000, description="longest wait to fill a batch")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="bound on the final drain")
    device: str = "auto"
    backend: Literal["torch", "onnx"] = "torch"
    # /metrics, /healthz, /readyz, /accounting; loopback unless exposed on purpose. None: off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(9108, ge=0, le=65535, description="0: any free port")
    # Autocast dtype of the forward pass (bf16 also runs on the CPU; fp16 needs CUDA) and
    # optional torch.compile. fp32 is the reference of the parity bound (docs/operations.md).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False

    def detector_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Artifact.detector`` / ``Pipeline.from_artifact`` for this
        deployment (the service's first model and every version it swaps to)."""
        return {
            "backend": self.backend,
            "precision": self.precision,
            "compile": self.compile,
            # a forward pass per batch: chunks no smaller than a batch (4096 suits the CPU)
            "max_batch": max(4096, self.max_batch_records),
        }


class DriftSettings(BaseModel):
    """The drift monitor (stream_vae.lifecycle.drift): KSWIN over thinned raw scores and inputs."""

    model_config = _FROZEN

    enabled: bool = True
    # Per test. The KS test runs at every sample once the window is full, so the per-sample
    # alpha is spent ~window_size/stat_size times per independent window. 1e-4 with the
    # 2-of-3-within-100 rule below: ≤ 1 event per 100k stationary scores in every one of 100
    # seeds (within 300 samples: 3 events in 1 seed of 100); tests/test_drift.py.
    alpha: float = Field(1e-4, gt=0, lt=1)
    window_size: int = Field(100, ge=4, le=100_000)
    stat_size: int = Field(30, ge=2)
    n_detectors: int = Field(3, ge=1, le=16, description="KSWINs fed round-robin")
    min_detections: int = Field(2, ge=1, description="distinct detectors that must agree")
    within_samples: int = Field(100, ge=1, description="... within this many samples")
    thin_every: int | None = Field(
        None, ge=1, description="one sample per series every k windows; None: W / stride"
    )
    max_samples_per_batch: int = Field(64, ge=1, description="bound on KS tests per batch")
    input_drift: bool = Field(True, description="also watch each feature's window mean")
    min_interval_s: float = Field(3600.0, ge=0, description="stream seconds between events")

    @model_validator(mode="after")
    def _sizes(self) -> DriftSettings:
        # river only raises at the first full window, hours into a run: check it here.
        if self.stat_size >= self.window_size / 2:
            raise ValueError(
                f"stat_size ({self.stat_size}) must be < window_size / 2 ({self.window_size / 2:g})"
            )
        if self.min_detections > self.n_detectors:
            raise ValueError(
                f"min_detections ({self.min_detections}) > n_detectors ({self.n_detectors})"
            )
        return self


class RetrainSettings(BaseModel):
    """The warm-start retraining job and its validation gate (see stream_vae.training.gate)."""

    model_config = _FROZEN

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


class RegistrySettings(BaseModel):
    """Model versions on disk (see stream_vae.storage.registry)."""

    model_config = _FROZEN

    root: Path | None = Field(None, description="registry directory; None: no hot swap")
    poll_s: float = Field(2.0, gt=0, description="how often the service checks for a promotion")


class Settings(BaseSettings):
    """The root of the settings tree."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_VAE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    window: WindowSettings = WindowSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    scoring: ScoringSettings = ScoringSettings()
    kafka: KafkaSettings = KafkaSettings()
    service: ServiceSettings = ServiceSettings()
    drift: DriftSettings = DriftSettings()
    retrain: RetrainSettings = RetrainSettings()
    registry: RegistrySettings = RegistrySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return (*sources, file_secret_settings)


def format_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: ``window.size: Input should be ≥ 2 (got 0)``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        got = (
            f" (got {err['input']!r})"
            if "input" in err and not isinstance(err["input"], dict)
            else ""
        )
        parts.append(f"{where}: {err['msg']}{got}")
    return "; ".join(parts)


def load_settings(
    toml_file: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the frozen settings tree, or raise :class:`ConfigError` with one readable line.

    ``env`` replaces the process environment (for tests); ``overrides`` win over everything.
    """
    cls: type[Settings] = Settings
    if toml_file is not None:
        path = Path(toml_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        cls = type("FileSettings", (Settings,), {})
        cls.model_config = {**Settings.model_config, "toml_file": path}
    try:
        if env is None:
            return cls(**overrides)
        # pydantic-settings reads the process environment; an explicit mapping goes through init.
        return cls(**{**_nest(env), **overrides})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except ValueError as exc:  # e.g. malformed TOML or JSON in an env var
        raise ConfigError(str(exc).splitlines()[0]) from None


def _nest(env: Mapping[str, str]) -> dict[str, Any]:
    prefix = "STREAM_VAE_"
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.upper().startswith(prefix):
            continue
        path = key[len(prefix) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # Like the environment source: complex values (lists, objects) are written as JSON.
        node[path[-1]] = _json.loads(value) if value.lstrip()[:1] in ("[", "{") else value
    return out

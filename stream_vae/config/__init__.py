"""One settings tree for the whole product, split by who decides each part.

- **The model's** (:class:`ModelSpec`: ``window``, ``model``, ``scoring``): how windows are cut,
  the network, how the score is formed and calibrated. Fixed at training and stored in the
  artifact; a deployment serves a model as it was validated.
- **Training's** (``train``, ``retrain``): how a model is fitted and when it is retrained.
- **The deployment's** (``service``, ``alerts``, ``kafka``, ``drift``, ``registry``, ``log``,
  ``route``): bounds, threads, devices, episode shaping, topics, log lines, alert receivers.
  Changing them never needs a new model.
- **The evaluation's** (``evaluation``): the per-row stage NAB scores, off the product's path.

Built once in the entry point (:func:`load_settings`), frozen, and handed out slice by slice: each
component receives only the sub-model it needs. Sources, highest priority first: explicit
arguments, environment variables (``STREAM_VAE_`` prefix, ``__`` between levels, e.g.
``STREAM_VAE_WINDOW__SIZE=64``), an optional TOML file, then the defaults below. An environment
key that names no setting is logged with the closest real one and ignored; anything else wrong
is one :class:`~stream_vae.errors.ConfigError` line, in which secrets are never echoed.

Examples
--------
>>> s = load_settings(env={"STREAM_VAE_WINDOW__SIZE": "48"})
>>> s.window.size, s.window.stride
(48, 1)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ..errors import ConfigError
from ._env import env_name, read_env
from ._tree import field_at, holds_secret, paths
from .deployment import (
    AlertSettings,
    DriftSettings,
    KafkaSettings,
    LogSettings,
    RegistrySettings,
    RouteSettings,
    ServiceSettings,
)
from .evaluation import EvaluationSettings
from .model import ModelSettings, ModelSpec, ScoringSettings, WindowSettings
from .training import FeedbackSettings, RetrainSettings, TrainSettings

__all__ = [
    "AlertSettings",
    "DriftSettings",
    "EvaluationSettings",
    "FeedbackSettings",
    "KafkaSettings",
    "LogSettings",
    "ModelSettings",
    "ModelSpec",
    "RegistrySettings",
    "RetrainSettings",
    "RouteSettings",
    "ScoringSettings",
    "ServiceSettings",
    "Settings",
    "TrainSettings",
    "WindowSettings",
    "format_validation_error",
    "load_settings",
]


class Settings(BaseSettings):
    """The root of the settings tree."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_VAE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    # the model's (a ModelSpec, fixed at training)
    window: WindowSettings = WindowSettings()
    model: ModelSettings = ModelSettings()
    scoring: ScoringSettings = ScoringSettings()
    # training's
    train: TrainSettings = TrainSettings()
    retrain: RetrainSettings = RetrainSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    # the deployment's
    service: ServiceSettings = ServiceSettings()
    alerts: AlertSettings = AlertSettings()
    kafka: KafkaSettings = KafkaSettings()
    drift: DriftSettings = DriftSettings()
    registry: RegistrySettings = RegistrySettings()
    log: LogSettings = LogSettings()
    route: RouteSettings = RouteSettings()
    # the evaluation's
    evaluation: EvaluationSettings = EvaluationSettings()

    def spec(self) -> ModelSpec:
        """The part of these settings a model trained with them fixes."""
        return ModelSpec(window=self.window, model=self.model, scoring=self.scoring)

    def with_spec(self, spec: ModelSpec) -> Settings:
        """These settings serving (or warm-starting from) a model of ``spec``: its window,
        architecture and scoring replace ours."""
        return self.model_copy(
            update={"window": spec.window, "model": spec.model, "scoring": spec.scoring}
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment is read by load_settings (stream_vae.config._env), which checks its
        # keys against the tree and passes the values in with the arguments.
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return (*sources, file_secret_settings)


# Keys that moved when the settings were split by who decides them (0.2): old → new section.
MOVED = {
    "window.idle_ttl_s": "service.idle_ttl_s",
    "window.max_series": "service.max_series",
    **{f"scoring.{k}": f"alerts.{k}" for k in ("hysteresis", "close_after", "cooldown", "top_k")},
    **{
        f"scoring.{k}": f"evaluation.{k}"
        for k in ("novelty_window", "novelty_peak_decay", "novelty_censor", "novelty_censor_runs")
    },
}


def format_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: ``window.size: Input should be ≥ 2 (got 0)``; a key that
    moved says where to (``window.idle_ttl_s: moved to service.idle_ttl_s ...``). The value is
    echoed only for a known field that holds no secret (not for ``kafka.sasl_password``, nor for
    a key that exists nowhere, which may be a secret's misspelt name)."""
    parts = []
    for err in exc.errors():
        loc = err["loc"]
        where = ".".join(str(p) for p in loc) or "settings"
        if where in MOVED:
            new = MOVED[where]
            parts.append(f"{where}: moved to {new} ({env_name(new)})")
            continue
        found, tp = field_at(Settings, loc)
        echo = found and not holds_secret(tp) and not isinstance(err.get("input"), dict)
        got = f" (got {err['input']!r})" if echo and "input" in err else ""
        parts.append(f"{where}: {err['msg']}{got}{_did_you_mean(loc) if not found else ''}")
    return "; ".join(parts)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`` (did you mean window.size?)`` for a key that exists nowhere but is close to one."""
    known = sorted(".".join(p) for p in paths(Settings) if len(p) == len(loc))
    close = difflib.get_close_matches(".".join(str(p) for p in loc), known, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def load_settings(
    toml_file: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the frozen settings tree, or raise :class:`ConfigError` with one readable line.

    ``env`` replaces the process environment (for tests); ``overrides`` win over everything,
    key by key (``service={"max_wait_ms": 20}`` leaves the environment's other service keys).
    """
    cls: type[Settings] = Settings
    if toml_file is not None:
        path = Path(toml_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        cls = type("FileSettings", (Settings,), {})
        cls.model_config = {**Settings.model_config, "toml_file": path}
    try:
        values = read_env(_process_env() if env is None else env, Settings, MOVED)
        return cls(**_merge(values, overrides))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except ValueError as exc:  # e.g. malformed TOML
        raise ConfigError(str(exc).splitlines()[0]) from None


def _process_env() -> dict[str, str]:
    """The process environment, as pydantic-settings reads it (names case-insensitive)."""
    return {k: v for k, v in EnvSettingsSource(Settings).env_vars.items() if v is not None}


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top`` section by section (a key of ``top`` wins)."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        out[k] = _merge(old, v) if isinstance(old, dict) and isinstance(v, dict) else v
    return out

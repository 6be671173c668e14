"""One settings tree for the whole product, split by who decides each part.

- **The model's** (:class:`ModelSpec`: ``window``, ``model``, ``scoring``): how windows are cut,
  the network, how the score is formed and calibrated. Fixed at training and stored in the
  artifact; a deployment serves a model as it was validated.
- **Training's** (``train``, ``retrain``): how a model is fitted and when it is retrained.
- **The deployment's** (``service``, ``alerts``, ``kafka``, ``drift``, ``registry``): bounds,
  threads, devices, episode shaping, topics. Changing them never needs a new model.
- **The evaluation's** (``evaluation``): the per-row stage NAB scores, off the product's path.

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
from typing import Any

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .. import _json
from ..errors import ConfigError
from .deployment import (
    AlertSettings,
    DriftSettings,
    KafkaSettings,
    RegistrySettings,
    ServiceSettings,
)
from .evaluation import EvaluationSettings
from .model import ModelSettings, ModelSpec, ScoringSettings, WindowSettings
from .training import RetrainSettings, TrainSettings

__all__ = [
    "AlertSettings",
    "DriftSettings",
    "EvaluationSettings",
    "KafkaSettings",
    "ModelSettings",
    "ModelSpec",
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
    # the deployment's
    service: ServiceSettings = ServiceSettings()
    alerts: AlertSettings = AlertSettings()
    kafka: KafkaSettings = KafkaSettings()
    drift: DriftSettings = DriftSettings()
    registry: RegistrySettings = RegistrySettings()
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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
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
    moved says where to (``window.idle_ttl_s: moved to service.idle_ttl_s ...``)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        if where in MOVED:
            new = MOVED[where]
            env = "STREAM_VAE_" + new.upper().replace(".", "__")
            parts.append(f"{where}: moved to {new} ({env})")
            continue
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

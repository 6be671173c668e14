"""stream-vae: streaming anomaly detection for telemetry with an LSTM variational autoencoder.

The public names below are imported on first use (PEP 562): ``import stream_vae`` and the
command line's ``--help`` stay fast, and torch loads only when a name that needs it is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .config import Settings, load_settings
    from .core.records import Record, RecordBatch, decode, encode
    from .core.windows import ReadyWindows, WindowStore
    from .demo.synthetic import Fleet, generate_fleet
    from .errors import (
        ArtifactError,
        ConfigError,
        DataError,
        RecordError,
        RegistryError,
        StreamVAEError,
    )
    from .lifecycle.drift import DriftEvent, DriftMonitor
    from .lifecycle.policy import RetrainPolicy
    from .lifecycle.reservoir import CleanReservoir
    from .model.detector import Detector
    from .model.vae import LSTMVAE, VAEConfig
    from .runtime.live import LiveModel
    from .runtime.stateless import score_table
    from .scoring import Alert, Scorer
    from .scoring.hybrid import roc_auc
    from .storage.artifact import Artifact
    from .storage.files import load_artifact, save_artifact
    from .storage.registry import Registry
    from .training.build import train_artifact
    from .training.fit import COLLAPSE_NATS, fit
    from .training.gate import retrain

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "Alert": ".scoring",
    "Artifact": ".storage.artifact",
    "ArtifactError": ".errors",
    "COLLAPSE_NATS": ".training.fit",
    "CleanReservoir": ".lifecycle.reservoir",
    "ConfigError": ".errors",
    "DataError": ".errors",
    "Detector": ".model.detector",
    "DriftEvent": ".lifecycle.drift",
    "DriftMonitor": ".lifecycle.drift",
    "Fleet": ".demo.synthetic",
    "LSTMVAE": ".model.vae",
    "LiveModel": ".runtime.live",
    "ReadyWindows": ".core.windows",
    "Record": ".core.records",
    "RecordBatch": ".core.records",
    "RecordError": ".errors",
    "Registry": ".storage.registry",
    "RegistryError": ".errors",
    "RetrainPolicy": ".lifecycle.policy",
    "Scorer": ".scoring",
    "Settings": ".config",
    "StreamVAEError": ".errors",
    "VAEConfig": ".model.vae",
    "WindowStore": ".core.windows",
    "decode": ".core.records",
    "encode": ".core.records",
    "fit": ".training.fit",
    "generate_fleet": ".demo.synthetic",
    "load_artifact": ".storage.files",
    "load_settings": ".config",
    "retrain": ".training.gate",
    "roc_auc": ".scoring.hybrid",
    "score_table": ".runtime.stateless",
    "save_artifact": ".storage.files",
    "train_artifact": ".training.build",
}

__all__ = [
    "COLLAPSE_NATS",
    "LSTMVAE",
    "Alert",
    "Artifact",
    "ArtifactError",
    "CleanReservoir",
    "ConfigError",
    "DataError",
    "Detector",
    "DriftEvent",
    "DriftMonitor",
    "Fleet",
    "LiveModel",
    "ReadyWindows",
    "Record",
    "RecordBatch",
    "RecordError",
    "Registry",
    "RegistryError",
    "RetrainPolicy",
    "Scorer",
    "Settings",
    "StreamVAEError",
    "VAEConfig",
    "WindowStore",
    "__version__",
    "decode",
    "encode",
    "fit",
    "generate_fleet",
    "load_artifact",
    "load_settings",
    "retrain",
    "roc_auc",
    "save_artifact",
    "score_table",
    "train_artifact",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

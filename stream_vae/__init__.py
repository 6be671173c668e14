"""stream-vae: streaming anomaly detection for telemetry with an LSTM variational autoencoder."""

from __future__ import annotations

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
from .scoring import Alert, Scorer
from .scoring.hybrid import roc_auc
from .storage.artifact import Artifact
from .storage.files import load_artifact, save_artifact
from .storage.registry import Registry
from .training.build import train_artifact
from .training.fit import COLLAPSE_NATS, fit
from .training.gate import retrain

__version__ = "0.1.0"

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
    "train_artifact",
]

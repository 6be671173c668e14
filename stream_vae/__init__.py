"""stream-vae: streaming anomaly detection for telemetry with an LSTM variational autoencoder."""

from __future__ import annotations

from .artifact import Artifact
from .config import Settings, load_settings
from .drift import DriftEvent, DriftMonitor
from .errors import (
    ArtifactError,
    ConfigError,
    DataError,
    RecordError,
    RegistryError,
    StreamVAEError,
)
from .inference import Detector
from .model import LSTMVAE, VAEConfig
from .pipeline import Pipeline
from .policy import RetrainPolicy
from .records import Record, RecordBatch, decode, encode
from .registry import Registry
from .reservoir import CleanReservoir
from .retrain import retrain
from .scoring import Alert, Scorer
from .scoring.hybrid import roc_auc
from .synthetic import Fleet, generate_fleet
from .trainer import train_artifact
from .training import COLLAPSE_NATS, fit
from .windows import ReadyWindows, WindowStore

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
    "Pipeline",
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
    "load_settings",
    "retrain",
    "roc_auc",
    "train_artifact",
]

"""stream-vae: streaming anomaly detection for telemetry with an LSTM variational autoencoder."""

from __future__ import annotations

from .artifact import Artifact
from .config import Settings, load_settings
from .errors import ArtifactError, ConfigError, DataError, RecordError, StreamVAEError
from .inference import Detector
from .model import LSTMVAE, VAEConfig
from .pipeline import Pipeline
from .records import Record, RecordBatch, decode, encode
from .scoring import Alert, Scorer
from .trainer import train_artifact
from .windows import ReadyWindows, WindowStore

__version__ = "0.1.0"

__all__ = [
    "LSTMVAE",
    "Alert",
    "Artifact",
    "ArtifactError",
    "ConfigError",
    "DataError",
    "Detector",
    "Pipeline",
    "ReadyWindows",
    "Record",
    "RecordBatch",
    "RecordError",
    "Scorer",
    "Settings",
    "StreamVAEError",
    "VAEConfig",
    "WindowStore",
    "__version__",
    "decode",
    "encode",
    "load_settings",
    "train_artifact",
]

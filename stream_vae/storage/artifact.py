"""One model version on disk: a directory with ``weights.pt`` and ``manifest.json``.

The weights are a plain ``state_dict`` loaded with ``weights_only=True`` (loading never runs code
from the file); everything else — feature names, scaler, score normalisers, α, the calibrated
threshold, window and scoring settings, training metrics, library versions — is JSON. The
version id is derived from the content, so the same model always has the same id (alert ids
depend on it).
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .. import _json
from ..config import ScoringSettings, WindowSettings
from ..core.scaler import Scaler
from ..core.windows import WindowStore
from ..errors import ArtifactError, ConfigError
from ..model.detector import Backend, Detector, OrtBackend, Precision, TorchBackend
from ..model.vae import LSTMVAE, VAEConfig, pick_device
from ..scoring.hybrid import HybridScore
from ..scoring.scorer import Scorer
from ..scoring.threshold import Calibration

__all__ = ["FORMAT_VERSION", "Artifact"]

FORMAT_VERSION = 1
_WEIGHTS, _MANIFEST = "weights.pt", "manifest.json"


@dataclass(frozen=True)
class Artifact:
    """Everything needed to score a stream the way the model was validated."""

    feature_names: tuple[str, ...]
    vae_config: VAEConfig
    state_dict: dict[str, torch.Tensor]
    scaler: Scaler
    hybrid: HybridScore
    calibration: Calibration
    window: WindowSettings
    scoring: ScoringSettings
    training: dict[str, Any] = field(default_factory=dict)  # settings and metrics
    parent: str | None = None  # version this one was warm-started from
    created_at: float = 0.0
    version: str = ""

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", self._content_version())

    def _content_version(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.state_dict):
            h.update(k.encode())
            h.update(self.state_dict[k].detach().cpu().contiguous().numpy().tobytes())
        h.update(
            _json.dumps(
                [
                    self.feature_names,
                    self.scaler.to_dict(),
                    self.hybrid.to_dict(),
                    self.calibration.to_dict(),
                ]
            )
        )
        return "v-" + h.hexdigest()[:12]

    @property
    def threshold(self) -> float:
        return float(self.calibration.threshold)

    # -- building the runtime parts -------------------------------------------------------
    def model(self) -> LSTMVAE:
        m = LSTMVAE(self.vae_config)
        m.load_state_dict(self.state_dict)
        return m.eval()

    def detector(
        self,
        device: str = "auto",
        *,
        backend: Literal["torch", "onnx"] = "torch",
        threads: int = 2,
        max_batch: int = 4096,
        precision: Precision = "fp32",
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> Detector:
        """The forward pass on ``device`` (torch), or on the CPU under ONNX Runtime.

        ``precision``, ``compile`` and ``cuda_graphs`` are :class:`TorchBackend`'s options
        (docs/operations.md, "GPU inference"); the onnx backend refuses them.
        """
        if backend == "onnx":
            if precision != "fp32" or compile or cuda_graphs:
                raise ConfigError(
                    "precision, compile and cuda_graphs apply to the torch backend only"
                )
            impl: Backend = self._onnx_backend(threads)
        else:
            impl = TorchBackend(
                self.model(),
                pick_device(device),
                precision=precision,
                compile=compile,
                cuda_graphs=cuda_graphs,
            )
        return Detector(
            impl,
            self.scaler,
            self.vae_config.window,
            recon_mode=self.scoring.recon_mode,
            latent_mode=self.scoring.latent_mode,
            max_batch=max_batch,
            n_context=self.window.n_context,
        )

    def _onnx_backend(self, threads: int) -> Backend:
        from .export import to_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = to_onnx(self.model(), Path(tmp) / "model.onnx")
            try:
                return OrtBackend(str(path), threads)  # the session holds the graph in memory
            except ImportError:
                raise ArtifactError(
                    "the onnx backend needs onnxruntime: pip install 'stream-vae[onnx]'"
                ) from None

    def scorer(self, scoring: ScoringSettings | None = None) -> Scorer:
        """A fresh per-series scorer; ``scoring`` may override episode settings (not the score)."""
        s = scoring or self.scoring
        return Scorer(
            self.hybrid,
            self.threshold,
            self.feature_names,
            self.version,
            ema_beta=self.scoring.ema_beta,
            hysteresis=s.hysteresis,
            close_after=s.close_after,
            cooldown=s.cooldown,
            top_k=s.top_k,
            novelty_window=self.scoring.novelty_window,
            novelty_peak_decay=self.scoring.novelty_peak_decay,
            novelty_censor=self.scoring.novelty_censor,
            novelty_censor_runs=self.scoring.novelty_censor_runs,
        )

    def window_store(self, window: WindowSettings | None = None) -> WindowStore:
        w = window or self.window
        if w.size != self.vae_config.window:
            raise ArtifactError(f"window size {w.size} != the model's {self.vae_config.window}")
        if w.calendar != self.window.calendar:
            raise ArtifactError(f"calendar {w.calendar} != the model's {self.window.calendar}")
        return WindowStore(
            w.size,
            len(self.feature_names),
            stride=w.stride,
            max_gap_s=w.max_gap_s,
            gap_policy=w.gap_policy,
            max_fill=w.max_fill,
            idle_ttl_s=w.idle_ttl_s,
            max_series=w.max_series,
            calendar=w.calendar,
        )

    def check_features(self, names: Sequence[str]) -> None:
        """Refuse data whose feature set differs from the model's (order may differ)."""
        have, want = list(names), list(self.feature_names)
        if set(have) != set(want):
            missing = [f for f in want if f not in have]
            extra = [f for f in have if f not in want]
            raise ArtifactError(
                f"feature mismatch with model {self.version}: missing {missing[:8]}, "
                f"unexpected {extra[:8]}"
            )

    # -- disk ------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "parent": self.parent,
            "created_at": self.created_at,
            "feature_names": list(self.feature_names),
            "model": self.vae_config.to_dict(),
            "scaler": self.scaler.to_dict(),
            "hybrid": self.hybrid.to_dict(),
            "calibration": self.calibration.to_dict(),
            "window": self.window.model_dump(),
            "scoring": self.scoring.model_dump(),
            "training": self.training,
            "libraries": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a temporary sibling directory renamed into place."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        art = self if self.created_at else replace(self, created_at=time.time())
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            buf = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in art.state_dict.items()}, buf)
            (tmp / _WEIGHTS).write_bytes(buf.getvalue())
            (tmp / _MANIFEST).write_bytes(_json.dumps(art.manifest(), indent=True))
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Artifact:
        """Load a model directory; never executes code from it."""
        root = Path(path)
        try:
            m = _json.loads((root / _MANIFEST).read_bytes())
        except FileNotFoundError:
            raise ArtifactError(f"not a model directory (no {_MANIFEST}): {root}") from None
        except _json.JSONDecodeError as exc:
            raise ArtifactError(f"corrupt manifest in {root}: {exc}") from None
        if m.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"unsupported artifact format {m.get('format_version')!r} in {root}"
            )
        try:
            state = torch.load(root / _WEIGHTS, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ArtifactError(f"model directory has no {_WEIGHTS}: {root}") from None
        except Exception as exc:  # torch raises unpickling, zip and runtime errors alike
            raise ArtifactError(
                f"unreadable weights in {root}: {str(exc).splitlines()[0]}"
            ) from None
        try:
            art = cls(
                feature_names=tuple(m["feature_names"]),
                vae_config=VAEConfig(**m["model"]),
                state_dict=state,
                scaler=Scaler.from_dict(m["scaler"]),
                hybrid=HybridScore.from_dict(m["hybrid"]),
                calibration=Calibration.from_dict(m["calibration"]),
                window=WindowSettings(**m["window"]),
                scoring=ScoringSettings(**_scoring_fields(m["scoring"])),
                training=m.get("training", {}),
                parent=m.get("parent"),
                created_at=float(m.get("created_at", 0.0)),
                version=m["version"],
            )
            art.model()  # the weights must fit the declared architecture
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"invalid model in {root}: {str(exc).splitlines()[0]}") from None
        return art


# Scoring settings that older artifacts carry and this version no longer has (ignored on load).
_RETIRED_SCORING = frozenset({"novelty_decay"})


def _scoring_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """An artifact's saved scoring settings, less the fields that have been retired."""
    return {k: v for k, v in saved.items() if k not in _RETIRED_SCORING}

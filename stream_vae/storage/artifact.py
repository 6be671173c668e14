"""One model version: its weights and the JSON manifest that says how to use them.

On disk (:mod:`stream_vae.storage.files`) a version is a directory with ``weights.pt`` and
``manifest.json``; this module is the format only, bytes in and out, with no file access. The
weights are a plain ``state_dict`` loaded with ``weights_only=True`` (loading never runs code from
them); everything else — feature names, scaler, score normalisers, α, the calibrated threshold,
the :class:`~stream_vae.config.ModelSpec` (windows, architecture, scoring), training metrics,
library versions — is JSON. The version id is derived from the content, so the same model always
has the same id (alert ids depend on it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import _json
from ..config.deployment import AlertSettings
from ..config.model import ModelSpec, ScoringSettings
from ..core.scaler import Scaler
from ..errors import ArtifactError
from ..model.vae import LSTMVAE, VAEConfig
from ..scoring.hybrid import HybridScore
from ..scoring.reference import REFERENCE_MODES, ScoreReference
from ..scoring.threshold import Calibration

__all__ = ["FORMAT_VERSION", "MANIFEST", "WEIGHTS", "Artifact"]

# 2: the manifest holds the model spec ("spec": window, model, scoring); 1 held "window" and
# "scoring" with the deployment's settings mixed in (read, those dropped).
log = logging.getLogger(__name__)

FORMAT_VERSION = 2
WEIGHTS, MANIFEST = "weights.pt", "manifest.json"
_REFERENCE = "reference."  # the prefix of the score reference's tensors in the weights file


@dataclass(frozen=True)
class Artifact:
    """Everything needed to score a stream the way the model was validated."""

    feature_names: tuple[str, ...]
    vae_config: VAEConfig
    state_dict: dict[str, torch.Tensor]
    scaler: Scaler
    hybrid: HybridScore
    calibration: Calibration
    spec: ModelSpec
    training: dict[str, Any] = field(default_factory=dict)  # settings and metrics
    parent: str | None = None  # version this one was warm-started from
    created_at: float = 0.0
    version: str = ""
    # What normal windows look like, for the latent modes "aggregate"/"knn" and the linear
    # residual; stored in the weights file under "reference.<name>" (plain tensors).
    reference: ScoreReference = field(default_factory=ScoreReference)

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", self._content_version())

    def _content_version(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.state_dict):
            h.update(k.encode())
            h.update(self.state_dict[k].detach().cpu().contiguous().numpy().tobytes())
        for k, v in sorted(self.reference.to_arrays().items()):  # none: the id reads as before
            h.update(f"{_REFERENCE}{k}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
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

    def model(self) -> LSTMVAE:
        m = LSTMVAE(self.vae_config)
        m.load_state_dict(self.state_dict)
        return m.eval()

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

    def serves_like(self, other: Artifact) -> str | None:
        """Why live windows cut for ``other`` cannot feed this model (None: they can): the
        features, the window size and the calendar must match."""
        if self.feature_names != other.feature_names:
            return "features differ"
        if self.vae_config.window != other.vae_config.window:
            return "window size differs"
        if self.spec.window.calendar != other.spec.window.calendar:
            return "calendar differs"
        return None

    # -- the format ------------------------------------------------------------------------
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
            "spec": self.spec.model_dump(mode="json"),
            "training": self.training,
            "libraries": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
        }

    def to_files(self) -> dict[str, bytes]:
        """The version as named byte strings (what :mod:`stream_vae.storage.files` writes)."""
        buf = io.BytesIO()
        tensors = {k: v.detach().cpu() for k, v in self.state_dict.items()}
        for k, v in self.reference.to_arrays().items():
            tensors[_REFERENCE + k] = torch.from_numpy(np.ascontiguousarray(v))
        torch.save(tensors, buf)
        return {WEIGHTS: buf.getvalue(), MANIFEST: _json.dumps(self.manifest(), indent=True)}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], where: str) -> Artifact:
        """Read what :meth:`to_files` wrote; never executes code from it. ``where`` names the
        source in errors."""
        try:
            m = _json.loads(files[MANIFEST])
        except KeyError:
            raise ArtifactError(f"not a model directory (no {MANIFEST}): {where}") from None
        except _json.JSONDecodeError as exc:
            raise ArtifactError(f"corrupt manifest in {where}: {exc}") from None
        if m.get("format_version") not in (1, FORMAT_VERSION):
            raise ArtifactError(
                f"unsupported artifact format {m.get('format_version')!r} in {where}"
            )
        try:
            state = torch.load(io.BytesIO(files[WEIGHTS]), map_location="cpu", weights_only=True)
        except KeyError:
            raise ArtifactError(f"model directory has no {WEIGHTS}: {where}") from None
        except Exception as exc:  # torch raises unpickling, zip and runtime errors alike
            raise ArtifactError(
                f"unreadable weights in {where}: {str(exc).splitlines()[0]}"
            ) from None
        try:
            if not isinstance(state, dict):
                raise TypeError(f"the weights file holds a {type(state).__name__}, not a dict")
            reference = {
                k.removeprefix(_REFERENCE): state.pop(k).numpy()
                for k in [k for k in state if str(k).startswith(_REFERENCE)]
            }
            art = cls(
                feature_names=tuple(m["feature_names"]),
                vae_config=VAEConfig(**m["model"]),
                state_dict=state,
                reference=ScoreReference.from_arrays(reference),
                scaler=Scaler.from_dict(m["scaler"]),
                hybrid=HybridScore.from_dict(m["hybrid"]),
                calibration=Calibration.from_dict(m["calibration"]),
                spec=_spec(m),
                training=m.get("training", {}),
                parent=m.get("parent"),
                created_at=float(m.get("created_at", 0.0)),
                version=m["version"],
            )
            _check_spec(art.spec, art.vae_config)
            _check_reference(art.spec, art.reference, art.hybrid)
            art.model()  # the weights must fit the declared architecture
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"invalid model in {where}: {str(exc).splitlines()[0]}") from None
        # The id is the content's: an edited threshold or scaler (or weights) served under the
        # original id would give alerts ids that belong to another model.
        content = art._content_version()
        if content != art.version:
            raise ArtifactError(
                f"model in {where} says it is {art.version} but its content is {content}: the "
                "manifest or the weights were changed after saving (retrain, or restore them)"
            )
        return art


def _check_reference(spec: ModelSpec, ref: ScoreReference, hybrid: HybridScore) -> None:
    if spec.scoring.latent_mode in REFERENCE_MODES and ref.latent is None:
        raise ValueError(f"latent_mode {spec.scoring.latent_mode} without a latent reference")
    if hybrid.has_linear != (ref.linear is not None):
        raise ValueError("the score's linear component and the linear reference disagree")
    if hybrid.has_repeats != (ref.repeats is not None):
        raise ValueError("the score's repeats term and the repeats reference disagree")
    if (spec.model.prior == "vamp") != (ref.prior is not None):
        raise ValueError("the model's prior and its stored prior components disagree")


def _check_spec(spec: ModelSpec, cfg: VAEConfig) -> None:
    arch = {k: getattr(cfg, k) for k in type(spec.model).model_fields}
    if spec.window.size != cfg.window or spec.model.model_dump() != arch:
        raise ValueError(f"the spec ({spec.window.size}, {spec.model}) != the network ({cfg})")


# Format 1 kept the episode shaping in the model's scoring settings; it is the deployment's
# `alerts` now: what such a model was trained with is said once, so that it can be kept.
_MOVED_TO_ALERTS = ("hysteresis", "close_after", "cooldown", "top_k")


def _spec(m: Mapping[str, Any]) -> ModelSpec:
    if m["format_version"] == FORMAT_VERSION:
        return ModelSpec.model_validate(m["spec"])
    # format 1: the window and scoring settings with the deployment's fields in them (series
    # bounds, episode shaping, the evaluation's novelty), which a model does not fix
    window = {k: v for k, v in m["window"].items() if k not in ("idle_ttl_s", "max_series")}
    scoring = {k: v for k, v in m["scoring"].items() if k in ScoringSettings.model_fields}
    defaults = AlertSettings()
    kept = {
        k: m["scoring"][k]
        for k in _MOVED_TO_ALERTS
        if k in m["scoring"] and m["scoring"][k] != getattr(defaults, k)
    }
    if kept:
        log.warning(
            "model %s (format 1) was trained with episode settings %s; episodes are the "
            "deployment's `alerts` settings now (STREAM_VAE_ALERTS__<KEY>): set them to keep them",
            m.get("version"),
            kept,
        )
    arch = {k: m["model"][k] for k in ("hidden", "latent", "layers", "gaussian_output", "dropout")}
    return ModelSpec.model_validate({"window": window, "model": arch, "scoring": scoring})

"""Batched forward passes: raw windows (n, W, d) → :class:`ScoreParts`.

One implementation of the score components for every backend: the backend returns the
reconstruction and the posterior parameters as numpy arrays, and :func:`score_parts` turns them
into per-feature errors and the latent term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch

from .errors import check_shape
from .model import LSTMVAE
from .scaler import Scaler
from .scoring.hybrid import ScoreParts

__all__ = ["Backend", "Detector", "OrtBackend", "TorchBackend", "score_parts"]

F32 = npt.NDArray[np.float32]
# (recon mean, recon log-variance or None, mu, logvar), each (n, W, d) or (n, k)
Outputs = tuple[F32, F32 | None, F32, F32]


class Backend(Protocol):
    """Runs the deterministic (z = μ) forward pass on scaled windows (n, W, d)."""

    def __call__(self, x: F32) -> Outputs: ...


class TorchBackend:
    """Eager PyTorch on CPU or CUDA."""

    def __init__(self, model: LSTMVAE, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, x: F32) -> Outputs:
        out = self.model(torch.from_numpy(x).to(self.device), sample=False)

        def cpu(t: torch.Tensor) -> F32:
            return t.float().cpu().numpy()

        lv = None if out.recon_logvar is None else cpu(out.recon_logvar)
        return cpu(out.recon), lv, cpu(out.mu), cpu(out.logvar)


class OrtBackend:
    """ONNX Runtime on the CPU, over a model exported by :func:`stream_vae.export.to_onnx`."""

    def __init__(self, onnx_path: str, threads: int = 2) -> None:
        import onnxruntime as ort  # optional extra: stream-vae[onnx]

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        self._names = [o.name for o in self._session.get_outputs()]

    def __call__(self, x: F32) -> Outputs:
        res = dict(zip(self._names, self._session.run(None, {"x": x}), strict=True))
        return res["recon"], res.get("recon_logvar"), res["mu"], res["logvar"]


def score_parts(
    x: F32,
    outputs: Outputs,
    recon_mode: Literal["window", "last"] = "window",
    latent_mode: Literal["kl", "prior_nll"] = "kl",
) -> ScoreParts:
    """Per-feature reconstruction error (n, d) and the latent term (n,) from one forward pass.

    ``recon_mode="window"`` averages the error over the window's points (it sees shape changes,
    not just the newest point); ``"last"`` uses the newest point only. With a Gaussian decoder
    the error is the per-point negative log-likelihood (without its constant).
    """
    recon, recon_lv, mu, logvar = outputs
    if recon_mode == "last":
        x, recon = x[:, -1:, :], recon[:, -1:, :]  # (n, 1, d): only the newest point counts
        recon_lv = None if recon_lv is None else recon_lv[:, -1:, :]
    # In place on one temporary: this runs on every window of the stream.
    err = np.subtract(x, recon)  # (n, W, d)
    np.square(err, out=err)
    if recon_lv is not None:
        err *= np.exp(-recon_lv)
        err += recon_lv
        err *= 0.5
    per_feature = err.mean(axis=1)  # (n, d)
    if latent_mode == "kl":
        latent = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).sum(axis=1)  # (n,)
    else:  # −log N(μ; 0, I)
        latent = 0.5 * (mu**2).sum(axis=1) + 0.5 * mu.shape[1] * math.log(2 * math.pi)
    return ScoreParts(per_feature.astype(np.float32), latent.astype(np.float32))


class Detector:
    """Scaler + backend + component settings: what scores one window, for any caller."""

    def __init__(
        self,
        backend: Backend | Callable[[F32], Outputs],
        scaler: Scaler,
        window: int,
        *,
        recon_mode: Literal["window", "last"] = "window",
        latent_mode: Literal["kl", "prior_nll"] = "kl",
        max_batch: int = 4096,
    ) -> None:
        self.backend = backend
        self.scaler = scaler
        self.window = window
        self.recon_mode = recon_mode
        self.latent_mode = latent_mode
        self.max_batch = max_batch

    @property
    def n_features(self) -> int:
        return int(self.scaler.mean.shape[0])

    def infer(self, windows: npt.NDArray[np.floating[Any]]) -> ScoreParts:
        """Score raw windows (n, W, d), in chunks of at most ``max_batch``."""
        check_shape("Detector.infer windows", windows.shape, (None, self.window, self.n_features))
        if len(windows) == 0:
            return ScoreParts(np.empty((0, self.n_features), np.float32), np.empty(0, np.float32))
        x = self.scaler.transform(windows)  # (n, W, d) float32
        chunks = [
            score_parts(c, self.backend(c), self.recon_mode, self.latent_mode)
            for c in (
                np.ascontiguousarray(x[i : i + self.max_batch])
                for i in range(0, len(x), self.max_batch)
            )
        ]
        return ScoreParts.concat(chunks)

"""Export a model version's deterministic forward pass (z = μ) to TorchScript and ONNX.

The exported graph maps scaled windows ``x`` (n, W, d) to ``recon`` (n, W, d), ``mu`` and
``logvar`` (n, k) (and ``recon_logvar`` for a Gaussian decoder); scaling and scoring stay in
Python, shared with the eager path (:func:`stream_vae.model.detector.score_parts`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..model.vae import LSTMVAE

__all__ = ["output_names", "to_onnx", "to_torchscript"]


class _Deterministic(nn.Module):
    """The scoring forward pass without the input check (traced graphs cannot branch on it)."""

    def __init__(self, model: LSTMVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        mu, logvar = self.model.encode(x)
        recon, recon_logvar = self.model.decode(mu)
        if recon_logvar is None:
            return recon, mu, logvar
        return recon, recon_logvar, mu, logvar


def output_names(model: LSTMVAE) -> list[str]:
    if model.config.gaussian_output:
        return ["recon", "recon_logvar", "mu", "logvar"]
    return ["recon", "mu", "logvar"]


def _example(model: LSTMVAE) -> Tensor:
    return torch.zeros(2, model.config.window, model.config.n_features)


def to_torchscript(model: LSTMVAE, path: str | Path) -> Path:
    """Trace to TorchScript (``torch.jit.load`` runs it without this package)."""
    wrapped = _Deterministic(model.cpu().eval())
    with warnings.catch_warnings():
        # torch marks tracing as deprecated in favour of torch.export; it remains the format
        # C++/LibTorch deployments load, and the parity test guards its output.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapped, _example(model))  # type: ignore[no-untyped-call]
    out = Path(path)
    traced.save(str(out))
    return out


def to_onnx(model: LSTMVAE, path: str | Path, opset: int = 17) -> Path:
    """Export to ONNX with a dynamic batch axis (the TorchScript-based exporter: no extra deps)."""
    wrapped = _Deterministic(model.cpu().eval())
    names = output_names(model)
    out = Path(path)
    with warnings.catch_warnings():
        # The exporter warns that LSTMs with batch != 1 may vary in sequence length; ours have a
        # fixed W, and the parity test checks other batch sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (_example(model),),
            str(out),
            input_names=["x"],
            output_names=names,
            dynamic_axes={"x": {0: "n"}, **{k: {0: "n"} for k in names}},
            opset_version=opset,
            dynamo=False,
        )
    return out

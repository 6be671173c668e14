"""Export a model version's deterministic forward pass (z = μ) to TorchScript and ONNX files.

The exported graph maps scaled windows ``x`` (n, W, d) to ``recon`` (n, W, d), ``mu`` and
``logvar`` (n, k) (and ``recon_logvar`` for a Gaussian decoder); scaling and scoring stay in
Python, shared with the eager path (:func:`stream_vae.model.detector.score_parts`). The ONNX graph
is the one the onnx backend runs (:func:`stream_vae.model.backends.onnx_graph`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..model.backends import Deterministic, example_input, onnx_graph
from ..model.vae import LSTMVAE

__all__ = ["to_onnx", "to_torchscript"]


def to_torchscript(model: LSTMVAE, path: str | Path) -> Path:
    """Trace to TorchScript (``torch.jit.load`` runs it without this package)."""
    wrapped = Deterministic(model.cpu().eval())
    with warnings.catch_warnings():
        # torch marks tracing as deprecated in favour of torch.export; it remains the format
        # C++/LibTorch deployments load, and the parity test guards its output.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapped, example_input(model))  # type: ignore[no-untyped-call]
    out = Path(path)
    traced.save(str(out))
    return out


def to_onnx(model: LSTMVAE, path: str | Path, opset: int = 17) -> Path:
    """Write the ONNX graph with a dynamic batch axis (needs the ``onnx`` package)."""
    out = Path(path)
    onnx_graph(model, str(out), opset)
    return out

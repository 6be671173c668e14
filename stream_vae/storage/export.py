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

from ..model.backends import Deterministic, example_input, onnx_graph, output_names
from ..model.vae import LSTMVAE

__all__ = ["to_onnx", "to_torchscript", "to_triton", "triton_config"]


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


# Triton's dynamic batcher: batches the scorer handles well on a GPU (docs/operations.md), and a
# short wait to form them (a stream's micro-batch is already large; this is for small callers).
TRITON_PREFERRED_BATCHES = (256, 1024, 4096)
TRITON_MAX_BATCH = 8192
TRITON_QUEUE_DELAY_US = 2000


def triton_config(model: LSTMVAE, name: str) -> str:
    """The ``config.pbtxt`` of the ONNX graph in a Triton model repository: one input ``x``
    (W, d) and the graph's outputs, with the batch axis Triton's (``max_batch_size``)."""
    c = model.config
    shapes = {"recon": [c.window, c.n_features], "recon_logvar": [c.window, c.n_features]}
    shapes |= {"mu": [c.latent], "logvar": [c.latent]}

    def tensor(n: str, dims: list[int]) -> str:
        return f'  {{\n    name: "{n}"\n    data_type: TYPE_FP32\n    dims: {dims}\n  }}'

    outputs = ",\n".join(tensor(n, shapes[n]) for n in output_names(model))
    preferred = [b for b in TRITON_PREFERRED_BATCHES if b <= TRITON_MAX_BATCH]
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {TRITON_MAX_BATCH}\n"
        f"input [\n{tensor('x', [c.window, c.n_features])}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: {preferred}\n"
        f"  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}\n"
        "}\n"
    )


def to_triton(model: LSTMVAE, repository: str | Path, name: str = "stream_vae") -> Path:
    """Write a Triton model repository: ``repository/name/config.pbtxt`` and
    ``repository/name/1/model.onnx`` (scaled windows in, the graph's outputs out; scaling and
    scoring stay with the caller, as for :func:`to_onnx`). Returns the model's directory."""
    root = Path(repository) / name
    (root / "1").mkdir(parents=True, exist_ok=True)
    to_onnx(model, root / "1" / "model.onnx")
    (root / "config.pbtxt").write_text(triton_config(model, name))
    return root

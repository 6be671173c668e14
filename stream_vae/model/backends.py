"""Backends: the deterministic (z = μ) forward pass on scaled windows (n, W, d) → numpy.

:class:`TorchBackend` runs the model on the CPU or CUDA (with the GPU path of
:mod:`stream_vae.model.gpu`: pinned staging, non-blocking copies, autocast, CUDA graphs,
``torch.compile``); :class:`OrtBackend` runs its ONNX graph (:func:`onnx_graph`) under ONNX
Runtime on the CPU.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from functools import cache
from typing import IO, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from ..errors import ConfigError, StreamVAEError
from .gpu import GraphRunner, HostStaging, to_host
from .vae import LSTMVAE, VAEOutput

__all__ = [
    "Backend",
    "Deterministic",
    "OrtBackend",
    "Outputs",
    "Precision",
    "TorchBackend",
    "cpu_bf16_lstm",
    "example_input",
    "int8_graph",
    "onnx_graph",
    "output_names",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
# (recon mean, recon log-variance or None, mu, logvar), each (n, W, d) or (n, k)
Outputs = tuple[F32, F32 | None, F32, F32]


class Backend(Protocol):
    """Runs the deterministic (z = μ) forward pass on scaled windows (n, W, d)."""

    def __call__(self, x: F32) -> Outputs: ...


Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    """PyTorch on CPU or CUDA; z = μ, in eval mode under ``inference_mode``.

    The defaults are the reference path: float32 and eager; on the CPU, zero-copy from numpy.
    On CUDA the input goes through a pinned :class:`HostStaging` buffer and an asynchronous
    copy, the LSTMs run as cuDNN kernels, the outputs come back through pinned buffers, and the
    host waits once per chunk. Options (docs/operations.md, "GPU inference"):

    * ``precision``: "bf16" or "fp16" runs the forward pass under autocast in that dtype; the
      outputs are cast back to float32. "fp16" needs CUDA: torch's CPU LSTM (oneDNN) has no
      float16 kernel. The parity bound against fp32 is checked in tests/test_gpu_path.py.
    * ``compile``: ``torch.compile`` the model; if compiling fails, a warning is logged and the
      backend stays eager.
    * ``cuda_graphs``: replay captured CUDA graphs, one per bucket size (:class:`GraphRunner`).

    One call at a time: the staging buffer and the graphs' static buffers are shared state (the
    service runs inference on a single worker thread).
    """

    def __init__(
        self,
        model: LSTMVAE,
        device: torch.device | str = "cpu",
        *,
        precision: Precision = "fp32",
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        self.device = torch.device(device)
        _check_options(self.device, precision, cuda_graphs)
        self.precision = precision
        self.model = model.to(self.device).eval()
        self._compiled: Callable[..., VAEOutput] | None = torch.compile(model) if compile else None
        # Graph capture records kernels: autocast's weight cache must not outlive one call.
        self._autocast_cache = not cuda_graphs
        self._staging: HostStaging | None = None
        self._graphs: GraphRunner | None = None
        if self.device.type == "cuda":
            # Shapes repeat (chunk sizes, graph buckets): cuDNN may time its candidate kernels
            # once per shape and keep the fastest. Process-wide; it does not touch the CPU.
            torch.backends.cudnn.benchmark = True
            row = (model.config.window, model.config.n_features)  # (W, d)
            self._staging = HostStaging(row, pin=True)
            if cuda_graphs:
                self._graphs = GraphRunner(self._forward, row, self.device)

    @torch.inference_mode()
    def __call__(self, x: F32) -> Outputs:
        if self._staging is None:  # CPU: zero-copy in, the outputs share torch's memory
            return _numpy_outputs(self.forward(torch.from_numpy(x)))
        return to_host(self.forward(self._staging.load(x)), self.device)  # via pinned (n, W, d)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> VAEOutput:
        """The forward pass on ``x`` (n, W, d), on the device or in pinned host memory.

        The outputs stay on the device (with CUDA graphs: views, valid until the next call).
        """
        if self._graphs is not None:
            return self._graphs(x)  # copies x into the graph's static input itself
        return self._forward(x.to(self.device, non_blocking=True))  # no-op when already there

    def _forward(self, x: torch.Tensor) -> VAEOutput:
        """The model on (n, W, d) already on the device, under autocast if ``precision`` asks."""
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return self._run_model(x)
        with torch.autocast(self.device.type, dtype=dtype, cache_enabled=self._autocast_cache):
            return self._run_model(x)

    def _run_model(self, x: torch.Tensor) -> VAEOutput:
        if self._compiled is not None:
            try:
                return self._compiled(x, sample=False)
            except StreamVAEError:  # our own errors (a bad shape) are not compile failures
                raise
            except Exception as exc:  # dynamo/inductor raise many types; eager re-raises real ones
                first = str(exc).splitlines()[0] if str(exc) else ""
                logger.warning(
                    "torch.compile failed on %s (%s: %s); running eager",
                    self.device,
                    type(exc).__name__,
                    first,
                )
                self._compiled = None
        return self.model(x, sample=False)  # type: ignore[no-any-return]


def _check_options(device: torch.device, precision: str, cuda_graphs: bool) -> None:
    if precision not in ("fp32", *_AUTOCAST_DTYPES):
        raise ConfigError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "fp16" and not cuda:
        raise ConfigError(
            f"precision fp16 needs a CUDA device, got {device}: torch's CPU LSTM has no float16 "
            "kernel (use bf16 on the CPU)"
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: {device} does not support bfloat16 (use fp16)")
    if precision == "bf16" and not cuda and not cpu_bf16_lstm():
        raise ConfigError(
            "precision bf16: this CPU has no bfloat16 LSTM kernel (torch's oneDNN needs "
            "AVX-512 BF16 or AMX; AVX2-only CPUs lack it): use fp32"
        )
    if cuda_graphs and not cuda:
        raise ConfigError(f"cuda_graphs needs a CUDA device, got {device}")


@cache
def cpu_bf16_lstm() -> bool:
    """Whether torch's CPU LSTM runs under bfloat16 autocast on this machine: oneDNN builds its
    kernel for the CPU's instruction set, and has none on some (an AVX2-only AMD EPYC raised
    "could not create a primitive descriptor" at the first batch). Tried once, on a tiny LSTM."""
    lstm = nn.LSTM(2, 2, batch_first=True)
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 2))
    except RuntimeError:
        return False
    return True


def _numpy_outputs(out: VAEOutput) -> Outputs:
    """CPU outputs as float32 numpy (no copy when they are float32 already)."""

    def cpu(t: torch.Tensor) -> F32:
        return t.float().cpu().numpy()

    lv = None if out.recon_logvar is None else cpu(out.recon_logvar)
    return cpu(out.recon), lv, cpu(out.mu), cpu(out.logvar)


class Deterministic(nn.Module):
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


def example_input(model: LSTMVAE) -> Tensor:
    return torch.zeros(2, model.config.window, model.config.n_features)  # (2, W, d)


def onnx_graph(model: LSTMVAE, out: str | IO[bytes], opset: int = 17) -> None:
    """Write the model's ONNX graph, with a dynamic batch axis, to a path or a binary stream
    (the TorchScript-based exporter: no extra deps)."""
    wrapped = Deterministic(model.cpu().eval())
    names = output_names(model)
    with warnings.catch_warnings():
        # The exporter warns that LSTMs with batch != 1 may vary in sequence length; ours have a
        # fixed W, and the parity test checks other batch sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example_input(model),),
            out,  # type: ignore[arg-type]  # the classic exporter also writes to a stream
            input_names=["x"],
            output_names=names,
            dynamic_axes={"x": {0: "n"}, **{k: {0: "n"} for k in names}},
            opset_version=opset,
            dynamo=False,
        )


def int8_graph(graph: bytes, reduce_range: bool = False) -> bytes:
    """``graph`` (:func:`onnx_graph`) with its LSTM and linear weights quantised to int8 by ONNX
    Runtime's dynamic quantisation (activations are quantised per call), in memory.
    ``reduce_range``: 7-bit weights, for x86 CPUs without VNNI, whose int8 kernels add pairs of
    products in 16 bits and can saturate (ONNX Runtime's advice; docs/operations.md)."""
    import onnx  # the onnx extra
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = io.BytesIO()  # written by onnx.save_model, which takes a stream as well as a path
    quantize_dynamic(
        onnx.load_from_string(graph),
        out,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )
    return out.getvalue()


class OrtBackend:
    """ONNX Runtime on the CPU, over a serialised ONNX graph (:func:`onnx_graph`)."""

    def __init__(self, graph: bytes, threads: int = 2) -> None:
        import onnxruntime as ort  # optional extra: stream-vae[onnx]

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        self._names = [o.name for o in self._session.get_outputs()]

    def __call__(self, x: F32) -> Outputs:
        res = dict(zip(self._names, self._session.run(None, {"x": x}), strict=True))
        return res["recon"], res.get("recon_logvar"), res["mu"], res["logvar"]

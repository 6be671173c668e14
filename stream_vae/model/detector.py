"""Batched forward passes: raw windows (n, W, d) → :class:`ScoreParts`.

One implementation of the score components for every backend: the backend returns the
reconstruction and the posterior parameters as numpy arrays, and :func:`score_parts` turns them
into per-feature errors and the latent term. :class:`TorchBackend` also carries the GPU path
(pinned staging, non-blocking copies, autocast, CUDA graphs, ``torch.compile``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import torch

from ..core.scaler import Scaler
from ..errors import ConfigError, StreamVAEError, check_shape
from ..scoring.hybrid import ScoreParts
from .vae import LSTMVAE, VAEOutput

__all__ = [
    "Backend",
    "Detector",
    "GraphRunner",
    "HostStaging",
    "OrtBackend",
    "Precision",
    "TorchBackend",
    "graph_bucket",
    "score_parts",
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
# Smallest captured batch: below a few hundred windows the GPU is mostly idle either way, and
# fewer buckets mean fewer graphs to capture and hold (see GraphRunner).
_MIN_GRAPH_BATCH = 256


def graph_bucket(n: int, smallest: int = _MIN_GRAPH_BATCH) -> int:
    """The batch size ``n`` windows are padded to: the next power of two, at least ``smallest``.

    >>> [graph_bucket(n) for n in (1, 256, 257, 5000)]
    [256, 256, 512, 8192]
    """
    return max(smallest, 1 << max(n - 1, 0).bit_length())


class HostStaging:
    """A reusable host buffer that input chunks are copied into on their way to the device.

    Pinned (page-locked) when ``pin``, so the host→device copy can run asynchronously
    (``non_blocking=True``) at full link speed. It grows to the next power of two rows when a
    larger chunk arrives and is reused otherwise. The caller must wait for the copy out of it
    (:class:`TorchBackend` syncs once per chunk) before the next :meth:`load`.
    """

    def __init__(self, row_shape: tuple[int, ...], *, pin: bool) -> None:
        self.row_shape = row_shape  # (W, d)
        self.pin = pin
        self._buf = torch.empty((0, *row_shape), dtype=torch.float32, pin_memory=pin)

    @property
    def capacity(self) -> int:
        return int(self._buf.shape[0])

    def load(self, x: F32) -> torch.Tensor:
        """Copy ``x`` (n, W, d) into the buffer; returns the (n, W, d) view that holds it."""
        check_shape("HostStaging.load x", x.shape, (None, *self.row_shape))
        n = len(x)
        if n > self.capacity:
            rows = graph_bucket(n, smallest=1)
            self._buf = torch.empty(
                (rows, *self.row_shape), dtype=torch.float32, pin_memory=self.pin
            )
        view = self._buf[:n]  # (n, W, d)
        view.copy_(torch.from_numpy(x))
        return view


class _Captured(NamedTuple):
    graph: torch.cuda.CUDAGraph | None  # None on the CPU: nothing to capture
    static_in: torch.Tensor  # (b, W, d)
    static_out: VAEOutput | None  # the graph's outputs, overwritten by each replay


class GraphRunner:
    """Replays one captured forward pass per bucket size; a chunk is padded to its bucket.

    A CUDA graph replays a fixed sequence of kernels on fixed buffers: no per-kernel launch
    cost, which at small batches dominates a W-step LSTM pass. A chunk of n windows runs in
    the graph of :func:`graph_bucket` (n): rows n.. of the static input keep what the previous
    chunk left there (finite; LSTM rows are independent) and their outputs are sliced off.
    Graphs are captured lazily, on a bucket's first use, each with its own memory pool; bucket
    sizes double, so all of them together hold under twice the activations of the largest.
    On the CPU nothing is captured and a "replay" runs the forward on the static buffer: the
    padding and slicing are the same, and that is what the CPU tests cover.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], VAEOutput],
        row_shape: tuple[int, ...],
        device: torch.device,
    ) -> None:
        self.forward = forward
        self.row_shape = row_shape  # (W, d)
        self.device = device
        self._captured: dict[int, _Captured] = {}

    @property
    def buckets(self) -> list[int]:
        return sorted(self._captured)

    def __call__(self, x: torch.Tensor) -> VAEOutput:
        """Outputs for ``x`` (n, W, d), host or device: views, valid until the next call."""
        n = int(x.shape[0])
        b = graph_bucket(n)
        cap = self._captured.get(b)
        if cap is None:
            cap = self._captured[b] = self._capture(b)
        cap.static_in[:n].copy_(x, non_blocking=True)  # (n, W, d) into (b, W, d)
        if cap.graph is None or cap.static_out is None:
            out = self.forward(cap.static_in)
        else:
            cap.graph.replay()
            out = cap.static_out
        lv = None if out.recon_logvar is None else out.recon_logvar[:n]
        return VAEOutput(out.recon[:n], lv, out.mu[:n], out.logvar[:n])  # (n, ...) each

    def _capture(self, b: int) -> _Captured:
        static_in = torch.zeros((b, *self.row_shape), dtype=torch.float32, device=self.device)
        if self.device.type != "cuda":
            return _Captured(None, static_in, None)
        # Warm up on a side stream first (cuDNN plans and workspaces, lazy init), as
        # torch.cuda.graphs asks: nothing may be allocated outside the pool during capture.
        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.forward(static_in)
        return _Captured(graph, static_in, static_out)


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
        return _to_host(self.forward(self._staging.load(x)), self.device)  # via pinned (n, W, d)

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
    if cuda_graphs and not cuda:
        raise ConfigError(f"cuda_graphs needs a CUDA device, got {device}")


def _numpy_outputs(out: VAEOutput) -> Outputs:
    """CPU outputs as float32 numpy (no copy when they are float32 already)."""

    def cpu(t: torch.Tensor) -> F32:
        return t.float().cpu().numpy()

    lv = None if out.recon_logvar is None else cpu(out.recon_logvar)
    return cpu(out.recon), lv, cpu(out.mu), cpu(out.logvar)


def _to_host(out: VAEOutput, device: torch.device) -> Outputs:
    """Device outputs → float32 numpy: async copies into pinned memory, then one sync.

    The pinned buffers come from torch's caching host allocator, so after the first batches no
    page-locking happens here, and each returned array owns its memory (no aliasing between
    calls, unlike the graph's static outputs).
    """

    def start(t: torch.Tensor) -> torch.Tensor:
        host = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(t.float(), non_blocking=True)  # cast on the device, then D2H
        return host

    recon, mu, logvar = start(out.recon), start(out.mu), start(out.logvar)
    lv = None if out.recon_logvar is None else start(out.recon_logvar)
    torch.cuda.current_stream(device).synchronize()  # the one wait per chunk
    return recon.numpy(), None if lv is None else lv.numpy(), mu.numpy(), logvar.numpy()


class OrtBackend:
    """ONNX Runtime on the CPU, over a model from :func:`stream_vae.storage.export.to_onnx`."""

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
        n_context: int = 0,
    ) -> None:
        self.backend = backend
        self.scaler = scaler
        self.window = window
        self.recon_mode = recon_mode
        self.latent_mode = latent_mode
        self.max_batch = max_batch
        # The windows' last channels are context (the calendar: stream_vae.core.windows), input to
        # the model but not data: their reconstruction error is not scored.
        self.n_context = n_context

    @property
    def n_features(self) -> int:
        """Channels per point of a window: the data's features, then the context."""
        return int(self.scaler.mean.shape[0])

    @property
    def n_values(self) -> int:
        """The data's features: what is scored and attributed (not the context)."""
        return self.n_features - self.n_context

    def encode(self, windows: npt.NDArray[np.floating[Any]]) -> tuple[F32, F32]:
        """The posterior of raw windows (n, W, d): μ and log σ², each (n, k) (the latent space
        the latent score is computed in; notebooks plot it)."""
        check_shape("Detector.encode windows", windows.shape, (None, self.window, self.n_features))
        _, _, mu, logvar = self.backend(np.ascontiguousarray(self.scaler.transform(windows)))
        return mu, logvar

    def infer(self, windows: npt.NDArray[np.floating[Any]]) -> ScoreParts:
        """Score raw windows (n, W, d), in chunks of at most ``max_batch``."""
        check_shape("Detector.infer windows", windows.shape, (None, self.window, self.n_features))
        if len(windows) == 0:
            return ScoreParts(np.empty((0, self.n_values), np.float32), np.empty(0, np.float32))
        x = self.scaler.transform(windows)  # (n, W, d) float32
        chunks = [
            score_parts(c, self.backend(c), self.recon_mode, self.latent_mode)
            for c in (
                np.ascontiguousarray(x[i : i + self.max_batch])
                for i in range(0, len(x), self.max_batch)
            )
        ]
        parts = ScoreParts.concat(chunks)
        if self.n_context:  # the data's features only
            values = np.ascontiguousarray(parts.recon_features[:, : self.n_values])
            return ScoreParts(values, parts.latent)
        return parts

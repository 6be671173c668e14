"""The CUDA side of the torch backend: pinned staging, captured graphs, device → host copies.

Nothing here runs on a CPU-only machine except :class:`GraphRunner`'s padding (its "replay"
runs the forward on the static buffer there, which is what the CPU tests cover).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from ..errors import check_shape
from .vae import VAEOutput

__all__ = ["GraphRunner", "HostStaging", "graph_bucket", "to_host"]

F32 = npt.NDArray[np.float32]
# (recon mean, recon log-variance or None, mu, logvar), each (n, W, d) or (n, k)
Outputs = tuple[F32, F32 | None, F32, F32]

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


def to_host(out: VAEOutput, device: torch.device) -> Outputs:
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

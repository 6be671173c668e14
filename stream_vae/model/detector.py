"""Batched scoring of raw windows: (n, W, d) → :class:`ScoreParts`.

One implementation of the score components for every backend: the backend
(:mod:`stream_vae.model.backends`) returns the reconstruction and the posterior parameters as
numpy arrays, and :func:`score_parts` turns them into per-feature errors and the latent term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from threadpoolctl import ThreadpoolController

from ..core.scaler import Scaler
from ..errors import check_shape
from ..scoring.hybrid import ScoreParts
from ..scoring.reference import REFERENCE_MODES, ScoreReference
from .backends import Backend, Outputs, TorchBackend
from .sampled import SAMPLED_MODES, sampled_term
from .vae import kl_per_dim, log_mixture, point_error

if TYPE_CHECKING:  # annotations only
    from ..config import ModelSpec

__all__ = ["MAX_BATCH", "MAX_SCALED", "Detector", "score_parts"]

F32 = npt.NDArray[np.float32]

# Most windows per forward pass unless a deployment asks for more: on the CPU larger chunks gain
# little and hold (n, W, hidden) activations; a service batch larger than this gets its own size.
MAX_BATCH = 4096
# A point this many standard deviations from its feature's mean is as anomalous as a score can
# say; beyond it float32 arithmetic overflows (a squared error of 1e20 is inf). Clipping here
# keeps every score finite, so an absurd but finite value alerts instead of crashing the loop.
MAX_SCALED = 1e6


LatentMode = Literal["kl", "prior_nll", "aggregate", "knn", "knn_whitened", "recon_prob", "iwae"]


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _one_blas_thread(
    reference: ScoreReference | None, latent_mode: str
) -> AbstractContextManager[Any]:
    """numpy's BLAS on one thread while the components that use it (the kNN term, the linear
    residual) run. Its threads spin for a while after each product, on the cores the forward
    pass's threads (torch's or ONNX Runtime's) want next: with both components on, model +
    scorer ran at 0.27-0.28 of the default scorer's rate at batch 256, and at 0.78-1.05 with
    one BLAS thread (``bench/core.py``, docs/results.md). Their products are small; one thread
    does them. (The limit is process-wide while it holds: only the scoring thread sets it.)"""
    if reference is None or (reference.linear is None and latent_mode not in REFERENCE_MODES):
        return nullcontext()
    limit: AbstractContextManager[Any] = _blas().limit(limits=1, user_api="blas")
    return limit


def score_parts(
    x: F32,
    outputs: Outputs,
    recon_mode: Literal["window", "last"] = "window",
    latent_mode: LatentMode = "kl",
    reference: ScoreReference | None = None,
    n_values: int | None = None,
) -> ScoreParts:
    """Per-feature reconstruction error (n, d), the latent term (n,) and, when ``reference``
    has a linear part, the linear residual (n,), from one forward pass of scaled windows ``x``.

    ``recon_mode="window"`` averages the error over the window's points (it sees shape changes,
    not just the newest point); ``"last"`` uses the newest point only. With a Gaussian decoder
    the error is the per-point negative log-likelihood (without its constant). ``"aggregate"``
    and the kNN modes need ``reference.latent``; the sampled modes need the model itself
    (:class:`Detector` adds them); ``n_values`` is the number of data channels (the
    rest are context, left out of the linear residual).
    """
    with _one_blas_thread(reference, latent_mode):
        return _score_parts(x, outputs, recon_mode, latent_mode, reference, n_values)


def _score_parts(
    x: F32,
    outputs: Outputs,
    recon_mode: Literal["window", "last"],
    latent_mode: LatentMode,
    reference: ScoreReference | None,
    n_values: int | None,
) -> ScoreParts:
    recon, recon_lv, mu, logvar = outputs
    linear = None
    if reference is not None and reference.linear is not None:
        data = x if n_values is None else x[:, :, :n_values]
        linear = reference.linear.residual(data.reshape(len(x), -1)).astype(np.float32)
    if recon_mode == "last":
        x, recon = x[:, -1:, :], recon[:, -1:, :]  # (n, 1, d): only the newest point counts
        recon_lv = None if recon_lv is None else recon_lv[:, -1:, :]
    per_feature = point_error(x, recon, recon_lv).mean(axis=1)  # (n, W, d) → (n, d)
    if latent_mode == "kl" and reference is not None and reference.prior is not None:
        # against a VampPrior the KL has no closed form: its integrand at z = μ,
        # log q(μ|x) − log p(μ)
        log_q = -0.5 * logvar.sum(axis=1) - 0.5 * mu.shape[1] * math.log(2 * math.pi)
        latent = log_q - log_mixture(mu, reference.prior.mu, reference.prior.logvar)
    elif latent_mode == "kl":
        latent = kl_per_dim(mu, logvar).sum(axis=1)  # (n, k) → (n,)
    elif latent_mode == "prior_nll":  # −log N(μ; 0, I)
        latent = 0.5 * (mu**2).sum(axis=1) + 0.5 * mu.shape[1] * math.log(2 * math.pi)
    elif latent_mode in SAMPLED_MODES:
        raise ValueError(f"latent_mode {latent_mode!r} samples the model: score with a Detector")
    else:
        if reference is None or reference.latent is None:
            raise ValueError(f"latent_mode {latent_mode!r} needs the model's latent reference")
        ref = reference.latent
        if latent_mode == "aggregate":
            latent = ref.mahalanobis(mu)
        else:
            latent = ref.knn(mu, whitened=latent_mode == "knn_whitened")
    return ScoreParts(per_feature.astype(np.float32), latent.astype(np.float32), linear)


class Detector:
    """Scaler + backend + component settings: what scores one window, for any caller."""

    def __init__(
        self,
        backend: Backend | Callable[[F32], Outputs],
        scaler: Scaler,
        window: int,
        *,
        recon_mode: Literal["window", "last"] = "window",
        latent_mode: LatentMode = "kl",
        max_batch: int = MAX_BATCH,
        n_context: int = 0,
        reference: ScoreReference | None = None,
        latent_samples: int = 16,
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
        # What normal windows look like (the latent modes "aggregate"/"knn*", the linear residual)
        self.reference = reference
        if latent_mode in REFERENCE_MODES and (reference is None or reference.latent is None):
            raise ValueError(f"latent_mode {latent_mode!r} needs the model's latent reference")
        self.latent_samples = latent_samples
        if latent_mode in SAMPLED_MODES and not isinstance(backend, TorchBackend):
            raise ValueError(f"latent_mode {latent_mode!r} decodes sampled codes: torch only")

    @classmethod
    def from_spec(
        cls,
        backend: Backend | Callable[[F32], Outputs],
        scaler: Scaler,
        spec: ModelSpec,
        max_batch: int = MAX_BATCH,
        reference: ScoreReference | None = None,
    ) -> Detector:
        """The detector of a model of ``spec`` (its window, calendar and score components) and
        its ``reference`` (what its latent and linear components measure against)."""
        return cls(
            backend,
            scaler,
            spec.window.size,
            recon_mode=spec.scoring.recon_mode,
            latent_mode=spec.scoring.latent_mode,
            max_batch=max_batch,
            n_context=spec.window.n_context,
            reference=reference,
            latent_samples=spec.scoring.latent_samples,
        )

    @property
    def n_features(self) -> int:
        """Channels per point of a window: the data's features, then the context."""
        return int(self.scaler.mean.shape[0])

    @property
    def n_values(self) -> int:
        """The data's features: what is scored and attributed (not the context)."""
        return self.n_features - self.n_context

    def scaled(self, windows: npt.NDArray[np.floating[Any]]) -> F32:
        """Scaled windows, clipped to ±``MAX_SCALED`` (a finite float32 value far out, e.g.
        1e20, would otherwise square to inf in the error and poison the series' EMA)."""
        x = self.scaler.transform(windows)  # (n, W, d) float32, a new array
        np.clip(x, -MAX_SCALED, MAX_SCALED, out=x)
        return x

    def encode(self, windows: npt.NDArray[np.floating[Any]]) -> tuple[F32, F32]:
        """The posterior of raw windows (n, W, d): μ and log σ², each (n, k) (the latent space
        the latent score is computed in; notebooks plot it)."""
        check_shape("Detector.encode windows", windows.shape, (None, self.window, self.n_features))
        _, _, mu, logvar = self.backend(np.ascontiguousarray(self.scaled(windows)))
        return mu, logvar

    def infer(self, windows: npt.NDArray[np.floating[Any]]) -> ScoreParts:
        """Score raw windows (n, W, d), in chunks of at most ``max_batch``."""
        check_shape("Detector.infer windows", windows.shape, (None, self.window, self.n_features))
        ref = self.reference
        repeats = None
        if ref is not None and ref.repeats is not None:  # exact repeats of the data's values
            repeats = ref.repeats.excess(windows[:, :, : self.n_values])
        if len(windows) == 0:
            empty = np.empty(0, np.float32)
            linear = None if ref is None or ref.linear is None else empty
            values = np.empty((0, self.n_values), np.float32)
            return ScoreParts(values, empty, linear, repeats=repeats)
        x = self.scaled(windows)  # (n, W, d) float32
        chunks = [
            self._chunk_parts(np.ascontiguousarray(x[i : i + self.max_batch]))
            for i in range(0, len(x), self.max_batch)
        ]
        parts = replace(ScoreParts.concat(chunks), repeats=repeats)
        if self.n_context:  # the data's features only
            values = np.ascontiguousarray(parts.recon_features[:, : self.n_values])
            expected = None if parts.expected is None else parts.expected[:, : self.n_values]
            return replace(parts, recon_features=values, expected=expected)
        return parts

    def _expected(self, recon: F32) -> F32:
        """The reconstruction of each window's newest point, back in the data's units: (n, c)."""
        last = recon[:, -1, :].astype(np.float32)  # (n, W, c) → (n, c)
        return last * self.scaler.std + self.scaler.mean

    def _chunk_parts(self, x: F32) -> ScoreParts:
        """The parts of one chunk of scaled windows (n, W, d)."""
        out = self.backend(x)
        expected = self._expected(out[0])
        if self.latent_mode not in SAMPLED_MODES:
            p = score_parts(
                x, out, self.recon_mode, self.latent_mode, self.reference, self.n_values
            )
            return ScoreParts(p.recon_features, p.latent, p.linear, expected)
        parts = score_parts(x, out, self.recon_mode, "kl", self.reference, self.n_values)
        backend = self.backend
        assert isinstance(backend, TorchBackend)  # checked in __init__
        latent = sampled_term(
            backend.model,
            torch.from_numpy(x).to(backend.device),
            self.latent_mode,  # type: ignore[arg-type]
            self.latent_samples,
        )
        latent_np = latent.float().cpu().numpy()
        return ScoreParts(parts.recon_features, latent_np, parts.linear, expected)

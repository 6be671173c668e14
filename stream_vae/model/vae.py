"""The LSTM variational autoencoder and its loss.

Encoder: an LSTM reads the window; its last hidden state gives μ and log σ² of q(z|x).
Decoder: z is repeated over the W time steps and an LSTM maps it back to the window (the mean,
and optionally a per-point log-variance for a Gaussian likelihood).

Examples
--------
>>> import torch
>>> m = LSTMVAE(VAEConfig(n_features=3, window=8, hidden=16, latent=4))
>>> out = m(torch.zeros(5, 8, 3))
>>> tuple(out.recon.shape), tuple(out.mu.shape)
((5, 8, 3), (5, 4))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from ..errors import ShapeError

A = TypeVar("A", Tensor, npt.NDArray[np.float32])

__all__ = [
    "LSTMVAE",
    "LossParts",
    "VAEConfig",
    "VAEOutput",
    "kl_per_dim",
    "log_mixture",
    "pick_device",
    "point_error",
    "vae_loss",
]


@dataclass(frozen=True, slots=True)
class VAEConfig:
    """Architecture of :class:`LSTMVAE` (stored in the artifact manifest)."""

    n_features: int  # d: channels per point
    window: int  # W: points per window
    hidden: int = 64  # LSTM width of encoder and decoder
    latent: int = 16  # k: size of z
    layers: int = 1
    gaussian_output: bool = False  # decoder also predicts log σ² per point → Gaussian NLL
    dropout: float = 0.0  # between stacked LSTM layers only (ignored when layers == 1)
    prior: str = "normal"  # "normal": N(0, I); "vamp": mixture of pseudo-window posteriors
    n_pseudo: int = 16  # K pseudo-windows (learned inputs, (K, W, d)) of the VampPrior

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VAEOutput(NamedTuple):
    recon: Tensor  # (n, W, d) decoder mean
    recon_logvar: Tensor | None  # (n, W, d) or None
    mu: Tensor  # (n, k)
    logvar: Tensor  # (n, k)


class LossParts(NamedTuple):
    total: Tensor  # scalar the optimiser sees
    recon: Tensor  # scalar, per point and feature
    kl: Tensor  # scalar, nats per window (before free bits)
    kl_per_dim: Tensor  # (k,) batch mean, nats


class LSTMVAE(nn.Module):
    """LSTM encoder → (μ, log σ²) → reparameterised z → LSTM decoder."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        drop = config.dropout if config.layers > 1 else 0.0
        self.encoder = nn.LSTM(
            config.n_features, config.hidden, config.layers, batch_first=True, dropout=drop
        )
        self.to_mu = nn.Linear(config.hidden, config.latent)
        self.to_logvar = nn.Linear(config.hidden, config.latent)
        self.decoder = nn.LSTM(
            config.latent, config.hidden, config.layers, batch_first=True, dropout=drop
        )
        n_out = config.n_features * (2 if config.gaussian_output else 1)
        self.to_out = nn.Linear(config.hidden, n_out)
        if config.prior not in ("normal", "vamp"):
            raise ValueError(f"prior must be 'normal' or 'vamp', got {config.prior!r}")
        self.pseudo: nn.Parameter | None = None
        if config.prior == "vamp":  # fit() starts them at training windows
            shape = (config.n_pseudo, config.window, config.n_features)
            self.pseudo = nn.Parameter(torch.randn(shape))  # (K, W, d)

    def prior_components(self) -> tuple[Tensor, Tensor] | None:
        """The VampPrior's components: μ and log σ² of the pseudo-windows' posteriors, (K, k)
        each; None for the N(0, I) prior."""
        return None if self.pseudo is None else self.encode(self.pseudo)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) for codes ``z`` (..., k) under the model's prior: (...)."""
        comps = self.prior_components()
        if comps is None:
            return -0.5 * (z**2).sum(dim=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
        return log_mixture(z, *comps)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, (h, _) = self.encoder(x)  # h: (layers, n, H)
        last = h[-1]  # (n, H)
        # Clamp log σ² so exp() stays finite on out-of-distribution windows.
        return self.to_mu(last), self.to_logvar(last).clamp(-12.0, 8.0)  # (n, k) each

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        seq = z.unsqueeze(1).expand(-1, self.config.window, -1)  # (n, W, k)
        h, _ = self.decoder(seq)  # (n, W, H)
        out = self.to_out(h)  # (n, W, d) or (n, W, 2d)
        if not self.config.gaussian_output:
            return out, None
        mean, logvar = out.chunk(2, dim=-1)  # (n, W, d) each
        return mean, logvar.clamp(-8.0, 8.0)

    def forward(self, x: Tensor, sample: bool | None = None) -> VAEOutput:
        """Reconstruct ``x`` of shape (n, W, d); z is sampled in training, z = μ otherwise."""
        if x.dim() != 3 or x.shape[1:] != (self.config.window, self.config.n_features):
            raise ShapeError(
                f"LSTMVAE input: expected (n, {self.config.window}, {self.config.n_features}), "
                f"got {tuple(x.shape)}"
            )
        mu, logvar = self.encode(x)
        use_sample = self.training if sample is None else sample
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if use_sample else mu  # (n, k)
        recon, recon_logvar = self.decode(z)
        return VAEOutput(recon, recon_logvar, mu, logvar)


# The ELBO's two terms, written once for the training loss (torch), the scores and the retrain
# gate (numpy).


def log_mixture(z: A, mu: A, logvar: A) -> A:
    """log of the equal-weight mixture of Gaussians N(μ_j, diag σ²_j) (mu, logvar: (K, k)) at
    ``z`` (..., k): (...). On numpy arrays too (the VampPrior's KL in the scores)."""
    d = z[..., None, :] - mu  # (..., K, k)
    if isinstance(d, Tensor):
        assert isinstance(logvar, Tensor)
        comp = -0.5 * (d**2 * torch.exp(-logvar) + logvar).sum(dim=-1)  # (..., K)
        log_k = math.log(mu.shape[0]) + 0.5 * mu.shape[1] * math.log(2 * math.pi)
        return torch.logsumexp(comp, dim=-1) - log_k
    comp_np = -0.5 * (d**2 * np.exp(-logvar) + logvar).sum(axis=-1)  # (..., K)
    top = comp_np.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(comp_np - top).sum(axis=-1)) + top[..., 0]
    return lse - math.log(mu.shape[0]) - 0.5 * mu.shape[1] * math.log(2 * math.pi)  # type: ignore[no-any-return]


def kl_per_dim(mu: A, logvar: A) -> A:
    """KL(q(z|x) ‖ N(0, I)) per window and latent dim, in nats: (n, k)."""
    exp = torch.exp if isinstance(logvar, Tensor) else np.exp
    return 0.5 * (mu**2 + exp(logvar) - 1.0 - logvar)


def point_error(x: A, recon: A, recon_logvar: A | None = None) -> A:
    """The reconstruction term per point and feature (n, W, d): the squared error, or with a
    Gaussian decoder the negative log-likelihood without its constant. On numpy arrays it works
    in place on one temporary (it runs on every window of the stream)."""
    if isinstance(x, Tensor):
        err = (x - recon).pow(2)
        return (
            err if recon_logvar is None else 0.5 * (recon_logvar + err * torch.exp(-recon_logvar))
        )
    out = np.subtract(x, recon)
    np.square(out, out=out)
    if recon_logvar is not None:
        out *= np.exp(-recon_logvar)
        out += recon_logvar
        out *= 0.5
    return out


def vae_loss(
    out: VAEOutput,
    x: Tensor,
    *,
    beta: float,
    free_bits: float = 0.0,
    log_prior: Callable[[Tensor], Tensor] | None = None,
) -> LossParts:
    """Reconstruction + β·KL, with free bits per latent dimension.

    The reconstruction term is the mean squared error, or the Gaussian negative log-likelihood
    when the decoder predicts a variance; both are per point and feature. The KL term is summed
    over latent dims (after clamping each dim's batch-mean KL at ``free_bits`` from below, so
    the optimiser gains nothing by pushing a dim under it) and divided by W·d to sit on the same
    per-point scale as the reconstruction.

    With ``log_prior`` (a VampPrior's log p(z)) the KL has no closed form: it is estimated from
    one code per window, log q(z|x) − log p(z), and free bits apply to its total (k·free_bits).
    ``kl_per_dim`` stays the KL to N(0, I) per dimension: how much each dimension is used.
    """
    recon = point_error(x, out.recon, out.recon_logvar).mean()
    kl_dims = kl_per_dim(out.mu, out.logvar).mean(0)  # (k,)
    kl = kl_dims.sum()
    if log_prior is not None:
        eps = torch.randn_like(out.mu)  # (n, k)
        z = out.mu + eps * torch.exp(0.5 * out.logvar)
        k = out.mu.shape[1]
        log_q = -0.5 * (eps**2 + out.logvar).sum(dim=1) - 0.5 * k * math.log(2 * math.pi)
        kl = (log_q - log_prior(z)).mean()
        kl_term = torch.clamp(kl, min=free_bits * k) if free_bits > 0 else kl
    elif free_bits > 0:
        kl_term = torch.clamp(kl_dims, min=free_bits).sum()
    else:
        kl_term = kl
    n_points = x.shape[1] * x.shape[2]
    total = recon + beta * kl_term / n_points
    return LossParts(total, recon.detach(), kl.detach(), kl_dims.detach())


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)

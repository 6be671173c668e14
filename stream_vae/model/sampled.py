"""The latent modes that sample z: the reconstruction probability and the importance-weighted
estimate of −log p(x).

Both draw ``S`` latent codes per window from q(z|x) and decode each (S decoder passes per
window, against one for the deterministic score), so they are offline modes — ablations and
evaluation — more than streaming ones:

* ``"recon_prob"`` — the expected reconstruction term under the posterior,
  E_q[−log p(x|z)] (An & Cho, 2015): with the Gaussian output head a negative log-likelihood,
  with the mean-only head the expected squared error. It asks "does this window decode back from
  anywhere its posterior puts mass", where the default asks it at z = μ only.
* ``"iwae"`` — −log p(x) by importance weighting (Burda et al., 2016):
  −log (1/S) Σ p(x|z_s) p(z_s) / q(z_s|x), under the model's prior (N(0, I) or its
  VampPrior). It needs the Gaussian output head: with the mean-only head p(x|z) has no scale
  and the estimate is not a likelihood.

The noise is drawn once, from a fixed seed, and shared by every window (common random numbers):
a window's score depends on that window only, not on the batch it arrives in, and the same
window always scores the same (to float rounding: how a matrix product is split over threads
depends on the batch's size).

Examples
--------
>>> import torch
>>> from stream_vae.model.vae import LSTMVAE, VAEConfig
>>> m = LSTMVAE(VAEConfig(n_features=2, window=6, hidden=8, latent=3, gaussian_output=True))
>>> x = torch.randn(4, 6, 2)
>>> a = sampled_term(m, x, "iwae", 8)
>>> tuple(a.shape), bool(torch.allclose(a[:2], sampled_term(m, x[:2], "iwae", 8), atol=1e-5))
((4,), True)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .vae import LSTMVAE, point_error

__all__ = ["SAMPLED_MODES", "SampledMode", "latent_noise", "sampled_term"]

SampledMode = Literal["recon_prob", "iwae"]
SAMPLED_MODES: tuple[str, ...] = ("recon_prob", "iwae")
_NOISE_SEED = 0


def latent_noise(n_samples: int, latent: int) -> Tensor:
    """The standard normal draws every window's codes are made from: (S, 1, k), the same on
    every call (z_s = μ + ε_s·σ)."""
    gen = torch.Generator().manual_seed(_NOISE_SEED)
    return torch.randn(n_samples, 1, latent, generator=gen)


@torch.inference_mode()
def sampled_term(model: LSTMVAE, x: Tensor, mode: SampledMode, n_samples: int) -> Tensor:
    """The ``mode`` term of scaled windows ``x`` (n, W, d) from ``n_samples`` codes each: (n,)."""
    if mode == "iwae" and not model.config.gaussian_output:
        raise ValueError("latent_mode 'iwae' needs the Gaussian output head (gaussian_output)")
    n, k = len(x), model.config.latent
    mu, logvar = model.encode(x)  # (n, k) each
    eps = latent_noise(n_samples, k).to(device=mu.device, dtype=mu.dtype)  # (S, 1, k)
    z = mu + eps * torch.exp(0.5 * logvar)  # (S, n, k)
    recon, recon_lv = model.decode(z.reshape(n_samples * n, k))  # (S·n, W, d)
    x_rep = x.unsqueeze(0).expand(n_samples, -1, -1, -1).reshape_as(recon)  # (S·n, W, d)
    # −log p(x|z) per window (without its constant), or the squared error with the mean head
    nll = point_error(x_rep, recon, recon_lv).sum(dim=(1, 2)).reshape(n_samples, n)  # (S, n)
    if mode == "recon_prob":
        return nll.mean(dim=0) / (x.shape[1] * x.shape[2])  # per point, like the recon error
    log_pz = model.log_prior(z)  # (S, n): N(0, I) or the VampPrior
    log_qz = -0.5 * (eps**2 + logvar).sum(dim=-1) - 0.5 * k * math.log(2 * math.pi)  # (S, n)
    log_w = -nll + log_pz - log_qz  # (S, n)
    return -(torch.logsumexp(log_w, dim=0) - math.log(n_samples))  # (n,)

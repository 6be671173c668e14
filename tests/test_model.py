from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stream_vae.config import ModelSettings, TrainSettings
from stream_vae.errors import ShapeError
from stream_vae.model.vae import LSTMVAE, VAEConfig, VAEOutput, kl_per_dim, vae_loss
from stream_vae.training.fit import fit


def test_shapes_and_deterministic_eval() -> None:
    torch.manual_seed(0)
    m = LSTMVAE(VAEConfig(n_features=3, window=10, hidden=8, latent=4, gaussian_output=True))
    x = torch.randn(6, 10, 3)
    m.eval()
    a, b = m(x), m(x)
    assert a.recon.shape == (6, 10, 3) and a.recon_logvar is not None
    assert a.mu.shape == (6, 4) and a.logvar.shape == (6, 4)
    assert torch.equal(a.recon, b.recon)  # z = μ outside training
    m.train()
    assert not torch.equal(m(x).recon, m(x).recon)  # sampled z in training


def test_wrong_input_shape_names_expected_and_actual() -> None:
    m = LSTMVAE(VAEConfig(n_features=3, window=10))
    with pytest.raises(ShapeError, match=r"expected \(n, 10, 3\), got \(2, 9, 3\)"):
        m(torch.zeros(2, 9, 3))


def test_kl_closed_form() -> None:
    mu = torch.tensor([[0.0, 1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    # KL(N(1, 4) || N(0, 1)) = 0.5 (1 + 4 - 1 - ln 4)
    expected = torch.tensor([[0.0, 0.5 * (1 + 4 - 1 - math.log(4.0))]])
    assert torch.allclose(kl_per_dim(mu, logvar), expected)


def test_loss_terms() -> None:
    x = torch.zeros(2, 4, 3)
    recon = torch.ones(2, 4, 3)
    mu = torch.zeros(2, 5)
    logvar = torch.zeros(2, 5)
    out = VAEOutput(recon, None, mu, logvar)
    parts = vae_loss(out, x, beta=1.0)
    assert parts.recon.item() == pytest.approx(1.0)
    assert parts.kl.item() == pytest.approx(0.0)
    # free bits: five dims each clamped up to 0.5 nats → 2.5 nats / (W·d = 12) added
    fb = vae_loss(out, x, beta=1.0, free_bits=0.5)
    assert fb.total.item() == pytest.approx(1.0 + 2.5 / 12)
    # Gaussian NLL with log σ² = 0: 0.5 · (0 + 1)
    g = vae_loss(VAEOutput(recon, torch.zeros_like(recon), mu, logvar), x, beta=0.0)
    assert g.recon.item() == pytest.approx(0.5)


def _sines(n: int, w: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(w)[None, :, None] + rng.uniform(0, 50, size=(n, 1, 1))
    freq = np.array([0.2, 0.35, 0.5][:d])[None, None, :]
    return (np.sin(t * freq) + 0.05 * rng.normal(size=(n, w, d))).astype(np.float32)


def test_training_lowers_the_loss_and_early_stops() -> None:
    train, val = _sines(512, 16, 3, 0), _sines(128, 16, 3, 1)
    res = fit(
        train,
        val,
        ModelSettings(hidden=24, latent=4),
        TrainSettings(epochs=12, batch_size=64, lr=5e-3, patience=3, kl_anneal_steps=50),
        progress=False,
    )
    first, best = res.history[0], res.history[res.best_epoch - 1]
    assert best.val_recon < 0.5 * first.val_recon
    assert best.val_recon < 0.25  # the data's variance is 0.5; a constant predictor scores that
    assert res.history[0].beta < 0.05  # KL annealing ramps β up from 0
    assert len(res.kl_per_dim) == 4
    m = res.metrics()
    assert m["best_epoch"] == res.best_epoch and m["epochs_run"] == len(res.history)
    # the per-epoch history travels with the metrics (into the artifact's manifest)
    assert [h["epoch"] for h in m["history"]] == list(range(1, len(res.history) + 1))
    assert m["history"][res.best_epoch - 1]["val_recon"] == m["val_recon"]
    assert m["history"][0]["beta"] == res.history[0].beta


def test_posterior_collapse_is_detected() -> None:
    # a huge β with no free bits pushes every latent dim to the prior
    train, val = _sines(512, 12, 2, 2), _sines(64, 12, 2, 3)
    settings = TrainSettings(
        epochs=10, batch_size=64, lr=1e-2, beta=500.0, free_bits=0.0, kl_anneal_steps=0, patience=20
    )
    res = fit(train, val, ModelSettings(hidden=8, latent=3), settings, progress=False)
    assert res.collapsed and res.metrics()["posterior_collapse"] is True
    assert max(res.kl_per_dim) < 0.01


def test_seeded_fits_are_identical() -> None:
    train, val = _sines(128, 8, 2, 4), _sines(32, 8, 2, 5)
    cfg = TrainSettings(epochs=2, batch_size=32, seed=7)
    a = fit(train, val, ModelSettings(hidden=8, latent=2), cfg, progress=False)
    b = fit(train, val, ModelSettings(hidden=8, latent=2), cfg, progress=False)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])


def test_warm_start_begins_where_the_model_was() -> None:
    train, val = _sines(512, 16, 3, 6), _sines(128, 16, 3, 7)
    ms = ModelSettings(hidden=24, latent=4)
    base = fit(
        train, val, ms, TrainSettings(epochs=12, batch_size=64, lr=5e-3, patience=3), progress=False
    )
    one_epoch = TrainSettings(epochs=1, batch_size=64, lr=1e-4)
    warm = fit(train, val, ms, one_epoch, init_state=base.model.state_dict(), progress=False)
    cold = fit(train, val, ms, one_epoch, progress=False)
    assert warm.history[0].val_recon < 0.5 * cold.history[0].val_recon

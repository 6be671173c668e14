"""The score components measured against normal windows (issue 17): the tail normaliser, the
latent reference (aggregate posterior: Gaussian and nearest neighbours), the linear residual,
the three-way weights and their storage in the artifact: hand-made cases; and one small model
trained on a generated fleet with every component on."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from threadpoolctl import threadpool_info

from stream_vae.config import ModelSpec, load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.core.scaler import Scaler
from stream_vae.demo.synthetic import KINDS, generate_fleet
from stream_vae.errors import ArtifactError, ConfigError
from stream_vae.model.backends import TorchBackend
from stream_vae.model.detector import Detector
from stream_vae.model.sampled import latent_noise, sampled_term
from stream_vae.model.vae import LSTMVAE, VAEConfig, log_mixture
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.scoring.alpha import choose_weights, weight_grid
from stream_vae.scoring.hybrid import HybridScore, ScoreParts, roc_auc
from stream_vae.scoring.normalise import TailNormaliser
from stream_vae.scoring.reference import (
    KNN_K,
    LatentReference,
    LinearReference,
    RepeatsReference,
    ScoreReference,
)
from stream_vae.storage.artifact import _check_reference
from stream_vae.storage.files import load_artifact, save_artifact
from stream_vae.training.build import train_artifact

from .conftest import TinyModel


def test_tail_normaliser_is_a_monotone_surprise_with_an_exponential_tail() -> None:
    rng = np.random.default_rng(0)
    t = TailNormaliser().fit(rng.exponential(2.0, size=5000))
    x = np.linspace(-1.0, 60.0, 2000)
    y = t.transform(x)
    assert (np.diff(y) >= -1e-12).all()  # monotone
    assert y[0] == 0.0 and (y >= 0).all()  # below every normal value: no surprise at all
    # the 90th percentile is ~2.3 nats (P = 0.1) from either side: no jump where the tail starts
    u = float(np.quantile(rng.exponential(2.0, 5000), 0.9))
    below, above = t.transform(np.array([u - 1e-3, u + 1e-3]))
    assert below == pytest.approx(np.log(10), abs=0.1) and above - below < 0.01
    # beyond the data an exponential tail: linear in x, slope 1/mean excess (2 for Exp(mean 2))
    far = t.transform(np.array([40.0, 50.0]))
    assert far[1] - far[0] == pytest.approx(10 / 2.0, rel=0.1)
    back = TailNormaliser.from_dict(t.to_dict())
    assert np.array_equal(back.transform(x), y)
    with pytest.raises(ValueError, match="finite"):
        TailNormaliser().fit(np.array([1.0, np.inf]))


def test_knn_latent_term_sees_the_gap_between_two_normal_clusters() -> None:
    """Normal windows in two modes: the midpoint is as typical as it gets for one Gaussian
    (Mahalanobis), and far from every normal window for the nearest neighbours."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 2)) * 0.3 + [-3.0, 0.0]
    b = rng.normal(size=(400, 2)) * 0.3 + [3.0, 0.0]
    ref = LatentReference.fit(np.concatenate([a, b]), rng)
    queries = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    knn, maha = ref.knn(queries), ref.mahalanobis(queries)
    assert knn[2] > 10 * max(knn[0], knn[1])
    assert maha[2] < min(maha[0], maha[1])
    assert ref.points.shape == (800, 2) and ref.points.dtype == np.float32


def test_whitened_knn_counts_a_dimension_by_its_normal_spread_not_its_scale() -> None:
    """Normal μ spread 10 along dimension 0 and 0.1 along dimension 1. A point at 50 along
    dimension 0 is 21 units from its neighbours and ~2 of dimension 0's spreads; a point at 2
    along dimension 1 is 2 units off but many of dimension 1's spreads (its variance is floored
    by the reference's ridge, 1e-3 of the mean variance). The plain kNN ranks the first as the
    more anomalous, the whitened one the second."""
    rng = np.random.default_rng(5)
    mu = rng.normal(size=(2000, 2)) * [10.0, 0.1]
    ref = LatentReference.fit(mu, rng)
    queries = np.array([[50.0, 0.0], [0.0, 2.0]])
    plain, white = ref.knn(queries), ref.knn(queries, whitened=True)
    assert plain[0] > 5 * plain[1]
    assert white[1] > 2 * white[0]
    # by definition: the mean Mahalanobis distance, under the reference's precision, to the k
    # nearest reference points
    diff = queries[:, None, :] - ref.points[None, :, :].astype(np.float64)  # (2, m, 2)
    dist = np.sqrt(np.einsum("qmi,ij,qmj->qm", diff, ref.precision, diff))
    np.testing.assert_allclose(white, np.sort(dist, axis=1)[:, :KNN_K].mean(axis=1), rtol=1e-4)


def test_a_latent_dimension_the_model_does_not_use_stays_finite() -> None:
    mu = np.zeros((100, 3))
    mu[:, 0] = np.random.default_rng(2).normal(size=100)  # dims 1 and 2 collapsed to 0
    ref = LatentReference.fit(mu, np.random.default_rng(0))
    assert np.isfinite(ref.mahalanobis(np.array([[0.0, 1.0, 0.0]]))).all()


def test_linear_residual_is_zero_on_the_normal_subspace_and_grows_off_it() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(1000, 2))
    mixing = rng.normal(size=(2, 6))  # six channels driven by two factors
    ref = LinearReference.fit(z @ mixing, 0.999, rng)
    assert ref.basis.shape == (2, 6)
    inside = rng.normal(size=(5, 2)) @ mixing
    broken = inside.copy()
    broken[:, 0] += 3.0  # one channel stops following the others
    # zero up to float32's rounding of |c|² (the residual is |c|² − |B·c|²)
    assert ref.residual(inside).max() < 1e-6
    assert ref.residual(broken).min() > 1.0


def test_knn_and_residual_equal_a_direct_computation_and_leave_blas_threads_as_they_were() -> None:
    """The fast paths (a partition in place, the residual's squares in place, numpy's BLAS on
    one thread while they run) compute what the definitions say, and the thread limit is
    lifted after each batch."""
    rng = np.random.default_rng(4)
    ref = LatentReference.fit(rng.normal(size=(3000, 5)), rng)
    q = rng.normal(size=(1500, 5)).astype(np.float32)  # more than one chunk of queries
    dist = np.sqrt(((q[:, None, :] - ref.points[None, :, :]) ** 2).sum(axis=2))
    direct = np.sort(dist, axis=1)[:, :KNN_K].mean(axis=1)
    np.testing.assert_allclose(ref.knn(q), direct, rtol=1e-4, atol=1e-5)

    x = rng.normal(size=(400, 24))
    lin = LinearReference.fit(x, 0.6, rng)
    c = x.astype(np.float32) - lin.centre
    off = c - (c @ lin.basis.T) @ lin.basis
    np.testing.assert_allclose(
        lin.residual(x), (off.astype(np.float64) ** 2).mean(axis=1), rtol=1e-5
    )

    blas = threadpool_info_blas()
    torch.manual_seed(0)
    model = LSTMVAE(VAEConfig(n_features=3, window=8, hidden=8, latent=5)).eval()
    det = Detector(
        TorchBackend(model),
        Scaler(np.zeros(3, np.float32), np.ones(3, np.float32)),
        8,
        latent_mode="knn",
        reference=ScoreReference(ref),
    )
    parts = det.infer(rng.normal(size=(20, 8, 3)).astype(np.float32))
    assert np.isfinite(parts.latent).all()
    assert threadpool_info_blas() == blas


def threadpool_info_blas() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def _parts(rng: np.random.Generator, n: int, shift: tuple[float, float, float]) -> ScoreParts:
    return ScoreParts(
        (rng.random((n, 2)) + shift[0]).astype(np.float32),
        (rng.random(n) + shift[1]).astype(np.float32),
        (rng.random(n) + shift[2]).astype(np.float32),
    )


def test_weights_go_to_the_component_that_separates_the_faults() -> None:
    rng = np.random.default_rng(4)
    clean = _parts(rng, 500, (0.0, 0.0, 0.0))
    corrupt = _parts(rng, 500, (0.0, 0.0, 0.8))  # only the linear residual moves
    h = HybridScore(normaliser="tail").fit(clean)
    assert h.has_linear
    weights, aucs = choose_weights(h, clean, corrupt)
    # the linear residual carries it; reconstruction keeps what a tie (0.01 of AUC) allows
    assert weights[2] == max(weights) >= 0.75 and weights[1] == 0.0
    assert aucs[weights] > 0.9 and aucs[weights] >= max(aucs.values()) - 0.01
    assert len(aucs) == len(weight_grid(3)) == 15
    # a tie goes to reconstruction
    same, _ = choose_weights(h, clean, clean)
    assert same[0] == 1.0


def test_hybrid_weights_round_trip_and_old_models_read_as_before() -> None:
    rng = np.random.default_rng(5)
    parts = _parts(rng, 200, (0.0, 0.0, 0.0))
    h = HybridScore(normaliser="tail", weights=(0.25, 0.25, 0.5)).fit(parts)
    back = HybridScore.from_dict(h.to_dict())
    assert back.weights == (0.25, 0.25, 0.5) and back.has_linear
    assert np.array_equal(back.raw(parts).raw, h.raw(parts).raw)
    # two components: the dict is the one models were saved with before the weights existed
    two = HybridScore(alpha=0.75).fit(ScoreParts(parts.recon_features, parts.latent))
    d = two.to_dict()
    assert "weights" not in d and "linear_norm" not in d and d["alpha"] == 0.75
    assert HybridScore.from_dict(d).weights == (0.75, 0.25, 0.0)
    with pytest.raises(ValueError, match="linear"):
        h.raw(ScoreParts(parts.recon_features, parts.latent))
    with pytest.raises(ValueError, match="sum"):
        HybridScore(weights=(0.5, 0.5, 0.5))


def test_a_reference_is_stored_with_the_weights_and_checked_on_load(
    tiny: TinyModel, tmp_path: Path
) -> None:
    art = load_artifact(tiny.model_dir)
    rng = np.random.default_rng(6)
    k = art.vae_config.latent
    w, d = art.vae_config.window, len(art.feature_names)
    ref = ScoreReference(
        LatentReference.fit(rng.normal(size=(300, k)), rng),
        LinearReference.fit(rng.normal(size=(300, w * d)), 0.9, rng),
    )
    spec = art.spec.model_copy(
        update={"scoring": art.spec.scoring.model_copy(update={"latent_mode": "knn"})}
    )
    windows = rng.normal(size=(50, w, d)).astype(np.float32)
    probe = Detector.from_spec(TorchBackend(art.model(), "cpu"), art.scaler, spec, reference=ref)
    hybrid = HybridScore(normaliser="tail").fit(probe.infer(windows))
    with_ref = replace(art, spec=spec, reference=ref, hybrid=hybrid, version="")
    assert with_ref.version != art.version  # the reference is part of the content
    save_artifact(with_ref, tmp_path / "m")
    loaded = load_artifact(tmp_path / "m")
    assert loaded.version == with_ref.version
    assert loaded.reference.latent is not None and loaded.reference.linear is not None
    assert np.array_equal(loaded.reference.latent.points, ref.latent.points)  # type: ignore[union-attr]
    assert np.array_equal(loaded.reference.linear.basis, ref.linear.basis)  # type: ignore[union-attr]
    # a model whose score needs a reference it does not have is refused on load
    stripped = replace(with_ref, reference=ScoreReference(), version="")
    save_artifact(stripped, tmp_path / "bad")
    with pytest.raises(ArtifactError, match="reference"):
        load_artifact(tmp_path / "bad")
    with pytest.raises(ValueError, match="latent reference"):
        Detector.from_spec(TorchBackend(art.model(), "cpu"), art.scaler, spec)


def test_the_hybrid_is_as_good_as_its_best_component_on_a_generated_fleet() -> None:
    """Every component on, weights chosen without labels (synthetic faults on validation
    windows): on the real injected faults the hybrid ranks windows at least as well as the best
    of its three components alone."""
    fleet = generate_fleet(8, 4, 900, seed=11, anomaly_start=550, n_anomalies_per_series=2)
    train, test = fleet.split(550)
    settings = load_settings(
        env={},
        window={"size": 16},
        model={"hidden": 32, "latent": 8},
        train={"epochs": 12, "batch_size": 64, "lr": 3e-3, "torch_threads": 1},
        scoring={"latent_mode": "knn", "normaliser": "tail", "linear_variance": 0.95},
    )
    sids, ts, values, _ = train.interleaved()
    art = train_artifact(RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings,
                         device="cpu", progress=False)  # fmt: skip
    assert art.hybrid.has_linear and art.reference.latent is not None
    assert sum(art.hybrid.weights) == pytest.approx(1.0)
    assert len(art.training["metrics"]["weights_auc"]) == 15
    sids, ts, values, labels = test.interleaved()
    out = list(LiveModel(art, DetectorOptions(device="cpu")).stream(
        RecordBatch(tuple(sids), ts, values), 500))  # fmt: skip
    keys = [k for o in out for k in o.keys]
    row_of = {(s, t): i for i, (s, t) in enumerate(zip(sids, ts, strict=True))}
    bad = np.array([labels[row_of[(k, t)]] for o in out for k, t in zip(o.keys, o.ts, strict=True)])
    assert len(keys) == len(bad) and 0 < bad.sum() < len(bad)
    auc = {
        name: roc_auc(col[~bad], col[bad])
        for name, col in (
            ("hybrid", np.concatenate([o.raw for o in out])),
            ("recon", np.concatenate([o.recon for o in out])),
            ("latent", np.concatenate([o.latent for o in out])),
            ("linear", np.concatenate([o.linear for o in out if o.linear is not None])),
        )
    }
    print(f"weights {art.hybrid.weights}; ROC-AUC {auc}")
    best = max(v for k, v in auc.items() if k != "hybrid")
    assert auc["hybrid"] >= best - 0.01, auc


# ------------------------------------------------------------- the latent modes that sample z


def _gaussian_model(seed: int = 0) -> LSTMVAE:
    torch.manual_seed(seed)
    return LSTMVAE(VAEConfig(n_features=3, window=8, hidden=16, latent=4, gaussian_output=True))


def test_iwae_is_the_importance_weighted_likelihood_written_with_torch_distributions() -> None:
    """The same estimate from the textbook densities (normal prior, Gaussian posterior and
    decoder, with their constants): equal up to the decoder's constant, which the score omits."""
    from torch.distributions import Normal

    m, n_samples = _gaussian_model().eval(), 32
    x = torch.randn(5, 8, 3)
    with torch.no_grad():
        mu, logvar = m.encode(x)  # (n, k)
        z = mu + latent_noise(n_samples, 4) * torch.exp(0.5 * logvar)  # (S, n, k)
        mean, lv = m.decode(z.reshape(-1, 4))  # (S·n, W, d)
        assert lv is not None
        log_px = Normal(mean, torch.exp(0.5 * lv)).log_prob(x.repeat(n_samples, 1, 1))
        log_w = (
            log_px.sum(dim=(1, 2)).reshape(n_samples, 5)
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
        )
        expected = -(torch.logsumexp(log_w, 0) - math.log(n_samples))
    got = sampled_term(m, x, "iwae", n_samples)
    constant = 0.5 * 8 * 3 * math.log(2 * math.pi)
    torch.testing.assert_close(got, expected - constant, rtol=1e-5, atol=1e-4)


def test_recon_prob_with_a_certain_posterior_is_the_error_at_the_mean() -> None:
    """σ → 0 (log σ² at its floor): every sampled code is μ, and the reconstruction probability
    is the deterministic score's per-point error."""
    m = _gaussian_model()
    x = torch.randn(6, 8, 3)
    with torch.no_grad():
        m.to_logvar.weight.zero_()
        m.to_logvar.bias.fill_(-30.0)  # clamped to −12: σ = 0.0025
        out = m.eval()(x, sample=False)
        at_mean = 0.5 * (out.recon_logvar + (x - out.recon) ** 2 * torch.exp(-out.recon_logvar))
        narrow = sampled_term(m, x, "recon_prob", 16)
        torch.testing.assert_close(narrow, at_mean.mean(dim=(1, 2)), rtol=1e-3, atol=1e-4)


def test_sampled_modes_need_the_model_and_iwae_needs_a_variance() -> None:
    with pytest.raises(ValidationError, match="gaussian_output"):
        ModelSpec.model_validate({"scoring": {"latent_mode": "iwae"}})
    ModelSpec.model_validate({"scoring": {"latent_mode": "recon_prob"}})  # mean head: an error
    with pytest.raises(ValueError, match="Gaussian output head"):
        sampled_term(LSTMVAE(VAEConfig(3, 8, 16, 4)), torch.zeros(1, 8, 3), "iwae", 4)
    scaler = Scaler(np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="torch only"):  # a plain callable: no model to sample
        Detector(lambda x: (x, None, x[:, 0], x[:, 0]), scaler, 8, latent_mode="recon_prob")


def test_sampled_modes_rank_injected_faults_on_a_generated_fleet() -> None:
    """A small Gaussian-head model: each sampled mode alone ranks the windows that faults fill
    above normal ones at least as well as the error at z = μ (ROC-AUC 0.68 recon_prob, 0.71
    iwae, 0.68 at μ here), and the scores do not depend on how the windows are batched."""
    fleet = generate_fleet(6, 3, 700, seed=5, anomaly_start=450, n_anomalies_per_series=2)
    train, test = fleet.split(450)
    settings = load_settings(
        env={},
        window={"size": 12},
        model={"hidden": 24, "latent": 6, "gaussian_output": True},
        train={"epochs": 10, "batch_size": 64, "lr": 3e-3, "torch_threads": 1},
        scoring={"latent_mode": "iwae", "latent_samples": 8},
    )
    sids, ts, values, _ = train.interleaved()
    art = train_artifact(RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings,
                         device="cpu", progress=False)  # fmt: skip
    view = np.lib.stride_tricks.sliding_window_view
    windows = view(test.values, 12, axis=1).transpose(0, 1, 3, 2).reshape(-1, 12, 3)  # (n, W, d)
    filled = view(test.labels, 12, axis=1).sum(axis=2).reshape(-1)  # fault points per window
    bad, normal = filled >= 3, filled == 0
    backend = TorchBackend(art.model(), "cpu")
    aucs = {}
    for mode in ("recon_prob", "iwae"):
        det = Detector(backend, art.scaler, 12, latent_mode=mode, latent_samples=8)
        latent = det.infer(windows).latent
        aucs[mode] = roc_auc(latent[normal], latent[bad])
        small = Detector(backend, art.scaler, 12, latent_mode=mode, latent_samples=8, max_batch=7)
        np.testing.assert_allclose(small.infer(windows[:50]).latent, latent[:50], rtol=1e-5)
    recon = Detector(backend, art.scaler, 12).infer(windows).recon_features.mean(axis=1)
    aucs["recon at z = μ"] = roc_auc(recon[normal], recon[bad])
    print(f"ROC-AUC of the sampled modes alone: {aucs}")
    assert min(aucs.values()) > 0.62, aucs
    assert min(aucs["recon_prob"], aucs["iwae"]) >= aucs["recon at z = μ"] - 0.02, aucs


# -------------------------------------------------------------------------------- VampPrior


def test_log_mixture_is_the_mixture_density_in_torch_and_numpy() -> None:
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    z = 3 * torch.randn(7, 3, generator=gen)
    mix = MixtureSameFamily(
        Categorical(torch.ones(5)), Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    )
    torch.testing.assert_close(log_mixture(z, mu, logvar), mix.log_prob(z))
    as64 = [t.numpy().astype(np.float64) for t in (z, mu, logvar)]
    np.testing.assert_allclose(log_mixture(*as64), mix.log_prob(z).numpy(), rtol=1e-5)
    far = log_mixture(np.full((1, 3), 1e3), mu.numpy(), logvar.numpy())  # no underflow to -inf
    assert np.isfinite(far).all()


def test_a_vampprior_model_trains_stores_its_prior_and_scores_against_it(tmp_path: Path) -> None:
    """model.prior = "vamp": the pseudo-windows start at training windows and are learned; the
    artifact stores the components the scores use (so ONNX and torch score alike) and refuses
    to load without them; the latent term is the KL's integrand against that prior."""
    fleet = generate_fleet(4, 3, 400, seed=2, n_anomalies_per_series=0)
    settings = load_settings(
        env={},
        window={"size": 8},
        model={"hidden": 16, "latent": 4, "prior": "vamp", "n_pseudo": 6},
        train={"epochs": 3, "batch_size": 64, "torch_threads": 1},
        scoring={"alpha": 0.5},
    )
    sids, ts, values, _ = fleet.interleaved()
    art = train_artifact(RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings,
                         device="cpu", progress=False)  # fmt: skip
    model = art.model()
    assert model.pseudo is not None and tuple(model.pseudo.shape) == (6, 8, 3)
    prior = art.reference.prior
    assert prior is not None and prior.mu.shape == (6, 4)
    with torch.no_grad():
        comps = model.prior_components()
    assert comps is not None
    np.testing.assert_allclose(prior.mu, comps[0].numpy(), rtol=1e-5, atol=1e-6)
    save_artifact(art, tmp_path / "m")
    loaded = load_artifact(tmp_path / "m")
    assert loaded.version == art.version and loaded.reference.prior is not None
    windows = np.stack([values[i * 4 : i * 4 + 32 : 4] for i in range(40)])[:, :8]  # (40, 8, 3)
    det = Detector.from_spec(TorchBackend(model, "cpu"), art.scaler, art.spec,
                             reference=art.reference)  # fmt: skip
    latent = det.infer(windows).latent
    mu, logvar = det.encode(windows)
    log_q = -0.5 * logvar.sum(1) - 2 * math.log(2 * math.pi)
    with torch.no_grad():
        expected = log_q - model.log_prior(torch.from_numpy(mu)).numpy()
    np.testing.assert_allclose(latent, expected, rtol=1e-4, atol=1e-4)
    kl_normal = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).sum(1)
    assert not np.allclose(latent, kl_normal)
    with pytest.raises(ValueError, match="prior"):
        _check_reference(art.spec, ScoreReference(), art.hybrid)


# ------------------------------------------------------------- the repeats term (stuck sensors)


def test_the_repeats_term_is_the_most_exact_repeats_beyond_training() -> None:
    """A channel's exact repeats beyond the most it repeated in a training window; a channel
    constant in training counts for nothing. In the hybrid: max(mix, its surprise), one repeat
    the unit of its tail (a first repeat is a small surprise, a stuck quarter a large one)."""
    rng = np.random.default_rng(8)
    train = rng.normal(size=(400, 16, 3)).astype(np.float32)
    train[:, :, 2] = 1.0  # a constant channel
    ref = RepeatsReference.fit(train)
    assert ref.most.tolist() == [0.0, 0.0, 15.0]
    windows = rng.normal(size=(3, 16, 3)).astype(np.float32)
    windows[:, :, 2] = 1.0
    windows[1, 12:, 0] = windows[1, 12, 0]  # stuck for the last 4 points: 3 repeats
    windows[2, 15, 1] = windows[2, 14, 1]  # one repeat
    assert ref.excess(windows).tolist() == [0.0, 3.0, 1.0]
    parts = ScoreParts(
        rng.random((400, 2)).astype(np.float32),
        rng.random(400).astype(np.float32),
        repeats=ref.excess(train[:, :, :]),
    )
    h = HybridScore(alpha=1.0, normaliser="tail").fit(parts)
    assert h.has_repeats
    probe = ScoreParts(
        np.full((3, 2), 0.5, np.float32), np.full(3, 0.5, np.float32), repeats=ref.excess(windows)
    )
    out = h.raw(probe)
    mixed = h.raw(probe, weights=h.weights).raw  # the same weights: the term is not a weight
    assert out.repeats is not None and out.repeats[0] == 0.0
    assert out.raw[0] == pytest.approx(float(h.mix(h.components(probe), h.weights)[0]))
    assert out.raw[1] > out.raw[2] > out.raw[0]  # 3 repeats above 1 above none
    assert out.raw[1] - out.raw[2] == pytest.approx(2.0)  # one nat a repeat
    assert np.array_equal(mixed, out.raw)
    back = HybridScore.from_dict(h.to_dict())
    assert np.array_equal(back.raw(probe).raw, out.raw)
    with pytest.raises(ValueError, match="repeats"):
        h.raw(replace(probe, repeats=None))
    with pytest.raises(ValueError, match="tail"):
        HybridScore(alpha=1.0).fit(parts)
    with pytest.raises(ConfigError, match="repeats needs normaliser"):
        load_settings(env={}, scoring={"repeats": True})


def test_the_repeats_term_finds_stuck_sensors_the_reconstruction_misses(tmp_path: Path) -> None:
    """One small model, with and without the term, on a generated fleet: the stuck sensors'
    windows rank above the normal ones with it, other faults rank as before, and the reference
    is stored with the model."""
    fleet = generate_fleet(8, 4, 900, seed=12, anomaly_start=550, n_anomalies_per_series=3)
    train, test = fleet.split(550)
    sids, ts, values, _ = train.interleaved()
    batch = RecordBatch(tuple(sids), ts, values)
    sids, ts, values, _ = test.interleaved()
    w = 16
    # each window by the fault that fills at least a quarter of it (as bench/ablation.py);
    # windows that hold less of one are left out, those with none are normal
    cover = {sid: np.zeros((len(test.ts), len(KINDS))) for sid in test.series_ids}
    for inj in test.injections:
        cover[test.series_ids[inj.series_index]][inj.start : inj.end, KINDS.index(inj.kind)] = 1
    label = {}
    for sid, c in cover.items():
        filled = np.cumsum(np.vstack([np.zeros((1, len(KINDS))), c]), axis=0)
        for e in range(w - 1, len(test.ts)):
            rows = filled[e + 1] - filled[e + 1 - w]  # fault rows of each kind in the window
            k = int(rows.argmax())
            label[(sid, float(test.ts[e]))] = (
                "normal" if rows.sum() == 0 else KINDS[k] if rows[k] >= w // 4 else "partial"
            )
    auc = {}
    for on in (False, True):
        settings = load_settings(
            env={},
            window={"size": w},
            model={"hidden": 32, "latent": 8},
            train={"epochs": 12, "batch_size": 64, "lr": 3e-3, "torch_threads": 1},
            scoring={"normaliser": "tail", "repeats": on},
        )
        art = train_artifact(batch, fleet.feature_names, settings, device="cpu", progress=False)
        assert art.hybrid.has_repeats == on == (art.reference.repeats is not None)
        out = list(LiveModel(art, DetectorOptions(device="cpu")).stream(
            RecordBatch(tuple(sids), ts, values), 500))  # fmt: skip
        ends = [(k, float(t)) for o in out for k, t in zip(o.keys, o.ts, strict=True)]
        raw = np.concatenate([o.raw for o in out])
        row_kind = np.array([label[e] for e in ends])
        normal = raw[row_kind == "normal"]
        auc[on] = {k: roc_auc(normal, raw[row_kind == k]) for k in set(row_kind) & set(KINDS)}
        if on:
            save_artifact(art, tmp_path / "m")
            loaded = load_artifact(tmp_path / "m")
            assert loaded.reference.repeats is not None and loaded.hybrid.has_repeats
            assert np.array_equal(loaded.reference.repeats.most, art.reference.repeats.most)  # type: ignore[union-attr]
    print(f"ROC-AUC by kind, without and with the repeats term: {auc}")
    assert auc[True]["stuck_sensor"] >= 0.95 > auc[False]["stuck_sensor"], auc
    for k in auc[False]:
        assert auc[True][k] >= auc[False][k] - 0.02, (k, auc)

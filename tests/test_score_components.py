"""The score components measured against normal windows (issue 17): the tail normaliser, the
latent reference (aggregate posterior: Gaussian and nearest neighbours), the linear residual,
the three-way weights and their storage in the artifact: hand-made cases; and one small model
trained on a generated fleet with every component on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stream_vae.config import load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.errors import ArtifactError
from stream_vae.model.backends import TorchBackend
from stream_vae.model.detector import Detector
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.scoring.alpha import choose_weights, weight_grid
from stream_vae.scoring.hybrid import HybridScore, ScoreParts, roc_auc
from stream_vae.scoring.normalise import TailNormaliser
from stream_vae.scoring.reference import LatentReference, LinearReference, ScoreReference
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
    assert ref.residual(inside).max() < 1e-8
    assert ref.residual(broken).min() > 1e-3


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

from __future__ import annotations

import numpy as np
import pytest

from stream_vae.scoring.alpha import choose_alpha, corrupt_windows
from stream_vae.scoring.hybrid import HybridScore, ScoreParts, combine, roc_auc
from stream_vae.scoring.normalise import Normaliser, apply_transform


def test_robust_normaliser_ignores_outliers() -> None:
    x = np.concatenate([np.linspace(0, 1, 101), [1e6]])
    n = Normaliser("robust").fit(x)
    assert n.center == pytest.approx(0.5, abs=0.01)
    assert n.scale == pytest.approx(0.5 / 1.349, rel=0.03)
    s = Normaliser("standard").fit(x)
    assert s.scale > 1e4  # the std is dominated by the outlier


def test_normaliser_round_trip_and_constant_input() -> None:
    n = Normaliser("standard").fit(np.full(10, 3.0))
    assert n.scale == pytest.approx(1e-6)
    back = Normaliser.from_dict(n.to_dict())
    assert back.transform([4.0]).tolist() == n.transform([4.0]).tolist()
    with pytest.raises(ValueError):
        Normaliser().fit(np.array([1.0, np.nan]))


def test_transforms() -> None:
    z = np.array([-50.0, 0.0, 50.0])
    sp = apply_transform(z, "softplus")
    assert sp[0] == pytest.approx(0.0, abs=1e-12)
    assert sp[1] == pytest.approx(np.log(2))
    assert sp[2] == pytest.approx(50.0)
    assert apply_transform(z, "sigmoid").tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_combination() -> None:
    r, lat = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    assert combine([(0.25, r), (0.75, lat)], "sum").tolist() == pytest.approx([7.0, 1.75])
    assert combine([(0.5, r), (0.5, lat)], "product").tolist() == pytest.approx([3.0, 2.0])
    lin = np.array([2.0, 2.0])
    three = combine([(0.5, r), (0.25, lat), (0.25, lin)], "sum")
    assert three.tolist() == pytest.approx([3.25, 2.75])


def test_hybrid_alpha_extremes_select_one_component() -> None:
    rng = np.random.default_rng(0)
    parts = ScoreParts(rng.random((50, 3)).astype(np.float32), rng.random(50).astype(np.float32))
    h = HybridScore(alpha=1.0, transform="sigmoid").fit(parts)
    out = h.raw(parts)
    assert np.allclose(out.raw, out.recon)
    assert np.allclose(h.raw(parts, alpha=0.0).raw, out.latent)
    again = HybridScore.from_dict(h.to_dict())
    assert np.array_equal(again.raw(parts).raw, out.raw)


def test_score_parts_shape_checks() -> None:
    with pytest.raises(ValueError, match="expected shape"):
        ScoreParts(np.zeros((3, 2), np.float32), np.zeros(4, np.float32))


def test_roc_auc_matches_definition() -> None:
    assert roc_auc([0, 1], [2, 3]) == 1.0
    assert roc_auc([2, 3], [0, 1]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(1)
    neg, pos = rng.normal(size=300), rng.normal(1, 1, size=200)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(neg, pos) == pytest.approx(brute)


def test_corruptions_touch_only_the_last_quarter() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(40, 16, 3)).astype(np.float32)
    before = w.copy()
    c = corrupt_windows(w, np.ones(3, np.float32), rng)
    assert np.array_equal(c[:, :12], w[:, :12])
    assert (np.abs(c - w).reshape(40, -1).max(axis=1) > 0).mean() > 0.9
    assert np.array_equal(w, before)  # the input is left untouched


def test_choose_alpha_prefers_the_informative_component() -> None:
    rng = np.random.default_rng(3)
    n = 400
    clean = ScoreParts(rng.random((n, 2)).astype(np.float32), rng.random(n).astype(np.float32))
    # corrupted copies differ only in the latent term
    corrupt = ScoreParts(
        rng.random((n, 2)).astype(np.float32), (rng.random(n) + 0.8).astype(np.float32)
    )
    h = HybridScore().fit(clean)
    alpha, aucs = choose_alpha(h, clean, corrupt)
    # the latent term carries it; reconstruction keeps what a tie (0.01 of AUC) allows
    assert alpha <= 0.25 and aucs[alpha] > 0.9 > aucs[1.0]
    assert aucs[alpha] >= max(aucs.values()) - 0.01
    # ... and ties go to reconstruction
    alpha_tie, _ = choose_alpha(h, clean, clean)
    assert alpha_tie == 1.0

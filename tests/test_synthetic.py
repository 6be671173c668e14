from __future__ import annotations

import doctest
import itertools
from collections import Counter

import numpy as np
import pytest

from stream_vae.demo import synthetic
from stream_vae.demo.synthetic import KINDS, MIN_GAP, Fleet, generate_fleet, window_labels
from stream_vae.errors import ConfigError, ShapeError

SEED = 3


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return generate_fleet(seed=SEED)


@pytest.fixture(scope="module")
def clean() -> Fleet:
    """The same fleet without anomalies: the normal data do not depend on the anomaly plan."""
    return generate_fleet(seed=SEED, n_anomalies_per_series=0)


def _of_kind(fleet: Fleet, kind: str) -> list[synthetic.Injection]:
    found = [i for i in fleet.injections if i.kind == kind]
    assert found, kind
    return found


def test_public_api_is_pinned() -> None:
    assert synthetic.__all__ == [
        "KINDS",
        "MIN_GAP",
        "Fleet",
        "Injection",
        "generate_fleet",
        "window_labels",
    ]


def test_docstring_examples_run() -> None:
    result = doctest.testmod(synthetic, raise_on_error=False)
    assert result.attempted >= 5 and result.failed == 0


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    a, b = generate_fleet(5, 4, 600, seed=7), generate_fleet(5, 4, 600, seed=7)
    other = generate_fleet(5, 4, 600, seed=8)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.injections == b.injections
    assert not np.allclose(a.values, other.values)
    assert a.injections != other.injections


def test_shapes_dtypes_and_names(fleet: Fleet) -> None:
    assert fleet.values.shape == (20, 2000, 8) and fleet.values.dtype == np.float32
    assert fleet.labels.shape == (20, 2000) and fleet.labels.dtype == np.bool_
    assert fleet.ts.shape == (2000,) and fleet.ts.dtype == np.float64
    assert fleet.ts[0] == 1_700_000_000.0
    np.testing.assert_array_equal(np.diff(fleet.ts), 60.0)
    assert fleet.series_ids[0] == "machine-000" and len(set(fleet.series_ids)) == 20
    assert len(set(fleet.feature_names)) == 8
    assert (fleet.n_series, fleet.n_steps, fleet.n_features) == (20, 2000, 8)
    names = generate_fleet(1, 20, 50, n_anomalies_per_series=0).feature_names
    assert len(set(names)) == 20 and names[:2] == fleet.feature_names[:2]
    assert np.isfinite(fleet.values).all()


def test_injections_start_late_do_not_overlap_and_match_labels(fleet: Fleet) -> None:
    assert min(i.start for i in fleet.injections) >= 1200  # 60% of 2000
    expected = np.zeros_like(fleet.labels)
    for s in range(fleet.n_series):
        spans = sorted((i.start, i.end) for i in fleet.injections if i.series_index == s)
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            assert nxt - end >= MIN_GAP
        for start, end in spans:
            assert 0 < end - start <= 80
            assert not expected[s, start:end].any()
            expected[s, start:end] = True
    np.testing.assert_array_equal(fleet.labels, expected)
    assert all(i.series_id == fleet.series_ids[i.series_index] for i in fleet.injections)


def test_custom_anomaly_start_is_respected() -> None:
    f = generate_fleet(6, 3, 500, seed=1, anomaly_start=420, n_anomalies_per_series=2.0)
    assert len(f.injections) == 12
    assert min(i.start for i in f.injections) >= 420
    assert not f.labels[:, :420].any()


def test_anomalies_change_only_their_span_and_channels(fleet: Fleet, clean: Fleet) -> None:
    touched = np.zeros(fleet.values.shape, np.bool_)
    for i in fleet.injections:
        cols = list(i.features[:1] if i.kind == "correlation_break" else i.features)
        touched[i.series_index, i.start : i.end, cols] = True
    np.testing.assert_array_equal(fleet.values[~touched], clean.values[~touched])
    assert (fleet.values[touched] != clean.values[touched]).mean() > 0.9


def test_every_kind_appears_in_a_ten_series_fleet() -> None:
    f = generate_fleet(10, 4, 800, seed=11)
    assert Counter(i.kind for i in f.injections) == {k: 2 for k in KINDS}
    half = generate_fleet(10, 4, 800, seed=11, n_anomalies_per_series=0.5)
    per_series = Counter(i.series_index for i in half.injections)
    assert len(half.injections) == 5 and set(per_series.values()) == {1}
    assert {i.kind for i in half.injections} == set(KINDS)
    only = generate_fleet(4, 3, 800, seed=0, kinds=("spike",), n_anomalies_per_series=3)
    assert {i.kind for i in only.injections} == {"spike"} and len(only.injections) == 12


def test_spike_magnitude(fleet: Fleet, clean: Fleet) -> None:
    for i in _of_kind(fleet, "spike"):
        assert 1 <= i.end - i.start <= 3 and 1 <= len(i.features) <= 3
        for c in i.features:
            base = clean.values[i.series_index, :, c].astype(np.float64)
            diff = fleet.values[i.series_index, i.start : i.end, c] - base[i.start : i.end]
            size = np.abs(diff) / base.std()
            assert np.all((size > 4 - 1e-3) & (size < 6 + 1e-3)), size


def test_level_shift_moves_the_mean_by_two_to_three_stds(fleet: Fleet, clean: Fleet) -> None:
    for i in _of_kind(fleet, "level_shift"):
        assert 20 <= i.end - i.start <= 60
        for c in i.features:
            base = clean.values[i.series_index, :, c].astype(np.float64)
            span = fleet.values[i.series_index, i.start : i.end, c]
            shift = abs(span.mean() - base[i.start : i.end].mean()) / base.std()
            assert 2 - 1e-3 < shift < 3 + 1e-3


def test_stuck_sensor_is_flat_at_its_start_value(fleet: Fleet, clean: Fleet) -> None:
    for i in _of_kind(fleet, "stuck_sensor"):
        assert 30 <= i.end - i.start <= 80
        for c in i.features:
            span = fleet.values[i.series_index, i.start : i.end, c]
            np.testing.assert_array_equal(span, clean.values[i.series_index, i.start, c])
            assert np.ptp(clean.values[i.series_index, i.start : i.end, c]) > 0


def test_variance_burst_multiplies_the_noise(fleet: Fleet, clean: Fleet) -> None:
    # Row-to-row differences are dominated by noise (the signals are smooth); the bursts multiply
    # the noise by 4-6, the ratio of difference stds is lower (signal part, ~20-60 samples).
    ratios = []
    for i in _of_kind(fleet, "variance_burst"):
        for c in i.features:
            anom = np.diff(fleet.values[i.series_index, i.start : i.end, c].astype(np.float64))
            base = np.diff(clean.values[i.series_index, i.start : i.end, c].astype(np.float64))
            ratios.append(anom.std() / base.std())
    assert min(ratios) > 2.0 and max(ratios) < 8 and np.mean(ratios) > 3.0, ratios


def test_correlation_break_decorrelates_and_keeps_the_range(fleet: Fleet, clean: Fleet) -> None:
    for i in _of_kind(fleet, "correlation_break"):
        assert 2 <= len(i.features) <= 3 and len(set(i.features)) == len(i.features)
        s, c0, c1 = i.series_index, i.features[0], i.features[1]
        a = fleet.values[s, i.start : i.end].astype(np.float64)
        b = clean.values[s, i.start : i.end].astype(np.float64)
        before, after = np.corrcoef(b[:, c0], b[:, c1])[0, 1], np.corrcoef(a[:, c0], a[:, c1])[0, 1]
        assert abs(after) < 0.3 and abs(after) < abs(before) - 0.3, (before, after)
        assert 0.7 < a[:, c0].std() / b[:, c0].std() < 1.4
        assert abs(a[:, c0].mean() - b[:, c0].mean()) < 0.5 * b[:, c0].std()


def test_normal_channels_are_cross_correlated(clean: Fleet) -> None:
    for s in range(clean.n_series):
        corr = np.corrcoef(clean.values[s].T)  # (d, d)
        off = np.abs(corr[np.triu_indices(clean.n_features, 1)])
        assert off.max() > 0.7
        assert np.mean(off > 0.3) > 0.3


def test_series_differ_but_share_a_family(clean: Fleet) -> None:
    a, b = clean.values[0].astype(np.float64), clean.values[1].astype(np.float64)
    assert np.abs(np.corrcoef(a[:, 0], b[:, 0])[0, 1]) < 0.9
    # Per-channel levels stay within a few scales of each other across the fleet.
    means, stds = clean.values.mean(axis=1), clean.values.std(axis=1)  # (n, d)
    assert np.all(np.ptp(means, axis=0) < 4 * stds.mean(axis=0))


def test_split_by_time() -> None:
    f = generate_fleet(4, 3, 600, seed=5, n_anomalies_per_series=3)
    inj = f.injections[0]
    row = (inj.start + inj.end) // 2 if inj.end - inj.start > 1 else 500
    head, tail = f.split(row)
    np.testing.assert_array_equal(np.concatenate([head.values, tail.values], axis=1), f.values)
    np.testing.assert_array_equal(np.concatenate([head.labels, tail.labels], axis=1), f.labels)
    np.testing.assert_array_equal(np.concatenate([head.ts, tail.ts]), f.ts)
    assert head.series_ids == f.series_ids and tail.feature_names == f.feature_names
    for part, offset in ((head, 0), (tail, row)):
        expected = np.zeros_like(part.labels)
        for i in part.injections:
            assert 0 <= i.start < i.end <= part.n_steps
            expected[i.series_index, i.start : i.end] = True
            orig = [o for o in f.injections if (o.series_index, o.kind) == (i.series_index, i.kind)]
            assert any(o.start <= i.start + offset and i.end + offset <= o.end for o in orig)
        np.testing.assert_array_equal(part.labels, expected)
    assert len(head.injections) + len(tail.injections) >= len(f.injections)
    with pytest.raises(ConfigError):
        f.split(601)


def test_interleaved_is_arrival_order() -> None:
    f = generate_fleet(3, 2, 50, seed=2, anomaly_start=10)
    sids, ts, values, labels = f.interleaved()
    assert len(sids) == 150 and values.shape == (150, 2) and labels.shape == (150,)
    assert sids[:4] == ("machine-000", "machine-001", "machine-002", "machine-000")
    assert np.all(np.diff(ts) >= 0)
    for row in (0, 4, 77, 149):
        t, s = divmod(row, 3)
        assert sids[row] == f.series_ids[s] and ts[row] == f.ts[t]
        np.testing.assert_array_equal(values[row], f.values[s, t])
        assert labels[row] == f.labels[s, t]
    assert labels.sum() == f.labels.sum()


def test_regime_change_is_unlabelled_but_moves_the_data() -> None:
    base = generate_fleet(5, 4, 1000, seed=4, n_anomalies_per_series=0)
    drift = generate_fleet(5, 4, 1000, seed=4, n_anomalies_per_series=0, regime_change_at=700)
    assert not drift.labels.any() and not drift.injections
    np.testing.assert_array_equal(drift.values[:, :700], base.values[:, :700])
    std = base.values[:, :700].std(axis=1)  # (n, d)
    moved = np.abs(drift.values[:, 700:].mean(axis=1) - base.values[:, 700:].mean(axis=1)) / std
    assert np.all(moved > 0.8) and np.median(moved) > 1.0
    labelled = generate_fleet(5, 4, 1000, seed=4, regime_change_at=700)
    assert len(labelled.injections) == 5
    assert labelled.labels.sum() == sum(i.end - i.start for i in labelled.injections)


def test_short_anomaly_region_shrinks_lengths() -> None:
    f = generate_fleet(2, 3, 100, seed=0, n_anomalies_per_series=2, kinds=("stuck_sensor",))
    for s in range(2):
        spans = sorted((i.start, i.end) for i in f.injections if i.series_index == s)
        assert len(spans) == 2 and spans[0][0] >= 60 and spans[1][1] <= 100
        assert spans[1][0] - spans[0][1] >= MIN_GAP


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kinds": ("spike", "meteor")},
        {"n_features": 1},  # correlation_break needs two channels
        {"noise": 0.0},
        {"seed": -1},
        {"anomaly_start": 5000},
        {"n_anomalies_per_series": -1.0},
        {"n_steps": 120, "anomaly_start": 115, "n_anomalies_per_series": 2},
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"n_series": 2, "n_features": 3, "n_steps": 200, **kwargs}
    with pytest.raises(ConfigError):
        generate_fleet(**args)  # type: ignore[arg-type]


def _brute_window_labels(y: np.ndarray, window: int, stride: int, mode: str) -> list[bool]:
    out = []
    for start in range(0, len(y) - window + 1, stride):
        w = y[start : start + window]
        out.append(bool(w[-1]) if mode == "last" else bool(w.any()))
    return out


@pytest.mark.parametrize("mode", ["last", "any"])
@pytest.mark.parametrize(("window", "stride"), [(1, 1), (5, 1), (5, 3), (40, 7), (61, 1)])
def test_window_labels_match_brute_force(mode: str, window: int, stride: int) -> None:
    y = np.random.default_rng(0).random(60) < 0.1
    got = window_labels(y, window, stride, mode=mode)  # type: ignore[arg-type]
    assert got.dtype == np.bool_
    assert got.tolist() == _brute_window_labels(y, window, stride, mode)


def test_window_labels_rejects_bad_input() -> None:
    with pytest.raises(ShapeError):
        window_labels(np.zeros((2, 3), bool), 2)
    with pytest.raises(ConfigError):
        window_labels(np.zeros(5, bool), 0)
    with pytest.raises(ConfigError):
        window_labels(np.zeros(5, bool), 2, mode="all")  # type: ignore[arg-type]

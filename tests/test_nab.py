"""The NAB scorer: hand-computed cases on a synthetic file, the sweep against a literal
row-by-row reading of NAB's rules, and the published table on the shared NAB subset (skipped
where the shared data is absent; set STREAM_VAE_DATA to the directory holding ``nab/``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from stream_vae.errors import DataError
from stream_vae.evaluation.nab import (
    CostProfile,
    FileOutcome,
    NabFile,
    file_outcome,
    per_file_best,
    probation_rows,
    read_nab,
    read_profiles,
    read_reference_scores,
    score_at_threshold,
    score_detector,
)

DATA = Path(
    os.environ.get(
        "STREAM_VAE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
NAB = DATA / "nab"

STANDARD = CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
LOW_FN = CostProfile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0)


def _sig(x: float) -> float:
    """NAB's scaled sigmoid, written out for the expected values."""
    return -1.0 if x > 3.0 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


# --- a synthetic file: 100 rows (rows 0-14 probationary), one window on rows 50-59 -------------

TS = np.arange(100.0) * 300.0
FILE = NabFile("demo/one.csv", TS, np.zeros(100), ((TS[50], TS[59]),))


def _raw(detections: Mapping[int, float], profile: CostProfile = STANDARD) -> float:
    """Raw score at threshold 0.5 with the given rows' scores, the other rows at 0."""
    s = np.zeros(100)
    for row, value in detections.items():
        s[row] = value
    normalised = score_at_threshold([FILE], {FILE.name: s}, profile, 0.5)
    # one scorable window: the null detector scores -A_FN, the perfect one +A_TP
    null, perfect = -profile.fn_weight, profile.tp_weight
    return null + normalised / 100 * (perfect - null)


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert probation_rows(100) == 15
    assert probation_rows(4033) == 604
    assert probation_rows(5000) == 750
    assert probation_rows(22695) == 750


def test_detection_at_the_window_start_scores_a_tp() -> None:
    assert _raw({50: 1.0}) == pytest.approx(1.0)


def test_a_later_detection_in_the_window_scores_less() -> None:
    # position -(59 - i + 1) / 10, scaled so that the window's first row gives exactly A_TP
    assert _raw({55: 1.0}) == pytest.approx(_sig(-0.5) / _sig(-1.0))  # 0.8598
    assert _raw({59: 1.0}) == pytest.approx(_sig(-0.1) / _sig(-1.0))  # 0.2482
    assert _raw({59: 1.0}) == pytest.approx(0.24824, abs=1e-5)


def test_only_the_first_detection_in_a_window_counts() -> None:
    assert _raw({50: 1.0, 52: 1.0, 58: 1.0}) == pytest.approx(1.0)
    assert _raw({55: 1.0, 58: 1.0}) == pytest.approx(_sig(-0.5) / _sig(-1.0))


def test_a_missed_window_costs_a_fn() -> None:
    assert _raw({}) == pytest.approx(-1.0)
    assert _raw({}, LOW_FN) == pytest.approx(-2.0)


def test_false_positive_before_any_window_costs_a_fp() -> None:
    assert _raw({20: 1.0, 50: 1.0}) == pytest.approx(1.0 - 0.11)
    assert _raw({20: 1.0}) == pytest.approx(-1.0 - 0.11)


def test_false_positive_after_a_window_costs_less_close_to_it() -> None:
    # distance past the window's last row in (width - 1) = 9 rows
    just_after = 0.11 * _sig(1 / 9)  # -0.0298
    far_after = 0.11 * _sig(40 / 9)  # beyond 3 widths: the full -0.11
    assert _raw({50: 1.0, 60: 1.0}) == pytest.approx(1.0 + just_after)
    assert just_after == pytest.approx(-0.02980, abs=1e-5)
    assert _raw({50: 1.0, 99: 1.0}) == pytest.approx(1.0 + far_after)
    assert far_after == -0.11


def test_probationary_rows_are_not_scored() -> None:
    assert _raw({3: 1.0, 14: 1.0, 50: 1.0}) == pytest.approx(1.0)
    # a window wholly inside the probationary period is neither missed nor detected
    early = NabFile("demo/early.csv", TS, np.zeros(100), ((TS[5], TS[9]), (TS[50], TS[59])))
    result = score_detector([early], {early.name: np.zeros(100)}, {"s": STANDARD})["s"]
    assert (result.null_score, result.perfect_score) == (-1.0, 2.0)  # NAB's perfect counts both


def test_sweep_picks_the_best_threshold() -> None:
    s = np.zeros(100)
    s[30], s[55], s[70] = 0.9, 0.8, 0.8  # a costly FP above the hit, a tied FP after it
    result = score_detector([FILE], {FILE.name: s}, {"s": STANDARD})["s"]
    expected = _sig(-0.5) / _sig(-1.0) - 0.11 + 0.11 * _sig(11 / 9)
    assert result.threshold == 0.8
    assert result.raw_score == pytest.approx(expected)
    assert result.score == pytest.approx(100 * (expected + 1) / 2)
    assert score_at_threshold([FILE], {FILE.name: s}, STANDARD, 0.8) == pytest.approx(result.score)


def test_per_file_best_gives_each_file_its_own_threshold() -> None:
    """A needs a low threshold (its hit scores 0.4, under an FP at 0.6), B a high one (20 FPs
    at 0.5 under its hit at 0.9), C has no window (its best: no detection)."""
    a, b, c = (
        NabFile(n, TS, np.zeros(100), w)
        for n, w in (("demo/a.csv", FILE.windows), ("demo/b.csv", FILE.windows), ("demo/c.csv", ()))
    )
    s = {f.name: np.zeros(100) for f in (a, b, c)}
    s[a.name][[30, 55]] = 0.6, 0.4
    s[b.name][55], s[b.name][20:40] = 0.9, 0.5
    s[c.name][30] = 0.95
    hit = _sig(-0.5) / _sig(-1.0)
    raw = (hit - 0.11) + hit + 0.0
    assert per_file_best([a, b, c], s, STANDARD) == pytest.approx(100 * (raw + 2) / 4)
    # one threshold for all: 0.9 (B's hit, C's FP) beats 0.4 (A's hit, B's 20 FPs)
    swept = score_detector([a, b, c], s, {"s": STANDARD})["s"]
    assert swept.threshold == 0.9
    assert swept.score == pytest.approx(100 * (-1 + hit - 0.11 + 2) / 4)


def test_null_and_perfect_detectors_score_0_and_100() -> None:
    perfect = np.zeros(100)
    perfect[50] = 1.0
    for s, expected in ((np.zeros(100), 0.0), (np.full(100, 0.5), 0.0), (perfect, 100.0)):
        for p in (STANDARD, LOW_FN):
            assert score_detector([FILE], {FILE.name: s}, {"p": p})["p"].score == expected


def test_bad_scores_are_rejected() -> None:
    with pytest.raises(DataError, match=r"shape \(100,\)"):
        score_detector([FILE], {FILE.name: np.zeros(99)}, {"s": STANDARD})
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        score_detector([FILE], {FILE.name: np.full(100, 2.0)}, {"s": STANDARD})
    with pytest.raises(DataError, match="no scores"):
        score_detector([FILE], {}, {"s": STANDARD})


# --- the sweep against NAB's rules read literally, one threshold and one row at a time ----------


def _literal_raw(f: NabFile, s: npt.NDArray[np.float64], p: CostProfile, t: float) -> float:
    """NAB's ``sweeper.calcSweepScore`` walked row by row, then summed at threshold ``t``."""
    total, windows = 0.0, list(f.windows)
    cur: tuple[int, int] | None = None  # (first row, last row) of the window we are in
    prev: tuple[int, int] | None = None  # the same, of the last window left behind
    parts: dict[int, float] = {}
    for i, ts in enumerate(f.ts.tolist()):
        if cur is None and windows and ts == windows[0][0]:
            cur = (i, f.ts.tolist().index(windows.pop(0)[1]))
        if cur is not None:
            value = p.tp_weight * _sig(-(cur[1] - i + 1) / (cur[1] - cur[0] + 1)) / _sig(-1.0)
        else:
            # before any window, or after a one-row window (NAB divides by zero): far away
            far = prev is None or prev[1] == prev[0]
            past = 4.0 if prev is None or far else (i - prev[1]) / (prev[1] - prev[0])
            value = p.fp_weight * _sig(past)
        if i >= probation_rows(f.n_rows):
            if cur is not None:
                best = parts.setdefault(cur[0], -p.fn_weight)
                parts[cur[0]] = max(best, value) if s[i] >= t else best
            elif s[i] >= t:
                total += value
        if cur is not None and i == cur[1]:
            prev, cur = cur, None
    return total + sum(parts.values())


def test_sweep_matches_the_literal_rules_at_every_threshold() -> None:
    rng = np.random.default_rng(7)
    files, scores = [], {}
    for k, (n, bounds) in enumerate([(120, [(30, 40), (41, 41), (70, 90)]), (80, [(5, 12)])]):
        ts = np.arange(n, dtype=np.float64) * 60.0
        f = NabFile(f"c/f{k}.csv", ts, np.zeros(n), tuple((ts[a], ts[b]) for a, b in bounds))
        files.append(f)
        scores[f.name] = rng.integers(0, 20, n) / 20  # coarse: many tied scores
    for p in (STANDARD, LOW_FN):
        result = score_detector(files, scores, {"p": p})["p"]
        thresholds = np.unique(np.concatenate(list(scores.values())))
        raws = [sum(_literal_raw(f, scores[f.name], p, t) for f in files) for t in thresholds]
        null = sum(_literal_raw(f, scores[f.name], p, 1.1) for f in files)
        assert result.null_score == pytest.approx(null)
        assert result.raw_score == pytest.approx(max(max(raws), null))
        i = thresholds.tolist().index(result.threshold)
        assert raws[i] == pytest.approx(result.raw_score)


# --- reading NAB's layout -------------------------------------------------------------------------


def _write_layout(root: Path) -> None:
    (root / "data" / "cat").mkdir(parents=True)
    (root / "config").mkdir()
    (root / "labels").mkdir()
    rows = "".join(f"2020-01-01 00:{m:02d}:00,{m}.5\n" for m in range(10))
    (root / "data" / "cat" / "a.csv").write_text("timestamp,value\n" + rows)
    windows = {"cat/a.csv": [["2020-01-01 00:04:00.000000", "2020-01-01 00:06:00.000000"]]}
    windows["other/not_here.csv"] = []
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    cost = {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0, "tnWeight": 1.0}
    (root / "config" / "profiles.json").write_text(json.dumps({"standard": {"CostMatrix": cost}}))
    (root / "reference_results" / "det" / "cat").mkdir(parents=True)
    scores = "".join(f"2020-01-01 00:{m:02d}:00,0.{m}\n" for m in range(10))
    (root / "reference_results" / "det" / "cat" / "det_a.csv").write_text(
        "timestamp,anomaly_score,raw\n" + scores
    )


def test_file_outcome_counts_windows_false_positives_and_delays() -> None:
    # rows 0-14 are probationary: a window and detections there are not counted
    f = NabFile(
        "demo/two.csv", TS, np.zeros(100), ((TS[5], TS[9]), (TS[50], TS[59]), (TS[70], TS[79]))
    )
    s = np.zeros(100)
    s[[3, 7]] = 0.9  # in probation: ignored (a false positive and a hit alike)
    s[52] = s[55] = 0.8  # the second window, first found 2 rows in
    s[75] = 0.3  # the third window, under the threshold: missed
    s[[30, 90, 91]] = 0.6  # outside every window, past probation: 3 false positives
    assert file_outcome(f, s, 0.5) == FileOutcome(2, 1, 3, (2,))
    assert file_outcome(f, s, 0.2) == FileOutcome(2, 2, 3, (2, 5))
    assert file_outcome(f, s, 0.95) == FileOutcome(2, 0, 0, ())


def test_read_layout(tmp_path: Path) -> None:
    _write_layout(tmp_path)
    (f,) = read_nab(tmp_path)  # the label key without a data file is ignored
    assert f.name == "cat/a.csv" and f.n_rows == 10
    assert f.ts[0] == 1577836800.0 and np.diff(f.ts).tolist() == [60.0] * 9
    assert f.values[3] == 3.5
    assert f.windows == ((f.ts[4], f.ts[6]),)
    assert read_profiles(tmp_path) == {"standard": STANDARD}
    scores = read_reference_scores(tmp_path, "det", [f])
    assert scores["cat/a.csv"].tolist() == [m / 10 for m in range(10)]


def test_reference_scores_must_align_with_the_data(tmp_path: Path) -> None:
    _write_layout(tmp_path)
    (f,) = read_nab(tmp_path)
    shifted = NabFile(f.name, f.ts + 60.0, f.values, f.windows)
    with pytest.raises(DataError, match="timestamps"):
        read_reference_scores(tmp_path, "det", [shifted])


# --- the published table on the shared subset ----------------------------------------------------

EXPECTED = {  # shared/data/README.md: standard, reward_low_FP_rate, reward_low_FN_rate
    "ARTime": (73.55, 65.59, 78.59),
    "numenta": (69.52, 62.88, 74.02),
    "windowedGaussian": (37.70, 32.72, 40.86),
}
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

needs_nab = pytest.mark.skipif(not NAB.is_dir(), reason=f"no NAB data under {NAB}")


@pytest.fixture(scope="module")
def nab() -> tuple[list[NabFile], dict[str, CostProfile]]:
    return read_nab(NAB), read_profiles(NAB)


@needs_nab
@pytest.mark.parametrize("detector", sorted(EXPECTED))
def test_reproduces_the_published_table(
    nab: tuple[list[NabFile], dict[str, CostProfile]], detector: str
) -> None:
    files, profiles = nab
    scores = read_reference_scores(NAB, detector, files)
    results = score_detector(files, scores, profiles)
    for name, expected in zip(PROFILES, EXPECTED[detector], strict=True):
        assert results[name].score == pytest.approx(expected, abs=0.01), (detector, name)
        again = score_at_threshold(files, scores, profiles[name], results[name].threshold)
        assert again == pytest.approx(results[name].score, abs=1e-9)


@needs_nab
def test_null_and_perfect_on_the_shared_subset(
    nab: tuple[list[NabFile], dict[str, CostProfile]],
) -> None:
    files, profiles = nab
    assert len(files) == 31 and sum(len(f.windows) for f in files) == 53
    null = {f.name: np.zeros(f.n_rows) for f in files}
    perfect = {f.name: np.isin(f.ts, [a for a, _ in f.windows]).astype(float) for f in files}
    for name in PROFILES:
        assert score_detector(files, null, profiles)[name].score == 0.0
        assert score_detector(files, perfect, profiles)[name].score == pytest.approx(100.0)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_vae.errors import DataError, ShapeError
from stream_vae.evaluation.events import Segment, match_events
from stream_vae.evaluation.metrics import (
    PRF,
    attribution_hit_rate,
    average_precision,
    best_f1,
    detection_delays,
    event_prf,
    parse_interpretation,
    point_adjusted_f1,
    point_prf,
    read_interpretation,
    roc_auc,
    vus_pr,
)
from stream_vae.evaluation.vus import label_runs


def test_average_precision_by_hand() -> None:
    # ranks: 0.8 (pos) 0.4 (neg) 0.35 (pos) 0.1 (neg) → AP = (1/1 + 2/3) / 2
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    assert average_precision([1, 2, 3], [0, 0, 1]) == 1.0


def test_average_precision_ties_are_order_free() -> None:
    s, y = np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0])
    assert average_precision(s, y) == average_precision(s[[1, 0, 2]], y[[1, 0, 2]]) == 0.5


def test_metrics_need_positives() -> None:
    with pytest.raises(ValueError):
        average_precision([1, 2], [0, 0])
    assert roc_auc([0.2, 0.9, 0.1], [0, 1, 0]) == 1.0


def test_event_matching() -> None:
    segs = [Segment("a", 10, 20, "spike"), Segment("a", 40, 45, "shift"), Segment("b", 5, 8, "x")]
    r = match_events([("a", 25), ("a", 9), ("a", 43), ("a", 44), ("b", 30)], segs, tolerance=6)
    # 25 < 20 + 6 detects the first segment (late), 9 is before it: a false alarm
    assert (r.n_detected, r.n_false, r.n_alerts) == (2, 2, 5)
    assert r.delays == (15, 3)
    assert r.recall == pytest.approx(2 / 3) and r.precision == pytest.approx(3 / 5)
    assert r.recall_by_kind == {"shift": 1.0, "spike": 1.0, "x": 0.0}


# --- VUS-PR -------------------------------------------------------------------------------


def _vus_pr_by_loops(scores: np.ndarray, labels: np.ndarray, max_buffer: int, n_t: int) -> float:
    """The definition in stream_vae.evaluation.vus, spelled out loop by loop."""
    n, y = len(scores), labels.astype(bool)
    runs: list[list[int]] = []  # [first, last]
    for i in range(n):
        if y[i] and i > 0 and y[i - 1]:
            runs[-1][1] = i
        elif y[i]:
            runs.append([i, i])
    thresholds = np.sort(scores)[::-1][np.linspace(0, n - 1, n_t).astype(int)]
    aps = []
    for buf in range(max_buffer + 1):
        h, weight = buf // 2, y.astype(float)
        for i, j in runs:
            for d in range(1, h + 1):
                for k in (i - d, j + d):
                    if 0 <= k < n:
                        weight[k] += np.sqrt(1 - d / buf)
        weight = np.minimum(weight, 1)
        ranges = [[i - h, j + h] for i, j in runs[:1]]
        for i, j in runs[1:]:
            if ranges[-1][1] < i - h:
                ranges.append([i - h, j + h])
            else:
                ranges[-1][1] = j + h
        tpr, ap = 0.0, 0.0
        for t in thresholds:
            pred = scores >= t
            tp = weight[pred].sum()
            hit = np.mean([pred[max(a, 0) : b + 1].any() for a, b in ranges])
            positives = y.sum() + (tp - (pred & y).sum()) / 2
            new_tpr = min(tp / positives, 1) * hit
            ap += (new_tpr - tpr) * tp / pred.sum()
            tpr = new_tpr
        aps.append(ap)
    return float(np.mean(aps))


def test_vus_pr_by_hand_one_run() -> None:
    y = [0, 0, 0, 1, 1, 0, 0, 0]
    s = [0.7, 0.1, 0.2, 0.9, 0.6, 0.8, 0.3, 0.4]
    # ranking by score: 3 (.9, run), 5 (.8), 0 (.7), 4 (.6, run), then 7, 6, 2, 1
    # l = 0 and l = 1 (l // 2 = 0, no buffer): plain AP = (1/1 + 2/4) / 2 = 0.75
    assert vus_pr(s, y, max_buffer=0) == pytest.approx(0.75) == average_precision(s, y)
    # l = 2: rows 2 and 5 get c = sqrt(1 - 1/2); one range [2, 5], hit from the first threshold.
    #   {3}:       TP = 1,     P_l = 2,         TPR = 1/2,   precision 1      -> + 1/2
    #   {3,5}:     TP = 1 + c, P_l = 2 + c/2,   TPR = r,     precision (1+c)/2 -> + (r - 1/2)(1+c)/2
    #   {3,5,0}:   TPR unchanged                                              -> + 0
    #   {3,5,0,4}: TP = 2 + c, P_l = 2 + c/2,   TPR = min(>1, 1) = 1, prec (2+c)/4 -> + (1-r)(2+c)/4
    c = np.sqrt(0.5)
    r = (1 + c) / (2 + c / 2)
    ap2 = 0.5 + (r - 0.5) * (1 + c) / 2 + (1 - r) * (2 + c) / 4  # ≈ 0.87823
    assert vus_pr(s, y, max_buffer=2) == pytest.approx((0.75 + 0.75 + ap2) / 3)


def test_vus_pr_existence_reward_at_zero_buffer() -> None:
    # runs [0, 1] and [4]; ranking 0 1 (run 1), 2 (normal), 4 (run 2); P = 3
    s, y = [0.9, 0.8, 0.75, 0.1, 0.7, 0.2], [1, 1, 0, 0, 1, 0]
    # TPR = recall × share of runs hit: 1/3·1/2, 2/3·1/2, 2/3·1/2, 1·1
    # AP = 1/6·1 + 1/6·1 + 0·2/3 + 2/3·3/4 = 5/6, below the point-wise AP (1 + 1 + 3/4) / 3
    assert vus_pr(s, y, max_buffer=0) == pytest.approx(5 / 6)
    assert average_precision(s, y) == pytest.approx(11 / 12)


@pytest.mark.parametrize("seed", range(6))
def test_vus_pr_matches_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 90))
    y = np.convolve(rng.random(n) < 0.08, np.ones(int(rng.integers(1, 4))), "same") > 0
    y[rng.integers(n)] = True
    y[: seed % 2] = True  # a run at the very start: its buffer is cut off
    s = np.round(rng.random(n) + 0.6 * y, 1)  # rounded: many tied scores
    for max_buffer, n_t in [(0, 250), (7, 250), (12, 15)]:
        assert vus_pr(s, y, max_buffer, n_thresholds=n_t) == pytest.approx(
            _vus_pr_by_loops(s, y, max_buffer, n_t), abs=1e-12
        )


@pytest.mark.parametrize("seed", range(5))
def test_vus_pr_without_buffer_is_ap_for_one_run(seed: int) -> None:
    # one run and every score a threshold (distinct scores, n <= 250): the step-wise AP exactly
    rng = np.random.default_rng(seed)
    y = np.zeros(200, bool)
    y[50 : 50 + int(rng.integers(1, 30))] = True
    s = rng.random(200) + 0.5 * y
    assert vus_pr(s, y, max_buffer=0) == pytest.approx(average_precision(s, y), abs=1e-12)


def test_vus_pr_perfect_and_defaults() -> None:
    y = np.zeros(300, bool)
    y[[20, 21, 22, 150, 151, 290]] = True
    assert vus_pr(y.astype(float), y, max_buffer=40) == 1.0
    s = np.random.default_rng(0).random(300) + y
    # runs of 3, 2 and 1: median 2, so the default buffer is 4
    assert vus_pr(s, y) == vus_pr(s, y, max_buffer=4)
    with pytest.raises(ValueError):
        vus_pr(s, np.zeros(300))
    with pytest.raises(ValueError):
        vus_pr(np.r_[np.nan, s[1:]], y)
    with pytest.raises(ValueError):
        vus_pr(s[:-1], y)
    with pytest.raises(ValueError):
        vus_pr(s, y, max_buffer=-1)


def test_label_runs() -> None:
    starts, lasts = label_runs([1, 0, 1, 1, 0, 0, 1])
    assert starts.tolist() == [0, 2, 6] and lasts.tolist() == [0, 3, 6]
    assert label_runs([0, 0])[0].size == 0


# --- at one threshold ---------------------------------------------------------------------


def test_point_prf_by_hand() -> None:
    # hits at 0 and 3; 1 is a false alarm; 4 is missed: P = 2/3, R = 2/3
    r = point_prf([1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0])
    assert (r.precision, r.recall, r.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert point_prf([0, 0, 0], [0, 1, 0]) == PRF(0.0, 0.0, 0.0)  # silence: precision 0
    with pytest.raises(DataError):
        point_prf([0.2, 0.9], [0, 1])  # scores, not predictions
    with pytest.raises(ShapeError):
        point_prf([0, 1], [0, 1, 1])
    with pytest.raises(DataError):
        point_prf([0, 1], [0, 0])


def test_event_prf_by_hand() -> None:
    y = [0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 0]  # events [1, 2], [4], [9, 10]
    p = [0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1]  # alarms [2, 4], [7], [11]
    # no tolerance: [1, 2] and [4] detected by the one alarm [2, 4]; [9, 10] missed.
    # recall 2/3; of 3 alarms only [2, 4] touches an event: precision 1/3; F1 = 4/9
    r = event_prf(p, y)
    assert (r.precision, r.recall, r.f1) == pytest.approx((1 / 3, 2 / 3, 4 / 9))
    # tolerance 1: [9, 10] reaches 11, the alarm at 11 detects it: recall 1, precision 2/3,
    # F1 = 2·(2/3)·1 / (5/3) = 0.8
    r = event_prf(p, y, tolerance=1)
    assert (r.precision, r.recall, r.f1) == pytest.approx((2 / 3, 1.0, 0.8))
    with pytest.raises(ValueError):
        event_prf(p, y, tolerance=-1)


def test_best_f1_is_an_oracle_over_distinct_thresholds() -> None:
    # P = 3; thresholds .9: tp 1 of 1 -> F1 2/4; .8 (tie, both in): tp 2 of 3 -> 4/6;
    # .3: tp 3 of 4 -> 6/7; .1: tp 3 of 5 -> 6/8. Best: 6/7 at 0.3
    f1, threshold = best_f1([0.9, 0.8, 0.8, 0.3, 0.1], [1, 0, 1, 1, 0])
    assert f1 == pytest.approx(6 / 7) and threshold == 0.3
    s = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    assert point_prf(s >= threshold, [1, 0, 1, 1, 0]).f1 == pytest.approx(f1)


def test_point_adjusted_f1_inflates() -> None:
    y = [0, 1, 1, 1, 1, 0, 0, 0, 1, 1]  # events [1, 4], [8, 9]; P = 6
    p = [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    # point-wise: tp 1 of 2 predicted: P = 1/2, R = 1/6, F1 = 1/4
    # adjusted: the hit at 3 fills [1, 4]: predicted {1, 2, 3, 4, 6}, tp 4: P = 4/5, R = 2/3,
    # F1 = 2·(8/15) / (22/15) = 8/11
    assert point_prf(p, y).f1 == pytest.approx(1 / 4)
    assert point_adjusted_f1(p, y) == pytest.approx(8 / 11)


def test_detection_delays_by_hand() -> None:
    y = [0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0]  # events [1, 3], [6, 7], [10]
    p = [0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    # [1, 3]: first alarm at 2 -> 1. [6, 7]: the alarm at 5 is before it, 8 is after it:
    # missed, unless tolerance >= 1 (delay 2). [10]: never.
    assert detection_delays(p, y) == [1]
    assert detection_delays(p, y, tolerance=1) == [1, 2]
    assert detection_delays([0, 0], [0, 0]) == []


# --- attribution ---------------------------------------------------------------------------


def test_attribution_hit_rate_by_hand() -> None:
    segs = [
        (1, 4, frozenset({2})),  # first detected at 2, which blames 0 and 1: miss
        (5, 7, frozenset({0, 3})),  # first detected at 6, which blames 3: hit
        (9, 11, frozenset({1})),  # detected at 9, which blames 1: hit
        (11, 12, frozenset({4})),  # never detected: left out
    ]
    p = np.zeros(12, int)
    p[[2, 3, 6, 9]] = 1
    top = np.tile([0, 1], (12, 1))
    top[3] = [2, 0]  # a later detection in the first segment would hit: only the first counts
    top[6], top[9] = [3, 1], [1, 0]
    assert attribution_hit_rate(p, top, segs) == pytest.approx(2 / 3)
    assert np.isnan(attribution_hit_rate(np.zeros(12, int), top, segs))
    with pytest.raises(ShapeError):
        attribution_hit_rate(p, top[:-1], segs)
    with pytest.raises(DataError):
        attribution_hit_rate(p, top, [(10, 13, frozenset({1}))])


def test_parse_interpretation() -> None:
    # 1-based inclusive rows in the file -> half-open rows, 0-based dims
    assert parse_interpretation(["3-5:1,19", "  ", "8-8:2\n"]) == [
        (3, 6, frozenset({0, 18})),
        (8, 9, frozenset({1})),
    ]
    for bad in ["12-10:3", "3-5", "a-b:1", "3-5:0"]:
        with pytest.raises(DataError):
            parse_interpretation([bad])


def test_read_interpretation(tmp_path: Path) -> None:
    f = tmp_path / "omi-x.txt"
    f.write_text("760-765:4,5\n1064-1298:6\n")
    assert read_interpretation(f) == [(760, 766, frozenset({3, 4})), (1064, 1299, frozenset({5}))]


ASD = Path(__file__).resolve().parents[2] / "shared" / "data" / "asd"


@pytest.mark.skipif(not (ASD / "interpretation_label").is_dir(), reason="ASD data not present")
def test_interpretation_covers_exactly_the_labelled_rows() -> None:
    # the check behind "both inclusive in the file": the segments tile the test_label 1s
    for f in sorted((ASD / "interpretation_label").glob("omi-*.txt")):
        labels = np.loadtxt(ASD / "test_label" / f.name).astype(bool)
        covered = np.zeros(len(labels), bool)
        for start, end, dims in read_interpretation(f):
            covered[start:end] = True
            assert max(dims) < 19
        np.testing.assert_array_equal(covered, labels, err_msg=f.name)

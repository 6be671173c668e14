from __future__ import annotations

import numpy as np
import pytest

from stream_vae.evaluation.events import Segment, match_events
from stream_vae.evaluation.metrics import average_precision, roc_auc


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

"""Labelled series for evaluation: the SMD layout (ASD, SMD) and a generic labelled CSV.

Every loader returns :class:`LabelledSeries`: the rows a detector may learn from (``train``),
the rows it is scored on (``test``, streamed in order) with a 0/1 label per row, and, where
the data has them, which features carry each anomaly. NAB has its own loader and scorer
(:mod:`stream_vae.evaluation.nab`).

Examples
--------
>>> import numpy as np
>>> s = LabelledSeries("m", np.zeros((5, 2)), np.ones((4, 2)), np.array([0, 0, 1, 0], bool))
>>> s.n_features, s.feature_names, float(s.ts[0])  # the test rows follow the 5 train rows
(2, ('m1', 'm2'), 1500.0)
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .metrics import read_interpretation

__all__ = ["QUICK_SERIES", "LabelledSeries", "read_labelled_csv", "read_smd"]

F64 = npt.NDArray[np.float64]

# SMD and ASD rows are 5 minutes apart; the files carry no timestamps.
SMD_STEP_S = 300.0


# --quick: the series a CI run evaluates (small, with labelled anomalies of different kinds)
QUICK_SERIES = {
    "smd": ["omi-1", "omi-3"],
    "nab": ["art_daily_jumpsup", "art_daily_no_noise", "ec2_request_latency_system_failure"],
    "csv": [],
}


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """One series: ``train`` (m, d) to learn from, ``test`` (n, d) to score, ``labels`` (n,)."""

    name: str
    train: F64
    test: F64
    labels: npt.NDArray[np.bool_]
    # (start, end) rows, end exclusive, and the 0-based features each anomaly shows in
    interpretation: tuple[tuple[int, int, frozenset[int]], ...] = ()
    names: tuple[str, ...] = ()
    step_s: float = SMD_STEP_S
    # The rows' own timestamps (epoch seconds), where the data has them (NAB); None: rows are
    # evenly ``step_s`` apart, the train rows just before the test rows.
    train_times: F64 | None = None
    test_times: F64 | None = None

    def __post_init__(self) -> None:
        if self.test.ndim != 2 or self.train.ndim != 2:
            raise DataError(f"{self.name}: train and test must be (rows, features)")
        if self.train.shape[1] != self.test.shape[1]:
            raise DataError(
                f"{self.name}: train has {self.train.shape[1]} features, test {self.test.shape[1]}"
            )
        if len(self.labels) != len(self.test):
            raise DataError(
                f"{self.name}: {len(self.labels)} labels for {len(self.test)} test rows"
            )
        for part, times, rows in (
            ("train", self.train_times, self.train),
            ("test", self.test_times, self.test),
        ):
            if times is not None and times.shape != (len(rows),):
                raise DataError(
                    f"{self.name}: {times.shape} timestamps for {len(rows)} {part} rows"
                )

    @property
    def n_features(self) -> int:
        return int(self.test.shape[1])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.names or tuple(f"m{i + 1}" for i in range(self.n_features))

    @property
    def ts(self) -> F64:
        """Test rows' timestamps, epoch seconds: ``test_times``, or rows evenly ``step_s``
        apart, in file order, the train rows just before the test rows."""
        if self.test_times is not None:
            return self.test_times
        return (len(self.train) + np.arange(len(self.test), dtype=np.float64)) * self.step_s

    @property
    def train_ts(self) -> F64:
        if self.train_times is not None:
            return self.train_times
        return np.arange(len(self.train), dtype=np.float64) * self.step_s

    def test_rows(self, ts: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The test row each timestamp belongs to (its first row with that timestamp: a window
        or alert ends on a row the stream accepted, and a repeated or earlier timestamp is
        dropped as late).

        >>> s = LabelledSeries("m", np.zeros((2, 1)), np.ones((3, 1)), np.zeros(3, bool),
        ...                    test_times=np.array([10.0, 20.0, 20.0]))
        >>> s.test_rows([20.0, 10.0]).tolist()
        [1, 0]
        """
        t = np.asarray(ts, dtype=np.float64)
        if self.test_times is None:
            return np.rint(t / self.step_s).astype(np.int64) - len(self.train)
        values, first = np.unique(self.test_times, return_index=True)
        at = np.searchsorted(values, t)
        if not np.array_equal(values[np.minimum(at, len(values) - 1)], t):
            raise DataError(f"{self.name}: a timestamp that is no test row's")
        return first[at].astype(np.int64)


def read_smd(root: str | Path, names: Sequence[str] | None = None) -> list[LabelledSeries]:
    """``root/{train,test,test_label,interpretation_label}/<name>.txt``, one series per name."""
    root = Path(root)
    if not (root / "test").is_dir():
        raise DataError(f"{root}: not an SMD layout (no test/ directory)")
    found = sorted((f.stem for f in (root / "test").glob("*.txt")), key=_natural)
    wanted = list(names) if names else found
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DataError(f"{root}: no series {missing} (have {found})")
    out = []
    for name in wanted:
        train = _matrix(root / "train" / f"{name}.txt")
        test = _matrix(root / "test" / f"{name}.txt")
        labels = _matrix(root / "test_label" / f"{name}.txt").ravel() > 0
        interp = root / "interpretation_label" / f"{name}.txt"
        out.append(
            LabelledSeries(
                name,
                train,
                test,
                labels,
                tuple(read_interpretation(interp)) if interp.exists() else (),
            )
        )
    return out


def read_labelled_csv(
    path: str | Path, *, label_column: str = "label", train_fraction: float = 0.3
) -> list[LabelledSeries]:
    """A CSV with a header: optional ``series_id`` and ``ts`` columns, feature columns and a 0/1
    ``label_column``. Per series, in file order, the first ``train_fraction`` of its rows are
    the training part (their labels are not used); the rest is scored. Rows are taken as evenly
    spaced (``ts`` orders nothing: sort the file first)."""
    p = Path(path)
    with p.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if len(rows) < 2:
        raise DataError(f"{p}: needs a header and rows")
    header = [c.strip() for c in rows[0]]
    if label_column not in header:
        raise DataError(f"{p}: no label column {label_column!r} (columns {header})")
    features = [c for c in header if c not in ("series_id", "ts", label_column)]
    col = {c: i for i, c in enumerate(header)}
    by_series: dict[str, list[list[str]]] = {}
    for r in rows[1:]:
        sid = r[col["series_id"]] if "series_id" in col else p.stem
        by_series.setdefault(sid, []).append(r)
    out = []
    for sid, rs in by_series.items():
        try:
            x = np.array([[float(r[col[f]]) for f in features] for r in rs])
            y = np.array([float(r[col[label_column]]) > 0 for r in rs])
        except (ValueError, IndexError) as exc:
            raise DataError(f"{p}: series {sid}: {exc}") from None
        cut = int(len(rs) * train_fraction)
        out.append(
            LabelledSeries(
                sid,
                x[:cut],
                x[cut:],
                y[cut:],
                names=tuple(features),
            )
        )
    return out


def _matrix(path: Path) -> F64:
    if not path.exists():
        raise DataError(f"{path}: missing")
    x = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: non-finite values")
    return x


def _natural(name: str) -> tuple[str, int]:
    """omi-2 before omi-10."""
    m = re.search(r"(\d+)$", name)
    return (name[: m.start()] if m else name, int(m[1]) if m else -1)

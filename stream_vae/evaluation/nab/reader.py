"""NAB's files: the data series with their anomaly windows, the cost profiles, and a published
detector's per-row scores.

:func:`read_nab` loads NAB's layout (``data/<category>/<file>.csv``,
``labels/combined_windows.json``), :func:`read_profiles` its cost profiles
(``config/profiles.json``) and :func:`read_reference_scores` a published detector's per-row
scores (``reference_results/<detector>/...``). Timestamps are read as UTC epoch seconds.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ...errors import DataError

__all__ = ["CostProfile", "NabFile", "read_nab", "read_profiles", "read_reference_scores"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class NabFile:
    """One NAB data file: ``ts`` (n,) epoch seconds (UTC), ``values`` (n,), its windows.

    ``name`` is the path under ``data/`` (``"realKnownCause/nyc_taxi.csv"``), the key of the
    labels file; ``windows`` are ``(start_ts, end_ts)`` pairs, both ends inclusive, in order.
    """

    name: str
    ts: F64
    values: F64
    windows: tuple[tuple[float, float], ...]

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return len(self.ts)


@dataclass(frozen=True, slots=True)
class CostProfile:
    """A NAB application profile: the weights ``A_TP``, ``A_FP`` and ``A_FN``."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


def _parse_ts(stamps: Sequence[str], where: str) -> F64:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` strings, read as UTC, to epoch seconds."""
    try:
        us = np.array(stamps, dtype="datetime64[us]").astype(np.int64)
    except ValueError as exc:
        raise DataError(f"{where}: bad timestamp ({exc})") from exc
    return us.astype(np.float64) / 1e6


def _read_columns(path: Path, value_column: str) -> tuple[F64, F64]:
    """The ``timestamp`` and ``value_column`` columns of a CSV file with a header row."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or "timestamp" not in rows[0] or value_column not in rows[0]:
        raise DataError(f"{path}: expected the columns 'timestamp' and {value_column!r}")
    i_ts, i_value = rows[0].index("timestamp"), rows[0].index(value_column)
    body = [r for r in rows[1:] if r]
    try:
        values = np.array([float(r[i_value]) for r in body], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise DataError(f"{path}: bad {value_column!r} cell ({exc})") from exc
    return _parse_ts([r[i_ts] for r in body], str(path)), values


def read_nab(root: str | Path) -> list[NabFile]:
    """Every data file under ``root/data`` with its windows from ``root/labels``, sorted by name.

    Label keys without a data file are ignored; a data file without a key is an error.
    """
    root = Path(root)
    labels_path = root / "labels" / "combined_windows.json"
    try:
        labels = json.loads(labels_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{labels_path}: unreadable ({exc})") from exc
    files = []
    for path in sorted((root / "data").glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        if name not in labels:
            raise DataError(f"{labels_path}: no windows for {name}")
        ts, values = _read_columns(path, "value")
        limits = [_parse_ts([str(a), str(b)], f"{labels_path} [{name}]") for a, b in labels[name]]
        windows = tuple(sorted((float(w[0]), float(w[1])) for w in limits))
        files.append(NabFile(name, ts, values, windows))
    if not files:
        raise DataError(f"{root / 'data'}: no <category>/<file>.csv files")
    return files


def read_profiles(root: str | Path) -> dict[str, CostProfile]:
    """The cost profiles of ``root/config/profiles.json``, by name."""
    path = Path(root) / "config" / "profiles.json"
    try:
        raw = json.loads(path.read_text())
        return {
            name: CostProfile(
                name,
                tp_weight=float(p["CostMatrix"]["tpWeight"]),
                fp_weight=float(p["CostMatrix"]["fpWeight"]),
                fn_weight=float(p["CostMatrix"]["fnWeight"]),
            )
            for name, p in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable profiles ({exc})") from exc


def read_reference_scores(
    root: str | Path, detector: str, files: Sequence[NabFile]
) -> dict[str, F64]:
    """A published detector's ``anomaly_score`` per row of each file, by file name.

    Reads ``root/reference_results/<detector>/<category>/<detector>_<file>.csv`` and checks that
    its timestamps are the data file's, row for row.
    """
    out = {}
    for f in files:
        category, base = f.name.split("/", 1)
        path = Path(root) / "reference_results" / detector / category / f"{detector}_{base}"
        ts, scores = _read_columns(path, "anomaly_score")
        if len(ts) != f.n_rows or not np.array_equal(ts, f.ts):
            raise DataError(f"{path}: its timestamps are not those of {f.name}")
        out[f.name] = scores
    return out

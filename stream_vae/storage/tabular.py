"""Reading telemetry files (an I/O edge): CSV, Parquet, and the SMD/ASD text layout.

CSV and Parquet: columns ``series_id``, ``ts``, then one column per feature. ``ts`` is epoch
seconds or ISO-8601. SMD layout (``--format smd``): comma-separated numbers without a header, one
row per time step; the file name is the series id, features are named ``m1``..``md`` and rows
are ``step_s`` apart. Every problem is a :class:`~stream_vae.errors.DataError` naming the file,
line and column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.records import RecordBatch, parse_ts
from ..errors import DataError, RecordError

__all__ = ["Table", "read_table", "write_scores"]

Format = Literal["auto", "csv", "parquet", "smd"]
_KEY_COLUMNS = ("series_id", "ts")


@dataclass(frozen=True, slots=True)
class Table:
    batch: RecordBatch
    feature_names: tuple[str, ...]


def read_table(
    path: str | Path,
    *,
    fmt: Format = "auto",
    feature_names: Sequence[str] | None = None,
    step_s: float = 300.0,
) -> Table:
    """Read one file, or every file of a directory (one series per file for SMD)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    files = (
        sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        if p.is_dir()
        else [p]
    )
    if not files:
        raise DataError(f"{p}: directory has no data files")
    tables = [_read_one(f, _guess(f, fmt), step_s) for f in files]
    names = tables[0].feature_names
    for f, t in zip(files, tables, strict=True):
        if t.feature_names != names:
            raise DataError(f"{f}: columns differ from {files[0].name}'s")
    table = (
        tables[0]
        if len(tables) == 1
        else Table(
            RecordBatch(
                tuple(s for t in tables for s in t.batch.series_ids),
                np.concatenate([t.batch.ts for t in tables]),
                np.concatenate([t.batch.values for t in tables]),
            ),
            names,
        )
    )
    return table if feature_names is None else _reorder(table, feature_names, p)


def _guess(f: Path, fmt: Format) -> Format:
    if fmt != "auto":
        return fmt
    by_suffix: dict[str, Format] = {".parquet": "parquet", ".pq": "parquet", ".txt": "smd"}
    return by_suffix.get(f.suffix.lower(), "csv")


def _read_one(f: Path, fmt: Format, step_s: float) -> Table:
    if fmt == "parquet":
        return _read_parquet(f)
    with f.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{f}: empty file")
    if fmt == "smd":
        return _from_smd(f, rows, step_s)
    header = [c.strip() for c in rows[0]]
    return _from_columns(f, header, rows[1:], first_line=2)


def _from_smd(f: Path, rows: list[list[str]], step_s: float) -> Table:
    d = len(rows[0])
    values = _numbers(f, rows, [f"m{i + 1}" for i in range(d)], first_line=1)
    ts = np.arange(len(rows), dtype=np.float64) * step_s
    return Table(
        RecordBatch((f.stem,) * len(rows), ts, values), tuple(f"m{i + 1}" for i in range(d))
    )


def _from_columns(f: Path, header: list[str], rows: list[list[str]], first_line: int) -> Table:
    missing = [c for c in _KEY_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{f}: missing column(s) {missing}; expected series_id, ts, <features>")
    features = [c for c in header if c not in _KEY_COLUMNS]
    if not features:
        raise DataError(f"{f}: no feature columns besides series_id and ts")
    if len(set(header)) != len(header):
        raise DataError(f"{f}: duplicate column names in header")
    if not rows:
        raise DataError(f"{f}: no data rows")
    i_sid, i_ts = header.index("series_id"), header.index("ts")
    i_feat = [header.index(c) for c in features]
    for n, r in enumerate(rows):
        if len(r) != len(header):
            raise DataError(f"{f}:{first_line + n}: {len(r)} cells, header has {len(header)}")
    sids = tuple(r[i_sid].strip() for r in rows)
    for n, s in enumerate(sids):
        if not s:
            raise DataError(f"{f}:{first_line + n}: empty series_id")
    ts = np.empty(len(rows), dtype=np.float64)
    for n, r in enumerate(rows):
        try:
            ts[n] = parse_ts(_maybe_number(r[i_ts].strip()))
        except RecordError as exc:
            raise DataError(f"{f}:{first_line + n}: column ts: {exc.message}") from None
    values = _numbers(f, [[r[i] for i in i_feat] for r in rows], features, first_line)
    return Table(RecordBatch(sids, ts, values), tuple(features))


def _maybe_number(cell: str) -> Any:
    try:
        return float(cell)
    except ValueError:
        return cell


def _numbers(f: Path, rows: list[list[str]], names: Sequence[str], first_line: int) -> np.ndarray:
    out = np.empty((len(rows), len(names)), dtype=np.float32)
    for n, r in enumerate(rows):
        if len(r) != len(names):
            raise DataError(f"{f}:{first_line + n}: {len(r)} values, expected {len(names)}")
        for j, cell in enumerate(r):
            try:
                v = float(cell)
            except ValueError:
                raise DataError(
                    f"{f}:{first_line + n}: column {names[j]}: not a number: {cell.strip()!r}"
                ) from None
            if not math.isfinite(v):
                raise DataError(f"{f}:{first_line + n}: column {names[j]}: {cell.strip()} value")
            out[n, j] = v
    return out


def _read_parquet(f: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "reading Parquet needs pyarrow: pip install 'stream-vae[parquet]'"
        ) from None
    try:
        t = pq.read_table(f)
    except Exception as exc:  # pyarrow raises many types for unreadable files
        raise DataError(f"{f}: cannot read Parquet: {exc}") from None
    header = list(t.column_names)
    cols = {c: t.column(c).to_pylist() for c in header}
    rows = [
        ["" if cols[c][i] is None else str(cols[c][i]) for c in header] for i in range(t.num_rows)
    ]
    if not rows:
        raise DataError(f"{f}: no data rows")
    return _from_columns(f, header, rows, first_line=1)


def _reorder(table: Table, feature_names: Sequence[str], p: Path) -> Table:
    have, want = list(table.feature_names), list(feature_names)
    if have == want:
        return table
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if missing or extra:
        raise DataError(
            f"{p}: feature columns differ from the model's: missing {missing[:8]}, "
            f"unknown {extra[:8]}"
        )
    idx = [have.index(c) for c in want]
    b = table.batch
    return Table(
        RecordBatch(b.series_ids, b.ts, np.ascontiguousarray(b.values[:, idx])), tuple(want)
    )


def write_scores(
    path: str | Path, rows: Sequence[tuple[str, float, float, float, float, bool]]
) -> None:
    """Write ``series_id, ts, score, raw_score, threshold, is_alert`` rows."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["series_id", "ts", "score", "raw_score", "threshold", "is_alert"])
        for sid, ts, score, raw, thr, alert in rows:
            w.writerow([sid, repr(ts), f"{score:.6g}", f"{raw:.6g}", f"{thr:.6g}", int(alert)])

"""Reading telemetry files (an I/O edge): CSV, Parquet, and the SMD/ASD text layout.

CSV and Parquet: columns ``series_id``, ``ts``, then one column per feature. ``ts`` is epoch
seconds or ISO-8601. SMD layout (``--format smd``): comma-separated numbers without a header, one
row per time step; the file name is the series id, features are named ``m1``..``md`` and rows
are ``step_s`` apart. Text files are UTF-8 (a byte-order mark is allowed); blank lines are
skipped. Every problem is a :class:`~stream_vae.errors.DataError` naming the file, the physical
line (blank lines counted) and the column.

Rows are returned in file order: nothing here requires or checks time order (training sorts by
time, ``score`` sorts each series by time, ``replay`` sends the file as it is).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..core.records import RecordBatch, parse_ts
from ..errors import DataError, RecordError

__all__ = ["Table", "read_rows", "read_table", "write_imputed", "write_scores"]

Format = Literal["auto", "csv", "parquet", "smd"]
_KEY_COLUMNS = ("series_id", "ts")
# Values are held as float32 (the model's precision): a larger magnitude would become inf.
_F32_MAX = float(np.finfo(np.float32).max)

Row = tuple[int, list[str]]  # (physical line, cells)


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
    max_abs: float = _F32_MAX,
    missing: bool = False,
) -> Table:
    """Read one file, or every file of a directory (one series per file for SMD).

    ``feature_names`` puts the feature columns in that order (the set must match);
    ``max_abs`` refuses, at its file and line, any value of larger magnitude (training passes
    :data:`stream_vae.training.build.MAX_TRAIN_ABS`); ``missing`` reads an empty cell or
    ``nan`` as a missing value (NaN; ``score --impute``) instead of refusing it.
    """
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
    tables = [_read_one(f, _guess(f, fmt), step_s, max_abs, missing) for f in files]
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


def _read_one(f: Path, fmt: Format, step_s: float, max_abs: float, missing: bool) -> Table:
    if fmt == "parquet":
        return _read_parquet(f, max_abs, missing)
    rows = read_rows(f)
    if not rows:
        raise DataError(f"{f}: empty file")
    if fmt == "smd":
        return _from_smd(f, rows, step_s, max_abs, missing)
    header = [c.strip() for c in rows[0][1]]
    return _from_columns(f, header, rows[1:], max_abs, missing)


def read_rows(path: str | Path) -> list[Row]:
    """The CSV records of a UTF-8 text file that hold anything but blanks, each with the
    physical line it starts on (1-based; blank lines count, so errors name the line an editor
    shows). A leading byte-order mark is dropped.

    Raises :class:`DataError` naming the file and line when the file cannot be read, is not
    UTF-8 text (a binary file, Latin-1, UTF-16, Parquet), or has a cell longer than the csv
    module's field limit (an unclosed quote swallows the rest of the file into one cell).
    """
    f = Path(path)
    try:
        data = f.read_bytes()
    except OSError as exc:
        raise DataError(f"{f}: cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(_text(f, data), newline=""))
    rows: list[Row] = []
    start = 1  # the line the next record starts on
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            if "field limit" in str(exc):
                raise DataError(
                    f"{f}:{start}: a cell longer than {csv.field_size_limit()} characters "
                    "(an unclosed quote?)"
                ) from None
            raise DataError(f"{f}:{start}: bad CSV: {exc}") from None
        if any(c.strip() for c in cells):
            rows.append((start, cells))
        start = reader.line_num + 1


def _text(f: Path, data: bytes) -> str:
    """``data`` as text, or a :class:`DataError` at the line of the first byte that is not."""
    if data.startswith(b"PAR1"):
        raise DataError(f"{f}:1: a Parquet file, not text: name it *.parquet or pass --format")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{f}:1: UTF-16 text: save the file as UTF-8")
    if data.startswith(codecs.BOM_UTF8):  # Excel writes one; it is not part of the header
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = data[: exc.start].decode("utf-8")
        nul = prefix.find("\0")
        if nul < 0:
            raise DataError(
                f"{f}:{_line_of(prefix)}: not UTF-8 text (byte 0x{data[exc.start]:02x}): a "
                "binary file, or text in another encoding such as Latin-1; save it as UTF-8"
            ) from None
        text = prefix  # a NUL comes first: report that
    nul = text.find("\0")
    if nul >= 0:
        raise DataError(f"{f}:{_line_of(text[:nul])}: a NUL byte: a binary file, not text")
    return text


def _line_of(prefix: str) -> int:
    """The line the character after ``prefix`` is on, counting line breaks as csv does."""
    return prefix.count("\n") + prefix.count("\r") - prefix.count("\r\n") + 1


def _from_smd(
    f: Path, rows: list[Row], step_s: float, max_abs: float, missing: bool = False
) -> Table:
    d = len(rows[0][1])
    names = tuple(f"m{i + 1}" for i in range(d))
    values = _numbers(f, rows, names, max_abs, missing)
    ts = np.arange(len(rows), dtype=np.float64) * step_s
    return Table(RecordBatch((f.stem,) * len(rows), ts, values), names)


def _from_columns(
    f: Path, header: list[str], rows: list[Row], max_abs: float, missing: bool = False
) -> Table:
    absent = [c for c in _KEY_COLUMNS if c not in header]
    if absent:
        raise DataError(f"{f}: missing column(s) {absent}; expected series_id, ts, <features>")
    features = [c for c in header if c not in _KEY_COLUMNS]
    if not features:
        raise DataError(f"{f}: no feature columns besides series_id and ts")
    if len(set(header)) != len(header):
        raise DataError(f"{f}: duplicate column names in header")
    if not rows:
        raise DataError(f"{f}: no data rows")
    i_sid, i_ts, *i_feat = _positions(header, [*_KEY_COLUMNS, *features])
    for line, r in rows:
        if len(r) != len(header):
            raise DataError(f"{f}:{line}: {len(r)} cells, header has {len(header)}")
    sids = tuple(r[i_sid].strip() for _, r in rows)
    for (line, _), s in zip(rows, sids, strict=True):
        if not s:
            raise DataError(f"{f}:{line}: empty series_id")
    ts = np.empty(len(rows), dtype=np.float64)
    for n, (line, r) in enumerate(rows):
        try:
            ts[n] = parse_ts(_maybe_number(r[i_ts].strip()))
        except RecordError as exc:
            raise DataError(f"{f}:{line}: column ts: {exc.message}") from None
    cells = [(line, [r[i] for i in i_feat]) for line, r in rows]
    values = _numbers(f, cells, features, max_abs, missing)
    return Table(RecordBatch(sids, ts, values), tuple(features))


def _positions(have: Sequence[str], want: Sequence[str]) -> list[int]:
    """Where each name of ``want`` is in ``have`` (all present): one dict, linear in the
    number of columns (``list.index`` per name was quadratic: minutes for 50,000 columns)."""
    at = {c: i for i, c in enumerate(have)}
    return [at[c] for c in want]


def _maybe_number(cell: str) -> Any:
    try:
        return float(cell)
    except ValueError:
        return cell


def _numbers(
    f: Path, rows: list[Row], names: Sequence[str], max_abs: float, missing: bool = False
) -> np.ndarray:
    out = np.empty((len(rows), len(names)), dtype=np.float32)
    for n, (line, r) in enumerate(rows):
        if len(r) != len(names):
            raise DataError(f"{f}:{line}: {len(r)} values, expected {len(names)}")
        for j, cell in enumerate(r):
            if missing and cell.strip().lower() in ("", "nan"):
                out[n, j] = np.nan
                continue
            try:
                v = float(cell)
            except ValueError:
                raise DataError(
                    f"{f}:{line}: column {names[j]}: not a number: {cell.strip()!r}"
                ) from None
            if not math.isfinite(v):
                raise DataError(f"{f}:{line}: column {names[j]}: {cell.strip()} value")
            if abs(v) > max_abs:
                raise DataError(
                    f"{f}:{line}: column {names[j]}: {cell.strip()} is out of range "
                    f"(|value| > {max_abs:g})"
                )
            out[n, j] = v
    return out


def _read_parquet(f: Path, max_abs: float, missing: bool = False) -> Table:
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
    rows = [  # "line" i + 1 is row i + 1
        (i + 1, ["" if cols[c][i] is None else str(cols[c][i]) for c in header])
        for i in range(t.num_rows)
    ]
    if not rows:
        raise DataError(f"{f}: no data rows")
    return _from_columns(f, header, rows, max_abs, missing)


def _reorder(table: Table, feature_names: Sequence[str], p: Path) -> Table:
    have, want = table.feature_names, tuple(feature_names)
    if have == want:
        return table
    have_set, want_set = set(have), set(want)  # sets and dicts: linear in the columns
    missing = [c for c in want if c not in have_set]
    extra = [c for c in have if c not in want_set]
    if missing or extra:
        raise DataError(
            f"{p}: feature columns differ from the model's: missing {missing[:8]}, "
            f"unknown {extra[:8]}"
        )
    idx = _positions(have, want)
    b = table.batch
    return Table(
        RecordBatch(b.series_ids, b.ts, np.ascontiguousarray(b.values[:, idx])), tuple(want)
    )


def write_scores(
    path: str | Path,
    rows: Sequence[tuple[str, float, float, float, float, bool]],
    expected: tuple[Sequence[str], npt.NDArray[np.floating[Any]]] | None = None,
) -> None:
    """Write ``series_id, ts, score, raw_score, threshold, is_alert`` rows; with ``expected``
    (feature names, values (n, d)), an ``expected_<feature>`` column each after them."""
    names = [] if expected is None else [f"expected_{f}" for f in expected[0]]
    values = None if expected is None else expected[1]
    try:
        with Path(path).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["series_id", "ts", "score", "raw_score", "threshold", "is_alert", *names])
            for i, (sid, ts, score, raw, thr, alert) in enumerate(rows):
                row = [sid, repr(ts), f"{score:.6g}", f"{raw:.6g}", f"{thr:.6g}", int(alert)]
                if values is not None:
                    row += [f"{v:.6g}" for v in values[i].tolist()]
                w.writerow(row)
    except OSError as exc:  # a directory in the way, permissions, a full disk
        raise DataError(f"{path}: cannot write: {exc.strerror or exc}") from None


def write_imputed(
    path: str | Path,
    table: Table,
    missing: npt.NDArray[np.bool_],
    by_model: npt.NDArray[np.bool_],
) -> None:
    """Write the data with its missing values filled: ``series_id, ts, <features>, imputed``,
    where ``imputed`` names the filled features, ``;``-separated, each marked ``(last)`` when
    it was carried forward rather than filled by the model."""
    names = table.feature_names
    b = table.batch
    try:
        with Path(path).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["series_id", "ts", *names, "imputed"])
            for i in range(len(b.series_ids)):
                flags = ";".join(
                    names[j] + ("" if by_model[i, j] else " (last)")
                    for j in np.flatnonzero(missing[i]).tolist()
                )
                w.writerow(
                    [
                        b.series_ids[i],
                        repr(float(b.ts[i])),
                        *(f"{v:.7g}" for v in b.values[i].tolist()),
                        flags,
                    ]
                )
    except OSError as exc:
        raise DataError(f"{path}: cannot write: {exc.strerror or exc}") from None

"""Property-based fuzzing of the two input edges: the record decoder and the file readers.

Whatever comes in, the only exception out is the edge's typed one (``RecordError`` with a
reason, ``DataError`` naming the file), and what gets through is what the core assumes: finite
float32 values of the model's width, a finite time, one row per non-blank data line.
"""

from __future__ import annotations

import json
import math
import tempfile
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_vae.core.records import (
    MAX_SERIES_ID_BYTES,
    REASONS,
    Record,
    RecordDecoder,
    parse_ts,
)
from stream_vae.errors import DataError, RecordError
from stream_vae.storage.tabular import read_table

FEATURES = ("temp", "pressure", "rpm")
DECODE = RecordDecoder(FEATURES, max_bytes=4096)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten: inputs that are mostly right reach the deep checks."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


# -- the record decoder -----------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["NaN", "-Infinity", "inf", " nan ", "1e400", "2023-11-14T22:13:20Z", "\x00\x1b\n", ""]
)
_NUMBER = (
    st.integers()  # unbounded: past int64 and float64
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(2**1023, 2**1100).map(lambda i: i * (-1) ** (i % 2))  # past float64's range
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([3.4028235e38, 3.5e38, -1e300, 5e-324, 0.0, -0.0])
)
_SCALAR = st.none() | st.booleans() | _NUMBER | _TEXT
_JSONISH = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_ISO = st.builds(
    lambda dt, tz, sep: dt.replace(tzinfo=tz).isoformat(sep),
    st.datetimes(),
    st.none()
    | st.just(UTC)
    | st.builds(timezone, st.integers(-1439, 1439).map(lambda m: timedelta(minutes=m))),
    st.sampled_from(["T", " "]),
)
_VALUE = _mostly(st.floats(-1e39, 1e39) | st.integers(-(2**64), 2**64), _NUMBER | _SCALAR)
_VALUES = _mostly(
    st.lists(_VALUE, min_size=3, max_size=3) | st.fixed_dictionaries({f: _VALUE for f in FEATURES}),
    _JSONISH
    | st.lists(_VALUE, min_size=2, max_size=4)
    | st.dictionaries(st.sampled_from([*FEATURES, "volts"]), _VALUE, max_size=4),
)
_FIELDS = {
    "series_id": _mostly(st.text(min_size=1, max_size=20), _JSONISH | st.text(max_size=300)),
    "ts": _mostly(st.floats(-1e12, 1e12) | st.integers(0, 2**40) | _ISO, _JSONISH | _NUMBER),
    "values": _VALUES,
}
_BODY = st.fixed_dictionaries(_FIELDS, optional={"note": _JSONISH}) | st.fixed_dictionaries(
    {}, optional={**_FIELDS, "note": _JSONISH}
)


def _check(key: bytes | None, value: bytes | None) -> None:
    try:
        record = DECODE(key, value)
    except RecordError as exc:
        assert exc.reason in REASONS and exc.message
        return
    assert isinstance(record, Record)
    assert isinstance(record.series_id, str) and record.series_id
    assert len(record.series_id.encode()) <= MAX_SERIES_ID_BYTES
    assert isinstance(record.ts, float) and math.isfinite(record.ts)
    assert record.values.dtype == np.float32 and record.values.shape == (len(FEATURES),)
    assert np.isfinite(record.values).all()


@FUZZ
@given(st.none() | st.binary(max_size=8), st.none() | st.binary(max_size=200))
def test_decoder_on_arbitrary_bytes(key: bytes | None, value: bytes | None) -> None:
    _check(key, value)


@FUZZ
@given(st.none() | st.binary(max_size=8), _BODY | _JSONISH)
def test_decoder_on_arbitrary_json(key: bytes | None, body: Any) -> None:
    # Python's json writes NaN/Infinity as bare words and ints of any size, as producers do
    _check(key, json.dumps(body).encode())


@FUZZ
@given(_JSONISH | _ISO | _NUMBER)
def test_parse_ts_gives_a_finite_time_or_a_bad_timestamp(raw: Any) -> None:
    try:
        ts = parse_ts(raw)
    except RecordError as exc:
        assert exc.reason == "bad_timestamp"
        return
    assert isinstance(ts, float) and math.isfinite(ts)


# -- the file readers ---------------------------------------------------------------------------

# Cells never hold a quote, a comma or a line break, so a line is a record and the expected row
# count can be read off the lines.
_JUNK = st.sampled_from(["", " ", "x", "nan", "-inf", "3.5e38", "-1e39", "1e400", "\x00"])
_NUM_CELL = (
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr)
    | st.integers(-(10**6), 10**6).map(str)
    | st.sampled_from(["3.4e38", "-1e38", " 1.5 ", "+2", "1E-50", "1_000"])
)
_CELL = _mostly(
    _NUM_CELL,
    _JUNK | st.text(st.characters(exclude_characters='",\r\n'), max_size=4),
)
_GOOD_TS = st.integers(0, 2_000_000_000).map(str) | _ISO
_TS_CELL = _mostly(
    _GOOD_TS,
    st.sampled_from(["soon", "", "nan", "1e400", "2023-11-14T22:13:20Z"]),
)
_BLANK = st.sampled_from(["", "  ", ",,", " , "])
_EOL = st.sampled_from(["\n", "\r\n"])


def _is_data(line: str) -> bool:
    """What the reader counts as a row: a line with a cell that is not blank."""
    return any(c.strip() for c in line.split(","))


@st.composite
def _csv_text(draw: st.DrawFn) -> tuple[str, int]:
    """CSV text (sometimes with a BOM, a bad header, ragged rows) and its number of data rows."""
    d = draw(st.integers(1, 4))
    header = ["series_id", "ts", *(f"f{i}" for i in range(d))]
    header = draw(st.permutations(header)) if draw(st.booleans()) else header
    if draw(st.integers(0, 19)) == 0:  # a header that cannot be used
        header = draw(st.lists(st.sampled_from(["series_id", "ts", "a", "", "a"]), max_size=4))
    clean = draw(st.booleans())  # half the files have no bad cell: they must be read
    sid = st.sampled_from(["a", "b", " c "])
    keys = {
        "series_id": sid if clean else _mostly(sid, st.just("")),
        "ts": _GOOD_TS if clean else _TS_CELL,
    }
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(_BLANK))
            continue
        cells = [draw(keys.get(c, _NUM_CELL if clean else _CELL)) for c in header]
        if draw(st.integers(0, 19)) == 0:  # ragged
            cells = cells[: draw(st.integers(0, len(cells)))]
        lines.append(",".join(cells))
    n_rows = sum(map(_is_data, lines)) - 1  # the first line that is not blank is the header
    bom = "\ufeff" if draw(st.booleans()) else ""
    return bom + draw(_EOL).join(lines) + draw(st.sampled_from(["", "\n"])), n_rows


@st.composite
def _smd_text(draw: st.DrawFn) -> tuple[str, int]:
    """Headerless numeric text (some blank lines, junk cells, ragged rows) and its row count."""
    d = draw(st.integers(1, 4))
    cell = _NUM_CELL if draw(st.booleans()) else _mostly(_NUM_CELL, _JUNK)
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(_BLANK))
        else:
            n = d if draw(st.integers(0, 19)) else draw(st.integers(1, 5))
            lines.append(",".join(draw(st.lists(cell, min_size=n, max_size=n))))
    return draw(_EOL).join(lines), sum(map(_is_data, lines))


def _read(content: bytes, suffix: str) -> Any:
    """``read_table`` on ``content`` in a fresh file: the table, or the ``DataError``."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"data{suffix}"
        f.write_bytes(content)
        try:
            return read_table(f)
        except DataError as exc:
            assert str(f) in str(exc)
            return exc


def _check_table(result: Any, n_rows: int) -> None:
    if isinstance(result, DataError):
        return
    batch = result.batch
    assert len(batch) == n_rows == len(batch.ts) == len(batch.values)
    assert batch.values.shape == (n_rows, len(result.feature_names))
    assert np.isfinite(batch.values).all() and np.isfinite(batch.ts).all()
    assert all(s and s == s.strip() for s in batch.series_ids)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".csv", ".txt"]))
def test_read_table_on_arbitrary_bytes(content: bytes, suffix: str) -> None:
    result = _read(content, suffix)
    if not isinstance(result, DataError):
        assert np.isfinite(result.batch.values).all() and np.isfinite(result.batch.ts).all()


@FUZZ
@given(_csv_text(), st.sampled_from(["utf-8", "latin-1"]))
def test_read_table_on_csv_text(case: tuple[str, int], encoding: str) -> None:
    text, n_rows = case
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode("utf-8")
    _check_table(_read(content, ".csv"), n_rows)


@FUZZ
@given(_smd_text())
def test_read_table_on_smd_text(case: tuple[str, int]) -> None:
    text, n_rows = case
    _check_table(_read(text.encode(), ".txt"), n_rows)

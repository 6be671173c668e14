from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_vae.errors import DataError
from stream_vae.storage.tabular import read_table


def test_csv_with_iso_timestamps_and_reordering(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("series_id,ts,b,a\nm1,2023-11-14T22:13:20Z,2,1\nm2,1700000060,4,3\n")
    t = read_table(f, feature_names=("a", "b"))
    assert t.feature_names == ("a", "b")
    assert t.batch.series_ids == ("m1", "m2")
    assert t.batch.ts.tolist() == [1700000000.0, 1700000060.0]
    assert t.batch.values.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_smd_directory_one_series_per_file(tmp_path: Path) -> None:
    (tmp_path / "omi-1.txt").write_text("0.1,0.2\n0.3,0.4\n0.5,0.6\n")
    (tmp_path / "omi-2.txt").write_text("1,2\n")
    t = read_table(tmp_path, step_s=300.0)
    assert t.feature_names == ("m1", "m2")
    assert t.batch.series_ids == ("omi-1", "omi-1", "omi-1", "omi-2")
    assert t.batch.ts.tolist() == [0.0, 300.0, 600.0, 0.0]
    assert np.allclose(t.batch.values[2], [0.5, 0.6])


def test_smd_ragged_row(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("1,2\n3\n")
    with pytest.raises(DataError, match=r"s.txt:2: 1 values, expected 2"):
        read_table(tmp_path / "s.txt")


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"series_id": ["a", "a"], "ts": [1.0, 2.0], "x": [0.5, None]})
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"column x: not a number"):
        read_table(tmp_path / "d.parquet")
    pq.write_table(pa.table({"series_id": ["a"], "ts": [1.0], "x": [0.5]}), tmp_path / "d.parquet")
    assert read_table(tmp_path / "d.parquet").batch.values.tolist() == [[0.5]]


def test_directory_with_differing_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("series_id,ts,x\ns,1,2\n")
    (tmp_path / "b.csv").write_text("series_id,ts,y\ns,1,2\n")
    with pytest.raises(DataError, match="columns differ"):
        read_table(tmp_path)


def test_blank_lines_keep_the_physical_line_number(tmp_path: Path) -> None:
    """An error on line N of the file is reported as line N (blank lines used to be dropped
    before counting, so the reported line was N minus the blank lines above it)."""
    f = tmp_path / "d.csv"
    f.write_bytes(b"series_id,ts,a\r\n\r\ns,1,1\r\n  \r\n,,\r\ns,2,x\r\n")
    with pytest.raises(DataError, match=r"d.csv:6: column a: not a number: 'x'"):
        read_table(f)
    (tmp_path / "s.txt").write_text("\n0.1,0.2\n\n0.3\n")
    with pytest.raises(DataError, match=r"s.txt:4: 1 values, expected 2"):
        read_table(tmp_path / "s.txt")


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("series_id,ts,a\ns,1,2\n\ns,2,x\n", encoding="utf-8-sig")  # as Excel saves
    with pytest.raises(DataError, match=r"d.csv:4: column a"):  # the BOM moves no line
        read_table(f)
    f.write_text("series_id,ts,a\ns,1,2\n", encoding="utf-8-sig")
    t = read_table(f)
    assert t.feature_names == ("a",) and t.batch.series_ids == ("s",)
    assert t.batch.values.tolist() == [[2.0]]
    (tmp_path / "m.txt").write_text("1,2\n", encoding="utf-8-sig")  # SMD too
    assert read_table(tmp_path / "m.txt").batch.values.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"series_id,ts,a\ns,1,2\ns,2,caf\xe9\n", r"d.csv:3: not UTF-8 text \(byte 0xe9\)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"d.csv:1: not UTF-8 text \(byte 0x89\)"),
        (b"series_id,ts,a\n\x00\x01\x02", r"d.csv:2: a NUL byte: a binary file"),
        (b"PAR1\x15\x04\x15\x10", r"d.csv:1: a Parquet file"),
        ("series_id,ts,a\n".encode("utf-16"), r"d.csv:1: UTF-16 text"),
    ],
    ids=["latin-1", "png", "nul", "parquet", "utf-16"],
)
def test_a_file_that_is_not_utf8_text_names_file_and_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    f = tmp_path / "d.csv"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(f)


def test_a_cell_past_the_csv_field_limit_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("series_id,ts,a\n\ns,1," + "1" * 10_000_000 + "\n")  # 10 MB
    with pytest.raises(DataError, match=r"d.csv:3: a cell longer than \d+ characters"):
        read_table(f)
    f.write_text('series_id,ts,a\ns,1,"2\n' + "s,2,3\n" * 30_000)  # a quote never closed
    with pytest.raises(DataError, match=r"d.csv:2: a cell longer than .* \(an unclosed quote\?\)"):
        read_table(f)


def test_values_beyond_float32_or_max_abs_are_refused_at_their_line(tmp_path: Path) -> None:
    """1e39 is finite as a float64 but became inf in the float32 table."""
    f = tmp_path / "d.csv"
    f.write_text("series_id,ts,a\ns,1,1e39\n")
    with pytest.raises(DataError, match=r"d.csv:2: column a: 1e39 is out of range"):
        read_table(f)
    f.write_text("series_id,ts,a\ns,1,-1e15\ns,2,1e20\n")
    assert read_table(f).batch.values[1, 0] == np.float32(1e20)  # scoring takes it (clipped)
    with pytest.raises(DataError, match=r"d.csv:3: column a: 1e20 is out of range"):
        read_table(f, max_abs=1e15)


def test_a_wide_header_reads_and_reorders(tmp_path: Path) -> None:
    n = 20_000
    names = [f"f{i}" for i in range(n)]
    f = tmp_path / "wide.csv"
    f.write_text(
        ",".join([*names[:100], "ts", *names[100:], "series_id"])
        + "\n"
        + ",".join([*map(str, range(100)), "7", *map(str, range(100, n)), "s"])
        + "\n"
    )
    t = read_table(f)
    assert t.feature_names == tuple(names) and t.batch.ts.tolist() == [7.0]
    assert t.batch.values[0].tolist() == list(range(n))
    back = read_table(f, feature_names=names[::-1])
    assert back.batch.values[0].tolist() == list(range(n))[::-1]


class _CountingName(str):
    """A column name that counts how often it is compared (its ``__eq__`` runs for either
    side of ``==`` with a plain ``str``, ``list.index`` and dict/set lookups included)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _CountingName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_matching_the_model_s_feature_names_is_linear_in_the_columns(tmp_path: Path) -> None:
    """Putting n columns in the model's order compared each name with every other (list.index
    in a loop: ~n²/2 comparisons, 45 s for 50,000 columns); a dict makes it ~n."""
    n = 1000
    f = tmp_path / "wide.csv"
    f.write_text(
        "series_id,ts,"
        + ",".join(f"f{i}" for i in range(n))
        + "\ns,1,"
        + ",".join(map(str, range(n)))
        + "\n"
    )
    want = [_CountingName(f"f{i}") for i in reversed(range(n))]
    _CountingName.compared = 0
    t = read_table(f, feature_names=want)
    assert t.batch.values[0].tolist() == list(range(n))[::-1]
    assert _CountingName.compared <= 4 * n

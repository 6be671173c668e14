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

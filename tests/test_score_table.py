"""`stream_vae.score_table`: the detector embedded in a caller's own code, on an in-memory
table (pyarrow, pandas, or a dict of columns), scoring as the stream does."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import stream_vae as sv
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.storage.tabular import read_table

from .conftest import TinyModel


def _columns(tiny: TinyModel) -> dict[str, object]:
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    b = table.batch
    cols: dict[str, object] = {"series_id": list(b.series_ids), "ts": b.ts}
    cols |= {n: b.values[:, j] for j, n in enumerate(tiny.artifact.feature_names)}
    return cols


def test_a_pyarrow_table_scores_as_the_stream_does(tiny: TinyModel) -> None:
    cols = _columns(tiny)
    out = sv.score_table(tiny.model_dir, pa.table(cols), reconstruction=True)
    assert isinstance(out, pa.Table)
    names = tiny.artifact.feature_names
    assert out.column_names[:7] == [
        "series_id", "ts", "score", "recon_score", "latent_score", "over_threshold", "top_feature"
    ]  # fmt: skip
    assert out.column_names[7:] == [f"expected_{n}" for n in names]
    table = read_table(tiny.test_csv, feature_names=names)
    scored = list(LiveModel(tiny.artifact, DetectorOptions(device="cpu")).stream(table.batch))
    want = {
        (k, float(t)): float(r) for s in scored for k, t, r in zip(s.keys, s.ts, s.raw, strict=True)
    }
    got = out.to_pydict()
    assert len(got["score"]) == len(want)
    for sid, ts, score, over in zip(
        got["series_id"], got["ts"], got["score"], got["over_threshold"], strict=True
    ):
        assert score == pytest.approx(want[(sid, ts)], rel=1e-5, abs=1e-6)
        assert over == (score >= tiny.artifact.threshold)


def test_datetimes_a_dict_and_what_is_refused(tiny: TinyModel) -> None:
    cols = _columns(tiny)
    as_dict = sv.score_table(tiny.artifact, cols)
    assert isinstance(as_dict, dict) and len(as_dict["score"]) > 0
    stamped = dict(cols, ts=(np.asarray(cols["ts"]) * 1e9).astype("datetime64[ns]"))
    np.testing.assert_allclose(sv.score_table(tiny.artifact, stamped)["score"], as_dict["score"])
    no_feature = {k: v for k, v in cols.items() if k != tiny.artifact.feature_names[0]}
    with pytest.raises(sv.DataError, match="missing column"):
        sv.score_table(tiny.artifact, no_feature)
    bad = dict(cols, **{tiny.artifact.feature_names[0]: np.full(len(cols["ts"]), np.nan)})  # type: ignore[arg-type]
    with pytest.raises(sv.DataError, match="NaN"):
        sv.score_table(tiny.artifact, bad)
    huge = dict(cols, **{tiny.artifact.feature_names[0]: np.full(len(cols["ts"]), 1e39)})  # type: ignore[arg-type]
    with pytest.raises(sv.DataError, match="float32"):
        sv.score_table(tiny.artifact, huge)
    with pytest.raises(sv.DataError, match="not list"):
        sv.score_table(tiny.artifact, [1, 2])


def test_a_pandas_dataframe_comes_back_a_dataframe(tiny: TinyModel) -> None:
    pd = pytest.importorskip("pandas")
    out = sv.score_table(tiny.artifact, pd.DataFrame(_columns(tiny)))
    assert isinstance(out, pd.DataFrame) and len(out) > 0

"""Artifacts, export parity and the CLI, on a small model trained once per session."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stream_vae.cli.main import main
from stream_vae.config import load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.errors import ArtifactError, ConfigError, DataError
from stream_vae.model.backends import OrtBackend
from stream_vae.runtime.live import DetectorOptions, LiveModel, build_detector, resolve_backend
from stream_vae.storage.export import to_onnx, to_torchscript
from stream_vae.storage.files import load_artifact, save_artifact
from stream_vae.storage.tabular import read_table
from stream_vae.training.build import train_artifact
from stream_vae.training.fit import make_windows

from .conftest import TinyModel

# The largest difference int8 may make to a window's hybrid score, as a share of the threshold
# (docs/operations.md, "int8"; bench/int8.py measures it on ASD and the demo fleet).
INT8_BOUND = 0.25


def _scores(live: LiveModel, path: Path) -> np.ndarray:
    table = read_table(path)
    return np.concatenate([s.smoothed for s in live.stream(table.batch, 500)])


def test_round_trip_gives_identical_scores(tiny: TinyModel, tmp_path: Path) -> None:
    again = load_artifact(save_artifact(tiny.artifact, tmp_path / "copy"))
    assert again.version == tiny.artifact.version
    assert again.feature_names == tiny.artifact.feature_names
    a = _scores(LiveModel(tiny.artifact, DetectorOptions(device="cpu")), tiny.test_csv)
    b = _scores(LiveModel(again, DetectorOptions(device="cpu")), tiny.test_csv)
    assert len(a) > 100
    assert np.array_equal(a, b)


def test_manifest_is_json_with_versions(tiny: TinyModel) -> None:
    m = json.loads((tiny.model_dir / "manifest.json").read_text())
    assert m["version"].startswith("v-") and m["feature_names"] == list(tiny.artifact.feature_names)
    assert {"torch", "numpy", "python"} <= set(m["libraries"])
    assert m["calibration"]["threshold"] > 0
    assert "kl_per_dim" in m["training"]["metrics"]
    history = m["training"]["metrics"]["history"]  # the loss curves, one row per epoch
    assert len(history) == m["training"]["metrics"]["epochs_run"]
    assert {"epoch", "train_loss", "val_loss", "val_kl", "beta"} <= set(history[0])


def test_feature_mismatch_is_refused(tiny: TinyModel) -> None:
    with pytest.raises(ArtifactError, match="feature mismatch"):
        tiny.artifact.check_features([*tiny.artifact.feature_names[:-1], "volts"])
    tiny.artifact.check_features(list(reversed(tiny.artifact.feature_names)))  # order is free


def test_load_refuses_garbage(tmp_path: Path, tiny: TinyModel) -> None:
    with pytest.raises(ArtifactError, match="not a model directory"):
        load_artifact(tmp_path)
    bad = tmp_path / "bad"
    save_artifact(tiny.artifact, bad)
    (bad / "weights.pt").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError):
        load_artifact(bad)


def test_weights_only_refuses_pickled_code(tmp_path: Path, tiny: TinyModel) -> None:
    evil = tmp_path / "evil"
    save_artifact(tiny.artifact, evil)

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("code ran",))

    torch.save({"x": Boom()}, evil / "weights.pt")
    with pytest.raises(ArtifactError):
        load_artifact(evil)


def test_export_parity(tiny: TinyModel, tmp_path: Path) -> None:
    model = tiny.artifact.model()
    x = torch.from_numpy(
        np.random.default_rng(0).normal(size=(37, *tiny.window_shape)).astype(np.float32)
    )
    with torch.no_grad():
        eager = model(x, sample=False)
    ts = torch.jit.load(str(to_torchscript(model, tmp_path / "m.ts")))
    with torch.no_grad():
        traced = ts(x)
    for a, b in zip(traced, (eager.recon, eager.mu, eager.logvar), strict=True):
        assert float((a - b).abs().max()) <= 1e-4
    ort = OrtBackend(to_onnx(model, tmp_path / "m.onnx").read_bytes(), threads=1)
    recon, _, mu, logvar = ort(x.numpy())
    for a, b in zip((recon, mu, logvar), (eager.recon, eager.mu, eager.logvar), strict=True):
        assert float(np.abs(a - b.numpy()).max()) <= 1e-4
    # the onnx backend (its graph exported in memory) scores windows exactly like the eager one
    # (same score_parts)
    raw = np.random.default_rng(1).normal(size=(50, *tiny.window_shape)).astype(np.float32)
    eager_det = build_detector(tiny.artifact, DetectorOptions(device="cpu"))
    ort_det = build_detector(
        tiny.artifact, DetectorOptions(device="cpu", backend="onnx", threads=1)
    )
    assert isinstance(ort_det.backend, OrtBackend)
    eager_parts, ort_parts = eager_det.infer(raw), ort_det.infer(raw)
    assert np.allclose(eager_parts.recon_features, ort_parts.recon_features, atol=1e-4)
    assert np.allclose(eager_parts.latent, ort_parts.latent, rtol=1e-4, atol=1e-4)


def test_int8_takes_7_bit_weights_and_warns_on_a_cpu_without_vnni(
    tiny: TinyModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the CPU has no VNNI, int8 quantises the weights to 7 bits and says that fp32 is
    likely better there; where it has, 8 bits and no warning."""
    import stream_vae.runtime.live as live

    asked: list[bool] = []
    real = live.int8_graph

    def spy(graph: bytes, reduce_range: bool = False) -> bytes:
        asked.append(reduce_range)
        return real(graph, reduce_range)

    monkeypatch.setattr(live, "int8_graph", spy)
    int8 = DetectorOptions(device="cpu", backend="onnx", precision="int8", threads=1)
    for vnni in (True, False):
        monkeypatch.setattr(live, "int8_reduce_range", lambda vnni=vnni: not vnni)
        caplog.clear()
        with caplog.at_level("WARNING", logger="stream_vae.runtime.live"):
            build_detector(tiny.artifact, int8)
        assert asked[-1] is (not vnni)
        assert ("without VNNI" in caplog.text) is (not vnni)
    build_detector(tiny.artifact, dataclasses.replace(int8, precision="fp32"))
    assert len(asked) == 2  # fp32 quantises nothing


def test_int8_is_onnx_runtime_and_scores_within_its_documented_bound(tiny: TinyModel) -> None:
    """``service.precision = "int8"``: auto takes ONNX Runtime with the weights quantised to
    int8, and the hybrid score of the tiny model's test windows stays within the bound
    docs/operations.md gives (the largest difference at most INT8_BOUND of the threshold)."""
    art = tiny.artifact
    table = read_table(tiny.test_csv, feature_names=art.feature_names)
    windows = make_windows(table.batch, art.vae_config.window).values
    int8 = DetectorOptions(device="cpu", backend="auto", precision="int8", threads=1)
    assert resolve_backend(art, int8)[0] == "onnx"
    with pytest.raises(ConfigError, match="int8"):
        build_detector(art, dataclasses.replace(int8, backend="torch"))
    fp32 = build_detector(art, DetectorOptions(device="cpu", backend="onnx", threads=1))
    q = build_detector(art, int8)
    assert isinstance(q.backend, OrtBackend)
    a, b = art.hybrid.raw(fp32.infer(windows)).raw, art.hybrid.raw(q.infer(windows)).raw
    worst = float(np.abs(a - b).max()) / art.threshold
    flips = float(np.mean((a >= art.threshold) != (b >= art.threshold)))
    print(f"int8: largest difference {worst:.3f} x threshold, {flips:.2%} of windows flip")
    assert 0 < worst <= INT8_BOUND  # quantised (not the same graph), and within the bound
    assert flips <= 0.01


def test_cli_score_writes_one_row_per_window(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny.model_dir),
                "--data",
                str(tiny.test_csv),
                "--out",
                str(out),
                "--batch",
                "333",
            ]
        )
        == 0
    )
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["series_id", "ts", "score", "raw_score", "threshold", "is_alert"]
    assert len(rows) == len(
        _scores(LiveModel(tiny.artifact, DetectorOptions(device="cpu")), tiny.test_csv)
    )
    assert {r["is_alert"] for r in rows} <= {"0", "1"}
    assert "alert episodes" in capsys.readouterr().out


def test_cli_score_writes_the_reconstruction_next_to_the_scores(
    tiny: TinyModel, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    args = ["score", "--model", str(tiny.model_dir), "--data", str(tiny.test_csv)]
    assert main([*args, "--out", str(out), "--reconstruction"]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    names = tiny.artifact.feature_names
    assert list(rows[0])[6:] == [f"expected_{f}" for f in names]
    live = LiveModel(tiny.artifact, DetectorOptions(device="cpu"))
    table = read_table(tiny.test_csv, feature_names=names)
    want = np.concatenate(
        [s.expected for s in live.stream(table.batch.in_series_time_order()[0], 2048)]
    )
    got = np.array([[float(r[f"expected_{f}"]) for f in names] for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cli_score_imputes_missing_values_with_the_model(tiny: TinyModel, tmp_path: Path) -> None:
    with tiny.test_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    names = list(tiny.artifact.feature_names)
    sid = rows[0]["series_id"]
    mine = [i for i, r in enumerate(rows) if r["series_id"] == sid]
    first, middle = mine[0], mine[40]  # before any window, and well after the first
    rows[first][names[0]] = ""
    rows[middle][names[1]] = "nan"
    data = tmp_path / "gaps.csv"
    with data.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out, filled = tmp_path / "scores.csv", tmp_path / "filled.csv"
    args = ["score", "--model", str(tiny.model_dir), "--data", str(data), "--out", str(out)]
    assert main(args) == 65  # a missing value is refused unless asked to impute
    assert main([*args, "--impute", str(filled)]) == 0
    with filled.open() as fh:
        back = {(r["series_id"], float(r["ts"])): r for r in csv.DictReader(fh)}
    assert len(back) == len(rows)

    def at(i: int) -> dict[str, str]:
        return back[(rows[i]["series_id"], float(rows[i]["ts"]))]

    assert at(first)["imputed"] == f"{names[0]} (last)"  # no window yet: the training mean
    assert float(at(first)[names[0]]) == pytest.approx(float(tiny.artifact.scaler.mean[0]))
    assert at(middle)["imputed"] == names[1]  # the model's value
    guess = float(at(middle)[names[1]])
    carried = float(rows[mine[39]][names[1]])  # what carrying forward would have given
    assert np.isfinite(guess) and guess != pytest.approx(carried, abs=1e-6)
    assert at(middle)[names[0]] == f"{float(rows[middle][names[0]]):.7g}"  # others unchanged
    assert sum(1 for r in back.values() if r["imputed"]) == 2


def test_cli_export(tiny: TinyModel, tmp_path: Path) -> None:
    assert main(["export", "--model", str(tiny.model_dir), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "model.onnx").stat().st_size > 1000
    assert (tmp_path / "x" / "model.ts").stat().st_size > 1000


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("series_id,ts,a,b\n", "no data rows"),
        ("id,ts,a,b\ns,1,2,3\n", "missing column(s) ['series_id']"),
        ("series_id,ts\ns,1\n", "no feature columns"),
        ("series_id,ts,a,b\ns,1,2,x\n", ":2: column b: not a number: 'x'"),
        ("series_id,ts,a,b\ns,1,2,nan\n", ":2: column b: nan value"),
        ("series_id,ts,a,b\ns,1,2\n", ":2: 3 cells, header has 4"),
        ("series_id,ts,a,b\ns,soon,2,3\n", ":2: column ts: cannot parse timestamp"),
        ("series_id,ts,a,a\ns,1,2,3\n", "duplicate column"),
    ],
)
def test_cli_bad_training_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    f = _write(tmp_path / "d.csv", content)
    assert main(["train", "--data", str(f), "--out", str(tmp_path / "m"), "--no-progress"]) == 65
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_score_wrong_feature_set(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = tiny.artifact.feature_names
    f = _write(
        tmp_path / "d.csv",
        "series_id,ts,"
        + ",".join([*names[:-1], "volts"])
        + "\n"
        + "s,1,"
        + ",".join("1" for _ in names)
        + "\n",
    )
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny.model_dir),
                "--data",
                str(f),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 65
    )
    err = capsys.readouterr().err
    assert "missing ['" + names[-1] + "']" in err and "unknown ['volts']" in err


def test_cli_missing_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "score",
                "--model",
                str(tmp_path),
                "--data",
                str(tmp_path / "x.csv"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 66
    )
    assert "not a model directory" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 65
    assert "no such file" in capsys.readouterr().err


def test_cli_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM_VAE_WINDOW__SIZE", "1")
    f = _write(tmp_path / "d.csv", "series_id,ts,a\ns,1,2\n")
    assert main(["train", "--data", str(f), "--out", str(tmp_path / "m")]) == 78
    err = capsys.readouterr().err
    assert err.startswith("error: window.size") and err.count("\n") == 1


def test_cli_score_onnx_backend_matches_torch(tiny: TinyModel, tmp_path: Path) -> None:
    outs = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.csv"
        args = ["score", "--model", str(tiny.model_dir), "--data", str(tiny.test_csv)]
        assert main([*args, "--out", str(out), "--backend", backend, "--device", "cpu"]) == 0
        with out.open() as fh:
            outs[backend] = np.array([float(r["raw_score"]) for r in csv.DictReader(fh)])
    assert len(outs["torch"]) > 100
    assert np.allclose(outs["torch"], outs["onnx"], rtol=1e-3, atol=1e-3)


def test_cli_score_reports_skipped_late_rows(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = tiny.test_csv.read_text().splitlines()
    f = tmp_path / "late.csv"
    f.write_text("\n".join([*lines[:200], lines[5], *lines[200:]]) + "\n")  # row 5 again, late
    out = tmp_path / "o.csv"
    assert main(["score", "--model", str(tiny.model_dir), "--data", str(f), "--out", str(out)]) == 0
    assert "1 rows repeating a timestamp of their series were skipped" in capsys.readouterr().out


def _as_format_1(manifest: dict[str, object], scoring_extra: dict[str, object]) -> bytes:
    """The manifest as 0.1 wrote it: "window" and "scoring" with the deployment's keys."""
    m = dict(manifest)
    spec = m.pop("spec")
    assert isinstance(spec, dict)
    m["format_version"] = 1
    m["window"] = {**spec["window"], "idle_ttl_s": None, "max_series": None}
    m["scoring"] = {**spec["scoring"], "novelty_window": 1000, **scoring_extra}
    return json.dumps(m).encode()


def test_a_format_1_model_loads_with_its_id_and_scores_and_says_what_moved(
    tiny: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old"
    save_artifact(tiny.artifact, old)
    manifest = json.loads((old / "manifest.json").read_bytes())
    (old / "manifest.json").write_bytes(_as_format_1(manifest, {"hysteresis": 0.6, "top_k": 3}))
    with caplog.at_level("WARNING", logger="stream_vae.storage.artifact"):
        art = load_artifact(old)
    assert art.version == tiny.artifact.version and art.spec == tiny.artifact.spec
    assert "'hysteresis': 0.6" in caplog.text and "top_k" not in caplog.text  # defaults unsaid
    assert art.manifest()["format_version"] == 2  # saved again, it is format 2
    a = LiveModel(art, DetectorOptions(device="cpu"))
    b = LiveModel(tiny.artifact, DetectorOptions(device="cpu"))
    np.testing.assert_array_equal(_scores(a, tiny.test_csv), _scores(b, tiny.test_csv))


def test_a_spec_that_does_not_match_the_network_is_refused(tiny: TinyModel, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    save_artifact(tiny.artifact, bad)
    manifest = json.loads((bad / "manifest.json").read_bytes())
    manifest["spec"]["window"]["size"] += 1  # the store would cut windows the model cannot read
    (bad / "manifest.json").write_bytes(json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="the spec"):
        load_artifact(bad)


def _train(tiny: TinyModel, out: Path, *extra: str) -> int:
    args = ["--config", str(tiny.config), "train", "--data", str(tiny.train_csv)]
    return main([*args, "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def test_train_never_deletes_what_it_did_not_write(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --out .` used to delete the working directory (issue 16): a directory holding
    anything but a model is refused before training, and --force only adds the two files."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("keep me")
    assert _train(tiny, work) == 66
    assert "not empty and not a model directory" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["data.csv"]
    assert _train(tiny, work, "--force") == 0
    assert (work / "data.csv").read_text() == "keep me"
    assert load_artifact(work).version == tiny.artifact.version  # same data, same seed
    # a file where the directory should be
    (tmp_path / "f").write_text("x")
    assert _train(tiny, tmp_path / "f") == 66
    assert "not a directory" in capsys.readouterr().err and (tmp_path / "f").read_text() == "x"


def test_a_model_directory_is_replaced_whole_and_leaves_nothing_behind(
    tiny: TinyModel, tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    save_artifact(tiny.artifact, dest)
    other = dataclasses.replace(
        tiny.artifact, hybrid=tiny.artifact.hybrid.with_alpha(0.5), version=""
    )
    assert other.version != tiny.artifact.version
    save_artifact(other, dest)
    assert load_artifact(dest).version == other.version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary siblings left
    (tmp_path / "empty").mkdir()
    save_artifact(tiny.artifact, tmp_path / "empty")  # an empty directory is filled
    assert load_artifact(tmp_path / "empty").version == tiny.artifact.version


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m["calibration"].update(threshold=m["calibration"]["threshold"] * 2),
        lambda m: m["scaler"]["std"].__setitem__(0, m["scaler"]["std"][0] + 1.0),
        lambda m: m["hybrid"].update(alpha=0.5),
    ],
    ids=["threshold", "scaler", "alpha"],
)
def test_a_tampered_manifest_is_refused_not_served_under_its_id(
    tiny: TinyModel, tmp_path: Path, tamper: Any
) -> None:
    """Issue 16: an edited threshold loaded and promoted under the original id."""
    dest = tmp_path / "m"
    save_artifact(tiny.artifact, dest)
    manifest = json.loads((dest / "manifest.json").read_bytes())
    tamper(manifest)
    (dest / "manifest.json").write_bytes(json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match=f"says it is {tiny.artifact.version} but its content"):
        load_artifact(dest)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _score(tiny: TinyModel, data: Path, out: Path, *extra: str) -> int:
    args = ["score", "--model", str(tiny.model_dir), "--data", str(data), "--out", str(out)]
    return main([*args, *extra])


_UNREADABLE = {
    "latin-1": (b"series_id,ts,a\ns,1,caf\xe9\n", "d.csv:2: not UTF-8 text (byte 0xe9)"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", "d.csv:1: not UTF-8 text (byte 0x89)"),
    "10MB-cell": (
        b"series_id,ts,a\ns,1," + b"1" * 10_000_000 + b"\n",
        "d.csv:2: a cell longer than",
    ),
    "blank-lines": (
        b"series_id,ts,a\n\ns,1,1\n\n\ns,2,x\n",
        "d.csv:6: column a: not a number: 'x'",
    ),
}


@pytest.mark.parametrize(
    ("command", "case"),
    [
        *((c, k) for c in ("train", "score") for k in _UNREADABLE),
        # evaluate's CSV reader (evaluation/datasets.py) checks the cells itself
        *(("evaluate", k) for k in ("latin-1", "binary", "10MB-cell")),
    ],
)
def test_cli_unreadable_files_are_one_error_line_with_file_and_line(
    tiny: TinyModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    case: str,
) -> None:
    """Binary and Latin-1 files and a 10 MB cell were tracebacks; blank lines shifted the line."""
    content, message = _UNREADABLE[case]
    f = tmp_path / "d.csv"
    f.write_bytes(content)
    if command == "evaluate":
        code = main(["evaluate", "csv", str(f), "--out", str(tmp_path / "report")])
    elif command == "score":
        code = _score(tiny, f, tmp_path / "o.csv")
    else:
        code = main(["train", "--data", str(f), "--out", str(tmp_path / "m"), "--no-progress"])
    assert code == 65
    assert message in _one_error_line(capsys)


def test_cli_evaluate_names_a_non_utf8_file_of_an_smd_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for sub, text in (
        ("train", b"1,2\n3,4\n"),
        ("test", b"1,2\n\n3,\xe9\n"),
        ("test_label", b"0\n1\n"),
    ):
        (tmp_path / "smd" / sub).mkdir(parents=True)
        (tmp_path / "smd" / sub / "m-1.txt").write_bytes(text)
    assert main(["evaluate", "smd", str(tmp_path / "smd"), "--out", str(tmp_path / "r")]) == 65
    assert "m-1.txt:3: not UTF-8 text (byte 0xe9)" in _one_error_line(capsys)


def test_cli_train_out_under_a_regular_file_is_one_error_line_before_training(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out FILE/model` trained, then failed with a FileExistsError traceback."""
    (tmp_path / "f").write_text("x")
    assert _train(tiny, tmp_path / "f" / "model") == 2
    assert "/f is a file, not a directory" in _one_error_line(capsys)
    assert (tmp_path / "f").read_text() == "x"
    assert _score(tiny, tiny.test_csv, tmp_path / "f" / "scores.csv") == 2  # score's --out too
    assert "/f is a file, not a directory" in _one_error_line(capsys)
    assert _score(tiny, tiny.test_csv, tmp_path) == 2
    assert "exists and is a directory" in _one_error_line(capsys)


@pytest.mark.parametrize("command", ["train", "score", "demo"])
def test_cli_device_cuda_without_cuda_is_one_error_line(
    tiny: TinyModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """It was an AssertionError traceback from inside torch ("not compiled with CUDA")."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if command == "train":
        args = ["train", "--data", str(tiny.train_csv), "--out", str(tmp_path / "m")]
    elif command == "score":
        args = ["score", "--model", str(tiny.model_dir), "--data", str(tiny.test_csv)]
        args += ["--out", str(tmp_path / "o.csv")]
    else:
        args = ["demo", "--series", "2", "--features", "2", "--steps", "100"]
        args += ["--out", str(tmp_path / "demo")]
    for device in ("cuda", "cuda:1"):
        assert main([*args, "--device", device]) == 2
        assert f"--device {device}: CUDA is not available" in _one_error_line(capsys)
    assert main([*args, "--device", "gpu"]) == 2
    assert "--device gpu: not a device" in _one_error_line(capsys)


def test_cli_run_with_service_device_cuda_without_cuda_is_one_error_line(
    tiny: TinyModel, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` takes its device from settings: checked before Kafka is tried, as --device is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("STREAM_VAE_SERVICE__DEVICE", "cuda")
    assert main(["run", "--model", str(tiny.model_dir)]) == 78
    assert "service.device cuda: CUDA is not available" in _one_error_line(capsys)


def test_cli_train_refuses_absurd_values_at_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1e20 among readings near 1 trained a model with that sensor's std at 5e18."""
    rows = [f"s,{i},{i % 7},{1e20 if i == 150 else 1.0}" for i in range(400)]
    f = _write(tmp_path / "d.csv", "\n".join(["series_id,ts,a,b", *rows]) + "\n")
    assert main(["train", "--data", str(f), "--out", str(tmp_path / "m"), "--no-progress"]) == 65
    assert "d.csv:152: column b: 1e+20 is out of range (|value| > 1e+15)" in _one_error_line(capsys)


def test_train_artifact_refuses_absurd_values_by_series_and_time(tiny: TinyModel) -> None:
    table = read_table(tiny.train_csv)
    values = table.batch.values.copy()
    values[10, 1], values[20, 0] = -3e17, np.nan  # the first in the batch's order is named
    b = RecordBatch(table.batch.series_ids, table.batch.ts, values)
    with pytest.raises(DataError) as info:
        train_artifact(b, table.feature_names, load_settings(tiny.config), device="cpu")
    assert str(info.value) == (
        f"series {b.series_ids[10]} at ts {float(b.ts[10])!r}: feature {table.feature_names[1]} is "
        "-3e+17: training values must be finite and within ±1e+15"
    )


def test_cli_score_scores_each_series_in_time_order(
    tiny: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose rows are not in time order scored 0 windows (every row late but the first
    few); now each series is sorted in the places it holds, and the output is the same as for
    the sorted file."""
    header, *body = tiny.test_csv.read_text().splitlines()
    by_series: dict[str, list[str]] = {}
    for line in body:
        by_series.setdefault(line.split(",")[0], []).append(line)
    backwards = {s: iter(lines[::-1]) for s, lines in by_series.items()}
    shuffled = tmp_path / "backwards.csv"
    shuffled.write_text(
        "\n".join([header, *(next(backwards[line.split(",")[0]]) for line in body)]) + "\n"
    )
    assert _score(tiny, tiny.test_csv, tmp_path / "sorted.csv") == 0
    capsys.readouterr()
    assert _score(tiny, shuffled, tmp_path / "backwards_scores.csv") == 0
    out = capsys.readouterr().out
    n = len(body) - sum(len(v) % 2 for v in by_series.values())  # the middle row stays
    assert f"note: {n} rows were out of time order within their series" in out
    assert (tmp_path / "backwards_scores.csv").read_bytes() == (
        tmp_path / "sorted.csv"
    ).read_bytes()

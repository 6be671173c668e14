"""`stream-vae export --to triton`: a Triton Inference Server model repository whose
config.pbtxt matches the ONNX graph beside it (parsed here: no Triton runs on this machine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from stream_vae.cli.main import main
from stream_vae.model.backends import Deterministic

from .conftest import TinyModel


def _pbtxt(text: str) -> dict[str, Any]:
    """Protobuf text format, as far as config.pbtxt uses it: ``key: value``, ``key { ... }``,
    ``key [ {...}, ... ]``; a repeated message becomes a list."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)
    pos = 0

    def value() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end: str | None) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            out[key] = value()
        pos += 1
        return out

    return message(None)


def test_the_triton_repository_matches_its_onnx_graph(tiny: TinyModel, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    assert (
        main(["export", "--model", str(tiny.model_dir), "--out", str(out), "--to", "triton"]) == 0
    )
    config = _pbtxt((out / "stream_vae" / "config.pbtxt").read_text())
    graph = onnx.load(str(out / "stream_vae" / "1" / "model.onnx"))
    assert config["name"] == "stream_vae" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] >= 4096
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] and batching["max_queue_delay_microseconds"] > 0

    def dims(value_info: Any) -> list[int | str]:
        return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]

    # Triton's dims leave out the batch axis; the graph's first axis is the dynamic batch
    for declared, actual in (
        (config["input"], list(graph.graph.input)),
        (config["output"], list(graph.graph.output)),
    ):
        assert [t["name"] for t in declared] == [v.name for v in actual]
        for t, v in zip(declared, actual, strict=True):
            assert t["data_type"] == "TYPE_FP32"
            assert isinstance(dims(v)[0], str) and t["dims"] == dims(v)[1:], (t, dims(v))
    w, d = tiny.window_shape
    assert config["input"][0]["dims"] == [w, d]
    # and the graph computes what the model does, at a batch size Triton may form
    x = np.random.default_rng(0).normal(size=(300, w, d)).astype(np.float32)
    session = ort.InferenceSession(str(out / "stream_vae" / "1" / "model.onnx"))
    got = session.run(None, {"x": x})
    with torch.no_grad():
        want = Deterministic(tiny.artifact.model().eval())(torch.from_numpy(x))
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4)

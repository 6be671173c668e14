"""The GPU inference path (TorchBackend's precision, pinned staging, CUDA graphs, compile),
run on the CPU with the same code: device="cpu". Real-CUDA checks are skipped without a GPU.

The bf16 parity bound asserted here is the one documented in docs/operations.md ("GPU
inference"); it was measured on the CPU on four trained models (W 16–64, hidden 16–64).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pytest
import torch

from stream_vae.errors import ConfigError, ShapeError
from stream_vae.model.backends import TorchBackend, cpu_bf16_lstm
from stream_vae.model.gpu import GraphRunner, HostStaging, graph_bucket
from stream_vae.model.vae import LSTMVAE, VAEConfig, VAEOutput
from stream_vae.runtime.live import DetectorOptions, LiveModel, build_detector
from stream_vae.storage.artifact import Artifact
from stream_vae.storage.tabular import read_table

from .conftest import TinyModel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Documented bf16 vs fp32 bound on the raw hybrid score (docs/operations.md). Measured on the
# CPU over four trained models: relative error median 0.3–0.8 %, p99 1.8–4.6 %; Spearman
# ≥ 0.9996; alert decisions flipped on 0.01–0.07 % of windows (on `tiny`: 0.12 %, 0.54 %, 0).
MEDIAN_REL_BOUND = 0.01
P99_REL_BOUND = 0.05
SPEARMAN_FLOOR = 0.999
FLIP_SHARE_BOUND = 0.005


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _windows(n: int, w: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, w, d)).astype(np.float32)  # (n, W, d)


def _model(w: int = 16, d: int = 3, gaussian: bool = False) -> LSTMVAE:
    torch.manual_seed(0)
    return LSTMVAE(VAEConfig(d, w, hidden=16, latent=4, gaussian_output=gaussian)).eval()


def _scores(art: Artifact, path: Any, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Raw and smoothed scores of every window of the test file through the LiveModel."""
    live = LiveModel(art, DetectorOptions(device="cpu", **options))
    table = read_table(path, feature_names=art.feature_names)
    out = list(live.stream(table.batch, 1000))
    return np.concatenate([o.raw for o in out]), np.concatenate([o.smoothed for o in out])


def _ranks(a: np.ndarray) -> np.ndarray:
    r = np.empty(len(a))
    r[np.argsort(a, kind="stable")] = np.arange(len(a))
    return r


# -- the CPU reference path is unchanged ----------------------------------------------------
@pytest.mark.parametrize("gaussian", [False, True])
def test_fp32_default_is_bit_identical_to_the_eager_forward(gaussian: bool) -> None:
    model = _model(gaussian=gaussian)
    x = _windows(37, 16, 3)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x), sample=False)  # what TorchBackend did before options
    for backend in (TorchBackend(model, "cpu"), TorchBackend(model, "cpu", precision="fp32")):
        recon, lv, mu, logvar = backend(x)
        assert recon.dtype == np.float32
        assert np.array_equal(recon, ref.recon.numpy())
        assert np.array_equal(mu, ref.mu.numpy())
        assert np.array_equal(logvar, ref.logvar.numpy())
        assert (lv is None) == (ref.recon_logvar is None)
        if lv is not None and ref.recon_logvar is not None:
            assert np.array_equal(lv, ref.recon_logvar.numpy())


def test_artifact_detector_fp32_matches_default(tiny: TinyModel) -> None:
    x = _windows(300, *tiny.window_shape)
    a = build_detector(tiny.artifact, DetectorOptions(device="cpu")).infer(x)
    b = build_detector(
        tiny.artifact, DetectorOptions(device="cpu", precision="fp32", compile=False)
    ).infer(x)
    assert np.array_equal(a.recon_features, b.recon_features)
    assert np.array_equal(a.latent, b.latent)


def test_live_model_threads_the_detector_options_to_the_backend(tiny: TinyModel) -> None:
    # bf16 where this CPU runs it (else the backend refuses it: see the bf16 tests below)
    precision: Literal["bf16", "fp32"] = "bf16" if cpu_bf16_lstm() else "fp32"
    live = LiveModel(
        tiny.artifact, DetectorOptions(device="cpu", precision=precision, max_batch=123)
    )
    assert isinstance(live.detector.backend, TorchBackend)
    assert live.detector.backend.precision == precision and live.detector.max_batch == 123
    default = LiveModel(tiny.artifact, DetectorOptions(device="cpu")).detector.backend
    assert isinstance(default, TorchBackend) and default.precision == "fp32"


# -- bf16 parity ------------------------------------------------------------------------------
NO_CPU_BF16 = pytest.mark.skipif(
    not cpu_bf16_lstm(), reason="this CPU has no bfloat16 LSTM kernel (refused: see below)"
)


@NO_CPU_BF16
def test_bf16_scores_stay_within_the_documented_bound(tiny: TinyModel) -> None:
    raw32, smooth32 = _scores(tiny.artifact, tiny.test_csv)
    raw16, smooth16 = _scores(tiny.artifact, tiny.test_csv, precision="bf16")
    assert raw16.shape == raw32.shape and len(raw32) >= 500
    assert np.abs(raw16 - raw32).max() > 0  # autocast really ran in bf16
    rel = np.abs(raw16 - raw32) / np.abs(raw32)
    assert np.median(rel) <= MEDIAN_REL_BOUND
    assert np.quantile(rel, 0.99) <= P99_REL_BOUND
    assert np.corrcoef(_ranks(raw32), _ranks(raw16))[0, 1] >= SPEARMAN_FLOOR
    thr = tiny.artifact.threshold
    flips = (smooth32 >= thr) != (smooth16 >= thr)
    assert (smooth32 >= thr).any()  # the decision is exercised, not trivially all-normal
    assert flips.mean() <= FLIP_SHARE_BOUND


@NO_CPU_BF16
def test_bf16_outputs_come_back_as_float32() -> None:
    out = TorchBackend(_model(gaussian=True), "cpu", precision="bf16")(_windows(5, 16, 3))
    assert all(a is not None and a.dtype == np.float32 for a in out)


def test_bf16_on_a_cpu_without_its_lstm_kernel_is_refused_when_the_backend_is_built() -> None:
    """Where oneDNN has no bfloat16 LSTM kernel, the backend refuses bf16 up front (a clear
    setting error at start-up), instead of the first batch failing in the scoring loop."""
    if cpu_bf16_lstm():
        TorchBackend(_model(), "cpu", precision="bf16")(_windows(2, 16, 3))
        return
    with pytest.raises(ConfigError, match="no bfloat16 LSTM kernel"):
        TorchBackend(_model(), "cpu", precision="bf16")


# -- refused options --------------------------------------------------------------------------
def test_fp16_on_the_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        TorchBackend(_model(), "cpu", precision="fp16")


def test_graphs_on_the_cpu_and_unknown_precision_are_refused(tiny: TinyModel) -> None:
    with pytest.raises(ConfigError, match="cuda_graphs needs a CUDA device"):
        TorchBackend(_model(), "cpu", cuda_graphs=True)
    with pytest.raises(ConfigError, match="precision must be"):
        TorchBackend(_model(), "cpu", precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="torch backend only"):
        build_detector(
            tiny.artifact, DetectorOptions(device="cpu", backend="onnx", precision="bf16")
        )


# -- pinned staging and graph padding (logic, on the CPU) -------------------------------------
def test_host_staging_reuses_its_buffer_and_grows_by_powers_of_two() -> None:
    staging = HostStaging((16, 3), pin=False)
    assert staging.capacity == 0
    a = _windows(100, 16, 3, seed=1)
    view = staging.load(a)
    assert staging.capacity == 128 and view.shape == (100, 16, 3)
    assert np.array_equal(view.numpy(), a)
    ptr = view.data_ptr()
    b = _windows(50, 16, 3, seed=2)
    view = staging.load(b)
    assert view.data_ptr() == ptr and staging.capacity == 128  # reused, not reallocated
    assert np.array_equal(view.numpy(), b)
    c = _windows(300, 16, 3, seed=3)
    view = staging.load(c)
    assert staging.capacity == 512 and np.array_equal(view.numpy(), c)
    with pytest.raises(ShapeError, match=r"expected shape \(\*, 16, 3\)"):
        staging.load(_windows(2, 16, 4))


def test_graph_bucket_is_the_next_power_of_two_above_the_floor() -> None:
    assert [graph_bucket(n) for n in (1, 255, 256, 257, 4096, 4097)] == [
        256,
        256,
        256,
        512,
        4096,
        8192,
    ]
    assert [graph_bucket(n, smallest=1) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]


def test_graph_runner_pads_to_buckets_and_slices_back() -> None:
    model = _model(gaussian=True)

    def forward(x: torch.Tensor) -> VAEOutput:
        return model(x, sample=False)  # type: ignore[no-any-return]

    runner = GraphRunner(forward, (16, 3), torch.device("cpu"))
    with torch.inference_mode():
        # 300 fills rows of bucket 512; then 200 and 3 run in bucket 256 whose rows 3..199
        # still hold the previous chunk: they must not leak into the 3 rows asked for.
        for n, seed in ((300, 1), (200, 2), (3, 3), (300, 4)):
            x = _windows(n, 16, 3, seed)
            got = runner(torch.from_numpy(x))
            ref = model(torch.from_numpy(x), sample=False)
            assert got.recon.shape == (n, 16, 3) and got.mu.shape == (n, 4)
            assert got.recon_logvar is not None and ref.recon_logvar is not None
            for g, r in zip(got, ref, strict=True):
                np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-5, atol=1e-6)
    assert runner.buckets == [256, 512]


# -- torch.compile --------------------------------------------------------------------------
def test_compile_failure_falls_back_to_eager_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("inductor: no compiler\nlong trace")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: broken)
    model = _model()
    backend = TorchBackend(model, "cpu", compile=True)
    x = _windows(8, 16, 3)
    with caplog.at_level(logging.WARNING, logger="stream_vae.model.backends"):
        first, second = backend(x), backend(x)
    eager = TorchBackend(model, "cpu")(x)
    for a, b, c in zip(first, second, eager, strict=True):
        assert (a is None and c is None) or np.array_equal(a, c)
        assert (b is None and c is None) or np.array_equal(b, c)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "inductor: no compiler" in warnings[0].getMessage()
    assert "long trace" not in warnings[0].getMessage()


def test_real_compile_matches_eager_on_the_cpu() -> None:
    model = _model()
    x = _windows(40, 16, 3)
    compiled = TorchBackend(model, "cpu", compile=True)
    for a, b in zip(compiled(x), TorchBackend(model, "cpu")(x), strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert compiled._compiled is not None  # it compiled; no silent fallback


def test_shape_errors_are_not_taken_for_compile_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # "compiled" = eager
    backend = TorchBackend(_model(), "cpu", compile=True)
    with pytest.raises(ShapeError):
        backend(_windows(2, 8, 3))
    assert backend._compiled is not None  # still compiled: a bad input is not a compile failure


# -- real CUDA (skipped without a GPU) -----------------------------------------------------------
@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_scores_match_the_cpu_reference(tiny: TinyModel, precision: str) -> None:
    x = _windows(5000, *tiny.window_shape)
    hybrid = tiny.artifact.hybrid
    ref = hybrid.raw(build_detector(tiny.artifact, DetectorOptions(device="cpu")).infer(x)).raw
    for graphs in (False, True):
        options = DetectorOptions(device="cuda", precision=precision, cuda_graphs=graphs)  # type: ignore[arg-type]
        det = build_detector(tiny.artifact, options)
        raw = hybrid.raw(det.infer(x)).raw
        rel = np.abs(raw - ref) / np.abs(ref)
        # fp32 on CUDA may use TF32 inside cuDNN's LSTM: bounded by the half-precision bound.
        assert np.median(rel) <= MEDIAN_REL_BOUND, (precision, graphs)
        assert np.quantile(rel, 0.99) <= P99_REL_BOUND, (precision, graphs)
        assert np.corrcoef(_ranks(ref), _ranks(raw))[0, 1] >= SPEARMAN_FLOOR


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_equal_eager(precision: str) -> None:
    model = _model(w=64, d=8)
    eager = TorchBackend(model, "cuda", precision=precision)  # type: ignore[arg-type]
    graphs = TorchBackend(model, "cuda", precision=precision, cuda_graphs=True)  # type: ignore[arg-type]
    for n in (300, 3, 1000):
        x = _windows(n, 64, 8, seed=n)
        for a, b in zip(eager(x), graphs(x), strict=True):
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert graphs._staging is not None and graphs._staging._buf.is_pinned()

"""Dynamic int8 quantisation of the model on the CPU: speed against float32, and score parity.

    python bench/int8.py [--repeats 5] [--threads 2] [--out bench/results/int8.md]

Two runtimes, each against its own float32 in the same run:
  torch : ``torch.ao.quantization.quantize_dynamic`` of the LSTMs and linear layers (int8
          weights, activations quantised per call)
  ort   : ``onnxruntime.quantization.quantize_dynamic`` of the ONNX graph (QInt8 weights)
Speed: the bare forward pass at batch 256 and 2,048 on a model of W = 64, d = 8, hidden 64
(the sizes the throughput targets name); windows/s, median of --repeats timed loops.
Parity: a model trained on the demo's fleet (W = 32), its detector's hybrid score (before the
EMA) on the fleet's test windows, quantised against float32: the largest absolute difference,
in units of the score (nats of surprise), next to the calibrated threshold, and the share of
windows whose side of the threshold changes.
ASD (--asd, default ../shared/data/asd; skipped where absent): every server under
bench/configs/asd.toml, trained once, scored through the product's path with
``service.precision`` fp32 and int8 (both on ONNX Runtime): VUS-PR, AUC-PR and event F1 of each,
and the largest difference of the smoothed scores over the threshold. Only public tools
(time.perf_counter).
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stream_vae.config import load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.evaluation.datasets import read_smd
from stream_vae.evaluation.detectors import score_product, train_product
from stream_vae.evaluation.runner import series_metrics
from stream_vae.model.backends import OrtBackend, TorchBackend, int8_graph, onnx_graph
from stream_vae.model.detector import Detector
from stream_vae.model.vae import LSTMVAE, VAEConfig
from stream_vae.runtime.live import int8_reduce_range
from stream_vae.storage.artifact import Artifact
from stream_vae.training.build import train_artifact
from stream_vae.training.fit import make_windows

ROOT = Path(__file__).resolve().parent.parent
Forward = Callable[[np.ndarray], object]


def torch_int8(model: LSTMVAE) -> LSTMVAE:
    q = copy.deepcopy(model).cpu().eval()
    return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-any-return]
        q, {nn.LSTM, nn.Linear}, dtype=torch.qint8
    )


def ort_graphs(model: LSTMVAE) -> tuple[bytes, bytes]:
    """The float32 ONNX graph and its dynamically quantised int8 copy (as the service makes it)."""
    buf = io.BytesIO()
    onnx_graph(model, buf)
    return buf.getvalue(), int8_graph(buf.getvalue(), reduce_range=int8_reduce_range())


def backends(model: LSTMVAE, threads: int) -> dict[str, Forward]:
    fp32, int8 = ort_graphs(model)
    return {
        "torch fp32": TorchBackend(copy.deepcopy(model)),
        "torch int8": TorchBackend(torch_int8(model)),
        "ort fp32": OrtBackend(fp32, threads),
        "ort int8": OrtBackend(int8, threads),
    }


def rate(fn: Forward, x: np.ndarray, repeats: int, min_s: float) -> float:
    fn(x)  # warm-up
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn(x)
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        rates.append(calls * len(x) / dt)
    return statistics.median(rates)


def parity(art: Artifact, windows: np.ndarray, threads: int) -> dict[str, dict[str, float]]:
    model = art.model()
    base = None
    out = {}
    for name, backend in backends(model, threads).items():
        det = Detector.from_spec(backend, art.scaler, art.spec, reference=art.reference)
        score = art.hybrid.raw(det.infer(windows)).raw
        if base is None:
            base = score
        thr = art.threshold
        out[name] = {
            "max_abs": float(np.max(np.abs(score - base))),
            "p99_abs": float(np.quantile(np.abs(score - base), 0.99)),
            "flips": float(np.mean((score > thr) != (base > thr))),
            "threshold": float(thr),
        }
    return out


def asd_part(root: Path, seed: int) -> tuple[list[str], dict[str, list[float]]]:
    """Per server: fp32 and int8 metrics, and the parity of the smoothed scores."""
    settings = load_settings(ROOT / "bench" / "configs" / "asd.toml")
    settings = settings.model_copy(
        update={"train": settings.train.model_copy(update={"seed": seed})}
    )
    rows: dict[str, list[float]] = {}
    lines = []
    for series in read_smd(root):
        art = train_product(series, settings, seed)
        days = (float(series.ts[-1] - series.ts[0]) + series.step_s) / 86_400.0
        got = {}
        for precision in ("fp32", "int8"):
            s = settings.model_copy(
                update={"service": settings.service.model_copy(update={"precision": precision})}
            )
            out = score_product(series, art, s)["stream-vae"]
            m = series_metrics(
                out, series.labels, series.interpretation, settings.window.size, days
            )
            got[precision] = (m, out.scores)
        (m32, s32), (m8, s8) = got["fp32"], got["int8"]
        diff = float(np.max(np.abs(s8 - s32))) / art.threshold
        for key in ("vus_pr", "auc_pr", "event_f1"):
            rows.setdefault(f"{key} fp32", []).append(m32[key])
            rows.setdefault(f"{key} int8", []).append(m8[key])
        rows.setdefault("max diff / threshold", []).append(diff)
        line = (
            f"{series.name}: VUS-PR fp32 {m32['vus_pr']:.3f}, int8 {m8['vus_pr']:.3f}; "
            f"max |smoothed diff| {diff:.3f} x threshold"
        )
        print(line, flush=True)
        lines.append(line)
    return lines, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8.md")
    ap.add_argument("--asd", type=Path, default=ROOT.parent / "shared" / "data" / "asd")
    ap.add_argument("--seed", type=int, default=0, help="the ASD part's training seed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = LSTMVAE(VAEConfig(n_features=8, window=64, hidden=64))
    rng = np.random.default_rng(0)
    speed: dict[int, dict[str, float]] = {}
    for batch in (256, 2048):
        x = rng.normal(size=(batch, 64, 8)).astype(np.float32)
        speed[batch] = {}
        for name, fn in backends(model, args.threads).items():
            speed[batch][name] = rate(fn, x, args.repeats, args.min_seconds)
            print(f"batch {batch} {name}: {speed[batch][name]:,.0f} windows/s", flush=True)

    settings = load_settings()
    settings = settings.model_copy(
        update={"train": settings.train.model_copy(update={"epochs": 10, "seed": 0})}
    )
    fleet = generate_fleet(20, 8, 1600, seed=0, anomaly_start=960)
    past, future = fleet.split(960)
    sids, ts, values, _ = past.interleaved()
    art = train_artifact(
        RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings, progress=False
    )
    sids, ts, values, _ = future.interleaved()
    windows = make_windows(RecordBatch(tuple(sids), ts, values), art.vae_config.window).values
    par = parity(art, windows, args.threads)

    lines = [
        "# Dynamic int8 quantisation (CPU)",
        "",
        f"`python bench/int8.py` ({args.threads} threads, median of {args.repeats}).",
        "",
        "| backend | windows/s at 256 | vs its fp32 | windows/s at 2048 | vs its fp32 | "
        "max abs score diff | p99 abs diff | threshold | windows changing side |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in speed[256]:
        ref = name.replace("int8", "fp32")
        p = par[name]
        lines.append(
            f"| {name} | {speed[256][name]:,.0f} | {speed[256][name] / speed[256][ref]:.2f}× | "
            f"{speed[2048][name]:,.0f} | {speed[2048][name] / speed[2048][ref]:.2f}× | "
            f"{p['max_abs']:.2e} | {p['p99_abs']:.2e} | {p['threshold']:.2f} | "
            f"{p['flips']:.2%} |"
        )
    if args.asd.is_dir():
        per_server, asd = asd_part(args.asd, args.seed)
        mean = {k: statistics.fmean(v) for k, v in asd.items()}
        lines += [
            "",
            f"ASD, 12 servers (bench/configs/asd.toml, seed {args.seed}), both on ONNX Runtime:",
            "",
            "| precision | VUS-PR | AUC-PR | event F1 |",
            "| --- | ---: | ---: | ---: |",
        ]
        for p in ("fp32", "int8"):
            lines.append(
                f"| {p} | {mean[f'vus_pr {p}']:.3f} | {mean[f'auc_pr {p}']:.3f} | "
                f"{mean[f'event_f1 {p}']:.3f} |"
            )
        lines += [
            "",
            f"Largest |smoothed score difference| over the threshold: "
            f"{max(asd['max diff / threshold']):.3f} (median over servers "
            f"{statistics.median(asd['max diff / threshold']):.3f}).",
            "",
            *[f"- {x}" for x in per_server],
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

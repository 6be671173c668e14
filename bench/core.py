"""Core throughput: windows/s of model + scorer vs the bare forward pass, per backend and batch.

    python bench/core.py [--repeats 5] [--threads 2] [--out bench/results/core.md]

For each batch size and backend (eager PyTorch, TorchScript, ONNX Runtime) it times
  bare  : the backend's forward pass on already-scaled windows (n, W, d)
  full  : Detector.infer (scaling + forward + score components) + Scorer.update (hybrid score,
          EMA, threshold, episodes, attribution)
and, for eager PyTorch, "full" with every alert part on (the streaming threshold, the
data-quality checks on the raw windows, stale series, incidents, a budget, recurring kinds,
the novelty gate, the close on a settled newest point: the ratio to "bare" is what alerting
costs), and "full" with every component on
(latent_mode "knn" against 2,048 reference points, the linear residual at 95% variance, tail
normalisers: what bench/configs/asd.toml runs), for eager PyTorch and ONNX Runtime, whose ratio
to the default "full" of the same backend is what those components cost.
Each figure is the median over --repeats runs; every run loops for at least --min-seconds.
The ratio full/bare is what the scorer costs.

The FLOP-bound limit: the model's forward pass is, in FLOPs, its matrix products (per window:
each LSTM's input and recurrent products at each of the W steps, the heads; the gates'
element-wise work is not counted, see :func:`flops_per_window`). Those products are timed on
their own, as plain ``torch.mm`` at the shapes a batch gives them (the same threads), and their
measured GFLOP/s over the FLOPs per window is the most windows/s the CPU can give the model. The
table reports ONNX Runtime's model + scorer against that limit (the target: ≥ 0.6), and the
square-matrix peak (2,048²) for scale. Only public tools (time.perf_counter) are used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stream_vae.core.scaler import Scaler
from stream_vae.model.backends import OrtBackend, TorchBackend
from stream_vae.model.detector import Detector
from stream_vae.model.vae import LSTMVAE, VAEConfig
from stream_vae.scoring.clusters import EpisodeClusters
from stream_vae.scoring.hybrid import HybridScore, ScoreParts
from stream_vae.scoring.novelty import SeriesNovelty
from stream_vae.scoring.quality import QualityMonitor, StaleMonitor
from stream_vae.scoring.reference import (
    LatentReference,
    LinearReference,
    QualityReference,
    ScoreReference,
)
from stream_vae.scoring.scorer import Scorer
from stream_vae.scoring.shaping import AlertShaper
from stream_vae.scoring.spot import StreamingThreshold, TailStart
from stream_vae.storage.export import to_onnx, to_torchscript

BATCHES = (1, 4, 16, 64, 256, 1024, 4096)


def _rate(fn: Callable[[], object], n_windows: int, repeats: int, min_s: float) -> float:
    fn()  # warm-up (allocations, lazy init)
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        rates.append(calls * n_windows / dt)
    return statistics.median(rates)


class TraceBackend:
    """TorchScript module as a backend (outputs: recon, mu, logvar)."""

    def __init__(self, path: str) -> None:
        self.module = torch.jit.load(path)

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, None, np.ndarray, np.ndarray]:
        recon, mu, logvar = self.module(torch.from_numpy(x))
        return recon.numpy(), None, mu.numpy(), logvar.numpy()


def gemm_shapes(cfg: VAEConfig, n: int) -> list[tuple[int, int, int, int]]:
    """``(m, k, n_out, times)``: the matrix products of one forward pass on ``n`` windows (z =
    μ). Each LSTM layer takes its input product over all W steps at once (as oneDNN and ONNX
    Runtime do), then one recurrent product per step."""
    w, h, g = cfg.window, cfg.hidden, 4 * cfg.hidden
    out = []
    for first_in in (cfg.n_features, cfg.latent):  # the encoder, then the decoder
        for layer in range(cfg.layers):
            out.append((n * w, first_in if layer == 0 else h, g, 1))  # input: all steps
            out.append((n, h, g, w))  # recurrent: one per step
    out.append((n, h, cfg.latent, 2))  # μ and log σ² from the last state
    n_out = cfg.n_features * (2 if cfg.gaussian_output else 1)
    out.append((n * w, h, n_out, 1))  # the output head at every step
    return out


def flops_per_window(cfg: VAEConfig) -> float:
    """2·m·k·n FLOPs per product (a multiply and an add), summed, per window."""
    return sum(2.0 * m * k * o * t for m, k, o, t in gemm_shapes(cfg, 1))


def gemm_rate(cfg: VAEConfig, n: int, repeats: int, min_s: float) -> float:
    """Windows/s if a forward pass on ``n`` windows cost only its matrix products."""
    rng = np.random.default_rng(1)
    ops = []
    for m, k, o, t in gemm_shapes(cfg, n):
        a = torch.from_numpy(rng.normal(size=(m, k)).astype(np.float32))
        b = torch.from_numpy(rng.normal(size=(k, o)).astype(np.float32))
        ops.append((a, b, torch.empty(m, o), t))

    def run() -> None:
        for a, b, c, t in ops:
            for _ in range(t):
                torch.mm(a, b, out=c)

    return _rate(run, n, repeats, min_s)


def peak_gflops(repeats: int, min_s: float) -> float:
    """sgemm GFLOP/s on two 2,048 x 2,048 float32 matrices."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c = torch.empty(2048, 2048)
    return _rate(lambda: torch.mm(a, b, out=c), 1, repeats, min_s) * 2 * 2048**3 / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.3)
    p.add_argument("--batches", type=int, nargs="*", default=list(BATCHES))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    w, d = args.window, args.features
    model = LSTMVAE(VAEConfig(d, w, args.hidden, args.latent)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    scaler = Scaler(np.zeros(d, np.float32), np.ones(d, np.float32))
    tmp = Path(tempfile.mkdtemp())
    backends = {
        "eager": TorchBackend(model, "cpu"),
        "torchscript": TraceBackend(str(to_torchscript(model, tmp / "m.ts"))),
        "onnxruntime": OrtBackend(
            to_onnx(model, tmp / "m.onnx").read_bytes(), threads=args.threads
        ),
    }
    calib = Detector(backends["eager"], scaler, w).infer(
        rng.normal(size=(512, w, d)).astype(np.float32)
    )
    hybrid = HybridScore(alpha=0.5).fit(calib)
    names = [f"f{i}" for i in range(d)]
    # every component on: references fitted on 4,000 random windows, as training does
    ref_x = rng.normal(size=(4000, w, d)).astype(np.float32)
    mu, _ = Detector(backends["eager"], scaler, w).encode(ref_x)
    reference = ScoreReference(
        LatentReference.fit(mu, rng), LinearReference.fit(ref_x.reshape(4000, -1), 0.95, rng)
    )
    hybrid_all = HybridScore(normaliser="tail", weights=(0.5, 0.25, 0.25)).fit(
        Detector(backends["eager"], scaler, w, latent_mode="knn", reference=reference).infer(
            ref_x[:512]
        )
    )

    rows = []
    for b in args.batches:
        x = rng.normal(size=(b, w, d)).astype(np.float32)
        keys = [f"s{i}" for i in range(b)]
        ts = np.arange(b, dtype=np.float64)
        row = {"batch": b}
        for name, backend in backends.items():
            det = Detector(backend, scaler, w, max_batch=max(args.batches))
            scorer = Scorer(hybrid, 3.0, names, "bench")
            bare = _rate(lambda backend=backend, x=x: backend(x), b, args.repeats, args.min_seconds)
            full = _rate(
                lambda det=det, sc=scorer, x=x, k=keys, t=ts: sc.update(k, t, det.infer(x)),
                b,
                args.repeats,
                args.min_seconds,
            )
            row[name] = (bare, full)
        det = Detector(backends["eager"], scaler, w, max_batch=max(args.batches))
        alerting = _alerting_scorer(hybrid, calib, names, ref_x)
        row["alerts"] = (
            row["eager"][0],
            _rate(
                lambda det=det, sc=alerting, x=x, k=keys, t=ts: sc.update(k, t, det.infer(x), x),
                b,
                args.repeats,
                args.min_seconds,
            ),
        )
        for name, key in (("eager", "all"), ("onnxruntime", "all_ort")):
            det = Detector(backends[name], scaler, w, max_batch=max(args.batches),
                           latent_mode="knn", reference=reference)  # fmt: skip
            scorer = Scorer(hybrid_all, 3.0, names, "bench")
            row[key] = (
                row[name][0],
                _rate(
                    lambda det=det, sc=scorer, x=x, k=keys, t=ts: sc.update(k, t, det.infer(x)),
                    b,
                    args.repeats,
                    args.min_seconds,
                ),
            )
        rows.append(row)
        print(
            f"batch {b}: "
            + ", ".join(f"{k} {v[0]:.0f}/{v[1]:.0f}" for k, v in row.items() if k != "batch"),
            file=sys.stderr,
        )

    lines = [
        f"LSTM-VAE {n_params:,} parameters, W={w}, d={d}, hidden={args.hidden}, "
        f"latent={args.latent}; torch {torch.__version__}, {args.threads} threads; "
        f"median of {args.repeats} runs, windows/s (bare forward / model+scorer, ratio).",
        "",
        "| batch | eager bare | eager +scorer | ratio | +scorer, every component | ratio to "
        "+scorer | +scorer, every alert part | ratio to bare | TorchScript bare | +scorer | "
        "ORT bare | ORT +scorer | ratio | ORT/eager (+scorer) | ORT +scorer, every component | "
        "ratio to ORT +scorer |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        (eb, ef), (tb, tf), (ob, of) = r["eager"], r["torchscript"], r["onnxruntime"]
        af, lf, oa = r["all"][1], r["alerts"][1], r["all_ort"][1]
        lines.append(
            f"| {r['batch']} | {eb:,.0f} | {ef:,.0f} | {ef / eb:.2f} | {af:,.0f} | {af / ef:.2f} | "
            f"{lf:,.0f} | {lf / eb:.2f} | "
            f"{tb:,.0f} | {tf:,.0f} | {ob:,.0f} | {of:,.0f} | {of / ob:.2f} | {of / ef:.2f} | "
            f"{oa:,.0f} | {oa / of:.2f} |"
        )
    cfg = model.config
    flops = flops_per_window(cfg)
    peak = peak_gflops(args.repeats, args.min_seconds)
    lines += [
        "",
        f"FLOP-bound limit: {flops / 1e6:.2f} MFLOP per window in matrix products; "
        f"sgemm peak (2,048²) {peak:.0f} GFLOP/s = {peak * 1e9 / flops:,.0f} windows/s.",
        "",
        "| batch | GEMM GFLOP/s at the model's shapes | limit windows/s | ORT bare / limit | "
        "ORT +scorer / limit | ORT +scorer / peak limit |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["batch"]
        if b < 16:
            continue  # latency-bound sizes: no FLOP limit applies
        limit = gemm_rate(cfg, b, args.repeats, args.min_seconds)
        ob, of = r["onnxruntime"]
        lines.append(
            f"| {b} | {limit * flops / 1e9:.0f} | {limit:,.0f} | {ob / limit:.2f} | "
            f"{of / limit:.2f} | {of * flops / (peak * 1e9):.2f} |"
        )
        print(f"batch {b}: GEMM-only limit {limit:,.0f} windows/s", file=sys.stderr)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def _alerting_scorer(
    hybrid: HybridScore, calib: ScoreParts, names: list[str], ref_x: np.ndarray
) -> Scorer:
    """The scorer with every alert part on: the streaming threshold, the data-quality checks,
    stale series, incidents and a budget, recurring kinds, the novelty gate and the close on a
    settled newest point (what ``alerts.*`` can turn on)."""
    t0 = 3.0
    held = hybrid.raw(calib).raw
    scale = ref_x.reshape(-1, ref_x.shape[-1]).std(axis=0)[: len(names)]
    return Scorer(
        hybrid,
        t0,
        names,
        "bench",
        streaming=StreamingThreshold(TailStart.fit(held, t0, 0.01), t0, 0.01),
        quality=QualityMonitor(QualityReference.fit(ref_x)),
        stale=StaleMonitor(),
        shaper=AlertShaper(incident_share=0.5, max_opens_per_hour=10),
        clusters=EpisodeClusters(),
        novelty=SeriesNovelty(2000, censor=0.4),
        novelty_gate=0.05,
        settle=(1.0, np.maximum(scale, 1e-6)),
    )


if __name__ == "__main__":
    sys.exit(main())

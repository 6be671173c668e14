"""GPU inference throughput: windows/s vs batch size, precision and compile / CUDA graphs.

    bench/gpu.sh [--out bench/results/gpu.json]          # on a CUDA machine, < 5 minutes
    python bench/gpu.py --device cpu --quick --out /tmp/gpu.json    # smoke run on the CPU

The model is LSTMVAE W=64, d=8, hidden 64, latent 16 with random weights (seed 0): the
throughput of an LSTM does not depend on its weights, and no training is needed. For each mode
(eager, CUDA graphs, torch.compile), precision (fp32, bf16, fp16) and batch size it times

  forward : TorchBackend.forward on windows already on the device (+ one sync per call)
  backend : TorchBackend(x): host numpy → pinned staging → H2D → forward → D2H → numpy
  infer   : Detector.infer: scaling + backend + score components (host numpy → ScoreParts)

Each figure is the median over --repeats runs; a run loops for at least --min-seconds. Next to
the rates, ``rel_err`` is the largest relative difference of the per-window reconstruction
error against fp32 eager on the same device (random weights: a smoke check, not the parity
bound, which tests/test_gpu_path.py checks on a trained model). A configuration that fails
is recorded with its error and the run goes on; once --budget-s is spent the rest is skipped.
The table is printed as Markdown; --out gets JSON, rewritten after every row.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from core import _rate as core_rate  # bench/core.py, beside this file

from stream_vae.core.scaler import Scaler
from stream_vae.errors import ConfigError
from stream_vae.model.backends import TorchBackend
from stream_vae.model.detector import Detector
from stream_vae.model.vae import LSTMVAE, VAEConfig

BATCHES = (4096, 16384, 65536, 262144)
QUICK_BATCHES = (256, 1024)
PRECISIONS = ("fp32", "bf16", "fp16")
# compile last: dynamo leaves the LSTMs to cuDNN (graph break), so it is expected to gain
# least, and its compile time is what may run into --budget-s. A failed graph capture can
# leave the CUDA context unusable; the rows after it then record that error.
MODES = ("eager", "graphs", "compile")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], object], n: int, repeats: int, min_s: float, dev: torch.device) -> float:
    """Median windows/s over ``repeats`` timed loops of at least ``min_s`` each (bench/core.py's
    loop; here every call ends with a device sync, so queued GPU work is timed too)."""

    def synced() -> None:
        fn()
        _sync(dev)

    return core_rate(synced, n, repeats, min_s)


def _backend(model: LSTMVAE, dev: torch.device, precision: str, mode: str) -> TorchBackend:
    return TorchBackend(
        model,
        dev,
        precision=precision,  # type: ignore[arg-type]
        compile=mode == "compile",
        cuda_graphs=mode == "graphs",
    )


def _row(
    backend: TorchBackend, x: np.ndarray, ref: np.ndarray | None, args: argparse.Namespace
) -> dict[str, Any]:
    """forward / backend / infer rates for one batch ``x`` (n, W, d)."""
    dev, n, w = backend.device, len(x), x.shape[1]
    scaler = Scaler(np.zeros(x.shape[2], np.float32), np.ones(x.shape[2], np.float32))
    det = Detector(backend, scaler, w, max_batch=n)
    xd = torch.from_numpy(x).to(dev)  # (n, W, d) resident on the device
    probe = det.infer(x[: len(ref)] if ref is not None else x[:4096]).recon_features.mean(1)
    rel = None if ref is None else float(np.max(np.abs(probe - ref) / np.abs(ref)))
    reps, min_s = args.repeats, args.min_seconds
    return {
        "forward": _rate(lambda: backend.forward(xd), n, reps, min_s, dev),
        "backend": _rate(lambda: backend(x), n, reps, min_s, dev),
        "infer": _rate(lambda: det.infer(x), n, reps, min_s, dev),
        "rel_err": rel,
        "probe": probe,
    }


def _measure(args: argparse.Namespace, dev: torch.device, meta: dict[str, Any]) -> list[dict]:
    torch.manual_seed(0)
    model = LSTMVAE(VAEConfig(args.features, args.window, args.hidden, args.latent)).eval()
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    shape = (max(args.batches), args.window, args.features)
    x_all = rng.standard_normal(shape, dtype=np.float32)  # (N, W, d)
    rows: list[dict[str, Any]] = []
    ref: np.ndarray | None = None  # fp32 eager per-window error on the first 4096 windows
    t_start = time.perf_counter()
    for mode, precision in [(m, p) for m in args.modes for p in args.precisions]:
        try:
            backend = _backend(model, dev, precision, mode)
        except ConfigError as exc:  # fp16 or graphs on the CPU
            rows.append({"mode": mode, "precision": precision, "error": str(exc)})
            continue
        for b in args.batches:
            row: dict[str, Any] = {"mode": mode, "precision": precision, "batch": b}
            if time.perf_counter() - t_start > args.budget_s:
                row["error"] = "skipped: time budget spent"
            else:
                try:
                    res = _row(backend, x_all[:b], ref, args)
                    if ref is None and (mode, precision) == ("eager", "fp32"):
                        ref = res["probe"]
                        res["rel_err"] = 0.0
                    del res["probe"]
                    row.update(res)
                except Exception as exc:  # one failing configuration must not end the run
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows.append(row)
            print(_line(row), file=sys.stderr, flush=True)
            _write(args.out, meta, rows)
        del backend  # its graph runner holds a bound method: a cycle, hence gc
        gc.collect()
        if mode == "compile":
            torch._dynamo.reset()  # each config compiles afresh, under dynamo's recompile limit
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _line(r: dict[str, Any]) -> str:
    head = f"| {r['mode']} | {r['precision']} | {r.get('batch', '-')} |"
    if "error" in r:
        return f"{head} {r['error']} | | | |"
    rel = "-" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
    return f"{head} {r['forward']:,.0f} | {r['backend']:,.0f} | {r['infer']:,.0f} | {rel} |"


def _write(out: Path | None, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


def _meta(args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "device": name,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "window": args.window,
        "features": args.features,
        "hidden": args.hidden,
        "latent": args.latent,
        "repeats": args.repeats,
        "min_seconds": args.min_seconds,
        "weights": "random (seed 0)",
        "unit": "windows/s",
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small batches, short runs (smoke)")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int)
    p.add_argument("--min-seconds", type=float)
    p.add_argument("--budget-s", type=float, default=240.0, help="skip what is left after this")
    threads = min(4, os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=threads, help="torch CPU threads (copies)")
    p.add_argument("--out", type=Path, help="JSON results")
    args = p.parse_args(argv)
    args.batches = args.batches or list(QUICK_BATCHES if args.quick else BATCHES)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.min_seconds = args.min_seconds or (0.05 if args.quick else 0.2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.py: no CUDA device (torch {torch.__version__})", file=sys.stderr)
        return 3
    torch.set_num_threads(args.threads)
    meta = _meta(args, dev)
    t0 = time.perf_counter()
    rows = _measure(args, dev, meta)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    _write(args.out, meta, rows)
    print(
        f"LSTM-VAE {meta['parameters']:,} parameters (random weights), W={args.window}, "
        f"d={args.features}, hidden={args.hidden}, latent={args.latent}; {meta['device']}, "
        f"torch {meta['torch']}; median of {args.repeats} runs, windows/s; "
        f"{meta['wall_s']} s in all.\n"
    )
    print("| mode | precision | batch | forward | backend (H2D+D2H) | Detector.infer | rel_err |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(_line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

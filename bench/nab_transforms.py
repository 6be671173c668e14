"""NAB score of the product's per-row score under candidate post-processing stages.

An experiment, not the evaluation: the product's score is what `stream-vae evaluate nab`
reports. This runs the `stream-vae` detector once per NAB file (cached with --cache) and scores
several causal transforms of its smoothed score, to decide which stage belongs in the scorer.

    python bench/nab_transforms.py ../shared/data/nab --config bench/configs/nab.toml \
        --cache out/nab_outputs_s0.npz [--seed 0] [--recon-mode window] \
        [--set '{"train": {"patience": 5}}'] [--jobs 2]

Transforms (all causal: row t uses rows ≤ t):
- ``r/(1+r)``: r = score / calibrated threshold;
- ``decayed recent max``: max(0, s_t − M_{t−1}) / P_t with M a geometrically decayed maximum
  (decay 0.99), every row: the first novelty stage;
- ``sliding max, every row``: the same against the maximum of the previous 1,000 rows;
- ``novelty, window=k``: the product's stage (``stream_vae.evaluation.novelty.SeriesNovelty``):
  the sliding maximum, and only the rows that beat their run's best — what
  `stream-vae evaluate nab` scores for us (window 1,000 by default);
- ``censored novelty, window=2000, censor=c, runs=k``: the same, where a rise whose novelty
  reaches c stays out of the recent maximum (at most k such rises per window): the scoring
  settings' ``novelty_censor`` and ``novelty_censor_runs``.

The last column scores each file at its own best threshold (labels used: an upper bound on any
per-file calibration of the same scores, ``nab.per_file_best``): where it is close to the swept
score, the points are lost to the ranking within files, not to the scale across them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stream_vae.config import Settings, load_settings
from stream_vae.evaluation import nab
from stream_vae.evaluation.detectors import run_detector
from stream_vae.evaluation.novelty import SeriesNovelty
from stream_vae.evaluation.runner import _nab_series


def decayed_novelty(s: np.ndarray, decay: float = 0.99, peak_decay: float = 0.9999) -> np.ndarray:
    """max(0, s_t − M_{t−1}) / P_t, M_t = max(s_t, decay·M_{t−1}), P_t likewise (peak_decay)."""
    out, recent, peak = np.zeros_like(s), 0.0, 0.0
    for i, v in enumerate(np.maximum(s, 0.0).tolist()):
        peak = max(v, peak_decay * peak)
        out[i] = max(0.0, v - recent) / peak if peak > 0 else 0.0
        recent = max(v, decay * recent)
    return out


def sliding_novelty(s: np.ndarray, k: int = 1000, peak_decay: float = 0.9999) -> np.ndarray:
    """max(0, s_t − max(s_{t−k..t−1})) / P_t on every row (no run rule)."""
    out, peak = np.zeros_like(s), 0.0
    x = np.maximum(s, 0.0)
    for i, v in enumerate(x.tolist()):
        peak = max(v, peak_decay * peak)
        prev = x[max(0, i - k) : i].max() if i else v
        out[i] = max(0.0, v - prev) / peak if peak > 0 else 0.0
    return out


def squash(x: np.ndarray) -> np.ndarray:
    x = np.maximum(x, 0.0)
    return x / (1.0 + x)


def _settings(config: Path, recon_mode: str | None, overrides: str) -> Settings:
    settings = load_settings(config)
    update: dict[str, Any] = json.loads(overrides)
    if recon_mode:
        update.setdefault("scoring", {})["recon_mode"] = recon_mode
    merged = settings.model_dump()
    for section, values in update.items():
        if section not in merged or not isinstance(values, dict):
            raise SystemExit(f"--set: unknown settings section {section!r}")
        merged[section] = {**merged[section], **values}
    return Settings.model_validate(merged)  # an unknown key or a bad value fails here


def _score_file(job: tuple[Path, str, Path, str | None, str, int]) -> tuple[str, Any, float]:
    """One file through the `stream-vae` detector: (name, smoothed scores, threshold)."""
    root, name, config, recon_mode, overrides, seed = job
    settings = _settings(config, recon_mode, overrides)
    if mp.current_process().name != "MainProcess":  # a worker: one torch thread each
        settings = settings.model_copy(
            update={"train": settings.train.model_copy(update={"torch_threads": 1})}
        )
    f = next(f for f in nab.read_nab(root) if f.name == name)
    out = run_detector("stream-vae", _nab_series(f), settings, seed)["stream-vae"]
    print(f"scored {name}", flush=True)
    return name, out.scores, float(out.threshold or 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--cache", type=Path, help=".npz of the detector's scores (reused if present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recon-mode", choices=["window", "last"], help="override the config's")
    p.add_argument(
        "--set",
        default="{}",
        help='settings overrides as JSON, e.g. \'{"train": {"patience": 150}}\'',
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="score the files in N processes of one torch thread each (default: in this one)",
    )
    args = p.parse_args()
    _settings(args.config, args.recon_mode, args.set)  # a bad config or override fails here
    files = nab.read_nab(args.root)
    profiles = nab.read_profiles(args.root)
    if args.cache is not None and args.cache.exists():
        with np.load(args.cache) as z:
            scores = {f.name: z[f"s/{f.name}"] for f in files}
            thresholds = {f.name: float(z[f"t/{f.name}"]) for f in files}
    else:
        scores, thresholds = {}, {}
        jobs = [
            (args.root, f.name, args.config, args.recon_mode, args.set, args.seed) for f in files
        ]
        if args.jobs:
            with ProcessPoolExecutor(args.jobs) as pool:
                done = list(pool.map(_score_file, jobs))
        else:
            done = [_score_file(j) for j in jobs]
        for name, s, t in done:
            scores[name], thresholds[name] = s, t
        if args.cache is not None:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                args.cache,
                **{f"s/{n}": v for n, v in scores.items()},
                **{f"t/{n}": np.float64(v) for n, v in thresholds.items()},
            )

    def novelty(name: str, window: int, censor: float = 0.0, runs: int = 4) -> np.ndarray:
        nv = SeriesNovelty(window, censor=censor, censor_runs=runs)
        return nv.update(["s"] * len(scores[name]), scores[name])

    variants = {
        "r/(1+r)": lambda n: squash(scores[n] / thresholds[n]),
        "decayed recent max (0.99), every row": lambda n: decayed_novelty(scores[n]),
        "sliding max (1,000), every row": lambda n: sliding_novelty(scores[n]),
        **{
            f"novelty, window={w}": (lambda n, w=w: novelty(n, w))  # type: ignore[misc]
            for w in (250, 500, 1000, 2000)
        },
        **{
            f"censored novelty, window=2000, censor={c}, runs={k}": (
                lambda n, c=c, k=k: novelty(n, 2000, c, k)  # type: ignore[misc]
            )
            for c, k in ((0.3, 4), (0.4, 4), (0.5, 4), (0.4, 2), (0.4, 8))
        },
    }
    print("| transform | " + " | ".join(profiles) + " | standard, per-file best |")
    print("|---|" + "---:|" * (len(profiles) + 1))
    for name, fn in variants.items():
        unit = {f.name: fn(f.name) for f in files}
        res = nab.score_detector(files, unit, profiles)
        best = nab.per_file_best(files, unit, profiles["standard"])
        cells = [f"{r.score:.2f}" for r in res.values()] + [f"{best:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""NAB score of the product's per-row score under candidate post-processing stages.

An experiment, not the evaluation: the product's score is what `stream-vae evaluate nab`
reports. This runs the `stream-vae` detector once per NAB file (cached with --cache) and scores
several causal transforms of its smoothed score, to decide which stage belongs in the scorer.

    python bench/nab_transforms.py ../shared/data/nab --config bench/configs/nab.toml \
        --cache out/nab_outputs.npz [--k 200]

Transforms (all causal: row t uses rows ≤ t):
- ``r/(1+r)``: r = score / calibrated threshold (what the evaluator reports);
- ``new peaks (r)``: max(0, r_t − max(r over the previous k rows)), squashed by x/(1+x);
- ``new peaks (running max)``: the same on score / (its running maximum so far);
- ``novelty``: the product's stage (``stream_vae.scoring.novelty.SeriesNovelty``, defaults),
  recomputed here on the smoothed scores — what `stream-vae evaluate nab` scores for us.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stream_vae.config import load_settings
from stream_vae.evaluation import nab
from stream_vae.evaluation.detectors import run_detector
from stream_vae.evaluation.runner import _nab_series
from stream_vae.scoring.novelty import SeriesNovelty


def new_peaks(r: np.ndarray, k: int) -> np.ndarray:
    """max(0, r_t − max(r_{t−k..t−1})); 0 history at the start."""
    out = np.zeros_like(r)
    for i in range(1, len(r)):
        out[i] = max(0.0, r[i] - r[max(0, i - k) : i].max())
    out[0] = max(0.0, r[0])
    return out


def running_max_ratio(s: np.ndarray) -> np.ndarray:
    peak = np.maximum.accumulate(np.maximum(s, 0.0))
    return np.where(peak > 0, s / np.where(peak > 0, peak, 1.0), 0.0)


def squash(x: np.ndarray) -> np.ndarray:
    x = np.maximum(x, 0.0)
    return x / (1.0 + x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--cache", type=Path, help=".npz of the detector's scores (reused if present)")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    settings = load_settings(args.config)
    files = nab.read_nab(args.root)
    profiles = nab.read_profiles(args.root)
    if args.cache is not None and args.cache.exists():
        with np.load(args.cache) as z:
            scores = {f.name: z[f"s/{f.name}"] for f in files}
            thresholds = {f.name: float(z[f"t/{f.name}"]) for f in files}
    else:
        scores, thresholds = {}, {}
        for f in files:
            out = run_detector("stream-vae", _nab_series(f), settings, args.seed)["stream-vae"]
            scores[f.name], thresholds[f.name] = out.scores, float(out.threshold or 1.0)
            print(f"scored {f.name}", flush=True)
        if args.cache is not None:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                args.cache,
                **{f"s/{n}": v for n, v in scores.items()},
                **{f"t/{n}": np.float64(v) for n, v in thresholds.items()},
            )
    variants = {
        "r/(1+r)": lambda n: squash(scores[n] / thresholds[n]),
        f"new peaks (r), k={args.k}": lambda n: squash(
            new_peaks(scores[n] / thresholds[n], args.k)
        ),
        f"new peaks (running max), k={args.k}": lambda n: new_peaks(
            running_max_ratio(scores[n]), args.k
        ),
        "novelty (SeriesNovelty defaults)": lambda n: SeriesNovelty().update(
            ["s"] * len(scores[n]), scores[n]
        ),
    }
    print("| transform | " + " | ".join(profiles) + " |")
    print("|---|" + "---:|" * len(profiles))
    for name, fn in variants.items():
        res = nab.score_detector(files, {f.name: fn(f.name) for f in files}, profiles)
        print(f"| {name} | " + " | ".join(f"{r.score:.2f}" for r in res.values()) + " |")


if __name__ == "__main__":
    main()

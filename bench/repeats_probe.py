"""A candidate score component, measured offline: exact repeats of a channel within a window.

    python bench/repeats_probe.py [--seeds 0 1 2]

No score component catches a stuck sensor well (docs/results.md: reconstruction 0.83-0.87
window ROC-AUC on the generated fleet): a value frozen at a plausible level is reconstructed
well. A sensor that is stuck repeats its value exactly, which a live channel almost never does.
This probe measures, on the fleets of ``bench/ablation.py`` (same seeds, same default model
scored with the ``tail`` normaliser, so that every component is a surprise in nats):

* ``repeats``: per window and channel, how many of its W − 1 steps repeat the value exactly,
  less the most that channel repeated in any training window (so a channel that is constant or
  coarsely quantised in training counts for nothing), the maximum over channels; as a surprise
  against the same statistic on the training windows;
* the reconstruction alone, that surprise alone, their weighted sum and their maximum.

It is not in the product: the hybrid score has a fixed set of components, and this one would
be a fourth (docs/results.md, issue 17). Only public tools are used.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
from ablation import KINDS, W, _aucs, _batch

from stream_vae.config import load_settings
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.training.build import train_artifact


def repeats(x: np.ndarray) -> np.ndarray:
    """Exact repeats per channel in every window of ``x`` (T, d): (T − W + 1, d)."""
    same = np.diff(x, axis=0) == 0  # (T − 1, d): row t + 1 repeats row t
    c = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(same, axis=0)])  # (T, d)
    return c[W - 1 :] - c[: len(c) - W + 1]  # the W − 1 steps inside each window


def surprise(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """−log of the share of ``reference`` at or above each of ``x`` (empirical upper tail)."""
    ref = np.sort(reference)
    above = len(ref) - np.searchsorted(ref, x, side="left")
    return -np.log((above + 1.0) / (len(ref) + 1.0))


def run_seed(seed: int) -> dict[str, dict[str, float]]:
    fleet = generate_fleet(12, 6, 1800, seed=3 + seed, anomaly_start=1000, n_anomalies_per_series=2)
    train, test = fleet.split(1000)
    settings = load_settings(
        env={},
        window={"size": W},
        model={"hidden": 64, "latent": 16},
        train={"epochs": 30, "batch_size": 64, "lr": 3e-3, "patience": 5, "seed": seed},
        scoring={"target_fpr": 0.01, "normaliser": "tail"},
    )
    art = train_artifact(_batch(train), fleet.feature_names, settings, device="cpu", progress=False)
    scored = list(LiveModel(art, DetectorOptions(device="cpu")).stream(_batch(test), 1000))
    keys = [k for o in scored for k in o.keys]
    recon = np.concatenate([o.recon for o in scored])
    train_r = [repeats(v) for v in train.values]
    most = np.max([r.max(axis=0) for r in train_r], axis=0)  # (d,) per channel, in training
    reference = np.concatenate([np.maximum(r - most, 0).max(axis=1) for r in train_r])
    by_series = {
        sid: np.maximum(repeats(v) - most, 0).max(axis=1)
        for sid, v in zip(test.series_ids, test.values, strict=True)
    }
    seen: dict[str, int] = {}
    stat = np.empty(len(keys))
    for i, k in enumerate(keys):  # the stream gives each series' windows in order
        stat[i] = by_series[k][seen.get(k, 0)]
        seen[k] = seen.get(k, 0) + 1
    rep = surprise(reference, stat)
    return {
        "reconstruction": _aucs(test, keys, recon),
        "repeats": _aucs(test, keys, rep),
        "0.75 recon + 0.25 repeats": _aucs(test, keys, 0.75 * recon + 0.25 * rep),
        "max(recon, repeats)": _aucs(test, keys, np.maximum(recon, rep)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    runs = [run_seed(s) for s in args.seeds]
    print(f"Window ROC-AUC per anomaly kind, mean ± std over seeds {args.seeds}.\n")
    print("| score | all | " + " | ".join(KINDS) + " |")
    print("|---|" + "---:|" * (len(KINDS) + 1))
    for name in runs[0]:
        cells = []
        for col in ("all", *KINDS):
            vals = [r[name][col] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

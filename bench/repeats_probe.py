"""A candidate score component, measured offline: exact repeats of a channel within a window.

    cd bench && python repeats_probe.py [--seeds 0 1 2] [--data DATA_DIR]

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

With ``--data``, it also reports, for ASD and NAB (no model: W 32, the training part of each series
as reference), the share of normal and of anomalous windows whose statistic is above 0.

The product has it since as ``scoring.repeats`` (a count surprise, max-combined; measured with
``bench/ablation.py``); this probe stays for the real-data rates. Only public tools are used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from ablation import KINDS, W, _aucs, _batch

from stream_vae.config import load_settings
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.evaluation import nab
from stream_vae.evaluation.datasets import read_smd
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.training.build import train_artifact


def repeats(x: np.ndarray, w: int = W) -> np.ndarray:
    """Exact repeats per channel in every window of ``x`` (T, d): (T − w + 1, d)."""
    same = np.diff(x, axis=0) == 0  # (T − 1, d): row t + 1 repeats row t
    c = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(same, axis=0)])  # (T, d)
    return c[w - 1 :] - c[: len(c) - w + 1]  # the w − 1 steps inside each window


def excess(train: np.ndarray, x: np.ndarray, w: int = W) -> np.ndarray:
    """The statistic for every window of ``x``: repeats beyond each channel's training most."""
    most = repeats(train, w).max(axis=0)  # (d,)
    return np.maximum(repeats(x, w) - most, 0).max(axis=1)  # type: ignore[no-any-return]


def real_data(root: Path, w: int = 32) -> None:
    """Share of normal / anomalous windows with excess repeats, on ASD and NAB."""
    series = [(s.name, s.train, s.test, s.labels) for s in read_smd(root / "asd")]
    for f in nab.read_nab(root / "nab"):
        labels = np.zeros(len(f.ts), dtype=bool)
        for start, end in f.windows:
            labels |= (f.ts >= start) & (f.ts <= end)
        x = f.values.reshape(-1, 1)
        series.append((f.name, x[: nab.probation_rows(len(x))], x, labels))
    print("\n| series | normal windows over 0 | anomalous windows over 0 |\n|---|---:|---:|")
    for name, train, test, labels in series:
        stat = excess(train, test, w) > 0
        bad = np.lib.stride_tricks.sliding_window_view(labels, w).any(axis=1)
        anomalous = f"{stat[bad].mean():.3f}" if bad.any() else "-"
        print(f"| {name} | {stat[~bad].mean():.3f} | {anomalous} |")


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
    # one training maximum per channel over the whole fleet: its machines share one model
    stacked = np.concatenate(list(train.values))
    reference = np.concatenate([excess(stacked, v) for v in train.values])
    by_series = {
        sid: excess(stacked, v) for sid, v in zip(test.series_ids, test.values, strict=True)
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
    p.add_argument("--data", type=Path, help="the shared data (asd/, nab/): real-data rates")
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
    if args.data:
        real_data(args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

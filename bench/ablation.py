"""The score components per anomaly kind on a generated fleet: what each latent mode, the
reconstruction, the linear residual and the hybrid catch.

    python bench/ablation.py [--seeds 0 1 2] [--variants ...] [--out bench/results/ablation.md]

For each seed a fleet (12 machines, 6 cross-correlated seasonal channels, 1,800 steps) is
generated; a model is trained on its clean first 1,000 steps for each scoring variant, and the
rest, with injected spikes, level shifts, variance bursts, stuck sensors and correlation breaks,
streams through the service's path (WindowStore → model → scorer). Each cell is the window
ROC-AUC of one score (the hybrid, or one normalised component alone) against the normal windows,
for the windows a fault fills at least a quarter of (as tests/test_detection.py); mean ± std
over the seeds. Only public tools are used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stream_vae.config import load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import Fleet, generate_fleet
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.scoring.hybrid import roc_auc
from stream_vae.training.build import train_artifact

W = 24
# name → (scoring settings, model settings) over the defaults
GAUSSIAN = {"gaussian_output": True}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "kl (default)": ({}, {}),
    "aggregate + linear, tail": (
        {"latent_mode": "aggregate", "normaliser": "tail", "linear_variance": 0.95},
        {},
    ),
    "knn + linear, tail": (
        {"latent_mode": "knn", "normaliser": "tail", "linear_variance": 0.95},
        {},
    ),
    "knn_whitened + linear, tail": (
        {"latent_mode": "knn_whitened", "normaliser": "tail", "linear_variance": 0.95},
        {},
    ),
    # the sampled modes need (iwae) or use (recon_prob) the decoder's variance: against the same
    # Gaussian-head model scored at z = μ
    "kl, VampPrior": ({}, {"prior": "vamp"}),
    "kl, Gaussian head": ({}, GAUSSIAN),
    "recon_prob, Gaussian head": ({"latent_mode": "recon_prob"}, GAUSSIAN),
    "iwae, Gaussian head": ({"latent_mode": "iwae"}, GAUSSIAN),
    # exact repeats beyond training (stuck sensors), max-combined, with the tail normaliser it
    # needs; and the same without them
    "kl, tail": ({"normaliser": "tail"}, {}),
    "kl + repeats, tail": ({"normaliser": "tail", "repeats": True}, {}),
}
KINDS = ("spike", "level_shift", "variance_burst", "stuck_sensor", "correlation_break")


def _batch(f: Fleet) -> RecordBatch:
    sids, ts, values, _ = f.interleaved()
    return RecordBatch(tuple(sids), ts, values)


def _aucs(test: Fleet, keys: list[str], scores: np.ndarray) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for k, v in zip(keys, scores, strict=True):
        by.setdefault(k, []).append(float(v))
    normal: list[float] = []
    kinds: dict[str, list[float]] = {}
    for si, sid in enumerate(test.series_ids):
        s = np.asarray(by[sid])  # window j ends at row j + W - 1
        ends = np.arange(W - 1, W - 1 + len(s))
        n_bad = np.array([test.labels[si, e - W + 1 : e + 1].sum() for e in ends])
        normal.extend(s[n_bad == 0])
        for inj in (i for i in test.injections if i.series_index == si):
            need = min(W // 4, inj.end - inj.start)
            first = np.maximum(ends - W + 1, inj.start)
            last = np.minimum(ends, inj.end - 1)
            kinds.setdefault(inj.kind, []).extend(s[np.maximum(last - first + 1, 0) >= need])
    out = {"all": roc_auc(normal, [v for vs in kinds.values() for v in vs])}
    out.update({k: roc_auc(normal, v) for k, v in kinds.items()})
    return out


def run_seed(seed: int, variants: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    fleet = generate_fleet(12, 6, 1800, seed=3 + seed, anomaly_start=1000, n_anomalies_per_series=2)
    train, test = fleet.split(1000)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for name in variants:
        scoring, model = VARIANTS[name]
        settings = load_settings(
            env={},
            window={"size": W},
            model={"hidden": 64, "latent": 16, **model},
            train={"epochs": 30, "batch_size": 64, "lr": 3e-3, "patience": 5, "seed": seed},
            scoring={"target_fpr": 0.01, **scoring},
        )
        art = train_artifact(
            _batch(train), fleet.feature_names, settings, device="cpu", progress=False
        )
        scored = list(LiveModel(art, DetectorOptions(device="cpu")).stream(_batch(test), 1000))
        keys = [k for o in scored for k in o.keys]
        cols = {
            f"hybrid (weights {'/'.join(f'{x:g}' for x in art.hybrid.weights)})": "raw",
            "reconstruction": "recon",
            f"latent: {art.spec.scoring.latent_mode}": "latent",
        }
        if art.hybrid.has_linear:
            cols["linear"] = "linear"
        for label, attr in cols.items():
            values = np.concatenate([getattr(o, attr) for o in scored])
            row = label.split(" (")[0]  # the weights vary with the seed: kept in the log
            out[(name, row)] = _aucs(test, keys, values)
            print(f"seed {seed} {name} {label}: {out[(name, row)]['all']:.3f}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all")
    args = p.parse_args(argv)
    runs = [run_seed(s, args.variants or list(VARIANTS)) for s in args.seeds]
    lines = [
        f"Window ROC-AUC per anomaly kind, mean ± std over seeds {args.seeds}.",
        "",
        "| variant | score | all | " + " | ".join(KINDS) + " |",
        "|---|---|" + "---:|" * (len(KINDS) + 1),
    ]
    for key in runs[0]:
        cells = []
        for col in ("all", *KINDS):
            vals = [r[key][col] for r in runs if col in r[key]]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train and score each ASD/SMD server with the CLI; report ROC-AUC and AUC-PR per server.

    python bench/asd_core.py ../shared/data/asd --out out/asd [--servers omi-1 omi-2] [--config F]

For every server: `stream-vae train --data DIR/train/S.txt --format smd`, then
`stream-vae score --data DIR/test/S.txt`, then the per-window scores (one per test row from row
W−1 on, causal) are compared with DIR/test_label/S.txt. Rows before the first full window have
no score and are left out of both metrics. Writes OUT/asd_core.md and OUT/asd_core.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from stream_vae.cli import main as cli
from stream_vae.evaluation.metrics import average_precision, roc_auc

STEP_S = 300.0  # SMD/ASD rows are 5 minutes apart (the loader's default step)


def _score_server(data: Path, out: Path, server: str, config: list[str]) -> dict[str, float]:
    model = out / "models" / server
    scores_csv = out / "scores" / f"{server}.csv"
    t0 = time.perf_counter()
    rc = cli(
        [
            *config,
            "train",
            "--data",
            str(data / "train" / f"{server}.txt"),
            "--format",
            "smd",
            "--out",
            str(model),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    t_train = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"training {server} failed ({rc})")
    rc = cli(
        [
            *config,
            "score",
            "--model",
            str(model),
            "--data",
            str(data / "test" / f"{server}.txt"),
            "--format",
            "smd",
            "--out",
            str(scores_csv),
            "--device",
            "cpu",
        ]
    )
    if rc != 0:
        raise SystemExit(f"scoring {server} failed ({rc})")
    labels = np.loadtxt(data / "test_label" / f"{server}.txt", dtype=np.int64).astype(bool)
    with scores_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    idx = np.array([round(float(r["ts"]) / STEP_S) for r in rows])
    raw = np.array([float(r["raw_score"]) for r in rows])
    smoothed = np.array([float(r["score"]) for r in rows])
    alert = np.array([r["is_alert"] == "1" for r in rows])
    y = labels[idx]
    return {
        "roc_auc": roc_auc(raw, y),
        "auc_pr": average_precision(raw, y),
        "roc_auc_smoothed": roc_auc(smoothed, y),
        "auc_pr_smoothed": average_precision(smoothed, y),
        "alert_rate": float(alert.mean()),
        "precision_at_threshold": float(y[alert].mean()) if alert.any() else float("nan"),
        "recall_at_threshold": float(alert[y].mean()) if y.any() else float("nan"),
        "anomaly_rate": float(y.mean()),
        "train_s": t_train,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=Path("out/asd"))
    p.add_argument("--servers", nargs="*")
    p.add_argument("--config", type=Path, help="TOML settings passed to stream-vae")
    args = p.parse_args(argv)
    servers = args.servers or sorted(
        (f.stem for f in (args.data / "train").glob("*.txt")),
        key=lambda s: (len(s), s),
    )
    config = ["--config", str(args.config)] if args.config else []
    results = {}
    for s in servers:
        results[s] = _score_server(args.data, args.out, s, config)
        r = results[s]
        print(
            f"{s}: ROC-AUC {r['roc_auc']:.3f} AUC-PR {r['auc_pr']:.3f} "
            f"(train {r['train_s']:.0f} s)",
            file=sys.stderr,
        )
    keys = [
        "roc_auc",
        "auc_pr",
        "roc_auc_smoothed",
        "auc_pr_smoothed",
        "precision_at_threshold",
        "recall_at_threshold",
        "alert_rate",
        "anomaly_rate",
    ]
    lines = ["| server | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for s, r in results.items():
        lines.append(f"| {s} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    means = {k: statistics.fmean(r[k] for r in results.values() if r[k] == r[k]) for k in keys}
    lines.append("| **mean** | " + " | ".join(f"**{means[k]:.3f}**" for k in keys) + " |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "asd_core.md").write_text(text + "\n")
    (args.out / "asd_core.json").write_text(
        json.dumps({"servers": results, "mean": means}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

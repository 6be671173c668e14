"""The offline commands: labelled data generated, evaluated and summarised, and the demos (the
model and service commands are in :mod:`stream_vae.cli.commands`)."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import Settings
from ..errors import DataError, UsageError
from ..storage.tabular import read_rows
from .commands import _check_out, _device

__all__ = ["cmd_demo", "cmd_evaluate", "cmd_generate", "cmd_incidents"]


def cmd_incidents(args: argparse.Namespace, settings: Settings) -> int:
    from .. import _json
    from ..scoring.digest import digest, format_digest

    messages = []
    try:
        with args.alerts.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        messages.append(_json.loads(line))
                    except _json.JSONDecodeError as exc:
                        raise DataError(f"{args.alerts}:{n}: not a JSON object: {exc}") from None
    except OSError as exc:
        raise DataError(f"{args.alerts}: cannot read: {exc.strerror or exc}") from None
    bad = [i for i, m in enumerate(messages, 1) if not isinstance(m, dict) or "event" not in m]
    if bad:
        raise DataError(f"{args.alerts}:{bad[0]}: not an alert message (no 'event')")
    print(format_digest(digest(messages, top=args.top)))
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from ..demo.synthetic import generate_fleet

    _check_out(args.out, directory=True)
    fleet = generate_fleet(args.series, args.features, args.steps, seed=args.seed)
    train, test = fleet.split(int(args.steps * 0.6))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("test", test)):
        sids, ts, values, labels = part.interleaved()
        with (args.out / f"{name}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["series_id", "ts", *fleet.feature_names])
            for sid, t, v in zip(sids, ts, values, strict=True):
                w.writerow([sid, repr(float(t)), *(f"{x:.5g}" for x in v)])
        with (args.out / f"{name}_labels.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["series_id", "ts", "label"])
            w.writerows(
                (s, repr(float(t)), int(lab)) for s, t, lab in zip(sids, ts, labels, strict=True)
            )
    print(
        f"wrote {args.out}/train.csv and test.csv ({args.series} series x {args.features} "
        f"features, {args.steps} steps, {len(fleet.injections)} injected anomalies)"
    )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The fleet demo, or with ``--drift`` the model lifecycle demo (on the embedded broker)."""
    _device(args.device)

    def say(line: str) -> None:
        print(line, flush=True)

    if args.drift:
        from ..demo.drift import run_drift_demo

        torch.set_num_threads(1)  # the retraining worker gets the other core
        return run_drift_demo(settings, say, seed=args.seed, rate=args.rate, out=args.out)
    from ..demo.fleet import run_fleet_demo

    torch.set_num_threads(settings.service.torch_threads)
    return run_fleet_demo(
        settings,
        say,
        series=args.series,
        features=args.features,
        steps=args.steps,
        seed=args.seed,
        epochs=args.epochs,
        rate=args.rate,
        device=args.device,
        out=args.out,
    )


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from ..evaluation.datasets import QUICK_SERIES, read_labelled_csv, read_smd
    from ..evaluation.detectors import DEFAULT_DETECTORS, DETECTORS
    from ..evaluation.runner import evaluate_nab_to, evaluate_to

    detectors = args.detectors or list(DEFAULT_DETECTORS)
    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown:
        raise UsageError(f"unknown detectors {unknown}; choose from {sorted(DETECTORS)}")
    _check_out(args.out, directory=True)
    logging.getLogger("stream_vae.evaluation").setLevel(logging.INFO)
    names = args.series or (QUICK_SERIES[args.kind] if args.quick else None)
    _check_text_inputs(args.kind, args.path, names)
    if args.kind == "smd":
        series = read_smd(args.path, names)
    elif args.kind == "csv":
        series = read_labelled_csv(args.path, label_column=args.label_column)
    else:
        table = evaluate_nab_to(
            args.out, args.path, settings, detectors, names=names, seed=args.seed
        )
        print(table)
        print(f"report: {args.out / 'report.md'}, {args.out / 'report.json'}")
        return 0
    print(evaluate_to(args.out, series, settings, detectors, seed=args.seed, title=str(args.path)))
    print(f"report: {args.out / 'report.md'}, {args.out / 'report.json'}")
    return 0


def _check_text_inputs(kind: str, root: Path, names: Sequence[str] | None) -> None:
    """Read the text files ``evaluate`` will read through :func:`read_rows` first, so a binary
    or non-UTF-8 file, or an overlong cell, is one error line naming its file and line (the
    dataset readers open their files themselves and would raise a bare decoding error)."""
    if root.is_file():
        read_rows(root)
        return
    subdirs = (
        ("data",) if kind == "nab" else ("train", "test", "test_label", "interpretation_label")
    )
    for sub in subdirs:
        for f in sorted((root / sub).rglob("*")):
            wanted = kind == "nab" or names is None or f.stem in names  # NAB reads every file
            if wanted and f.suffix in (".csv", ".txt") and f.is_file():
                read_rows(f)

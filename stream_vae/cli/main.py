"""The ``stream-vae`` command.

Every expected failure (bad settings, bad files, a model that does not fit the data) prints one
``error: …`` line on stderr and exits with status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import StreamVAEError

__all__ = ["main"]

log = logging.getLogger("stream_vae")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-vae", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="TOML settings file (env STREAM_VAE_* wins)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fit a model on normal telemetry")
    t.add_argument("--data", required=True, type=Path, help="CSV/Parquet file, or SMD dir/file")
    t.add_argument("--out", required=True, type=Path, help="model directory to write")
    t.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty directory that is not a model (nothing in it is deleted)",
    )
    t.add_argument("--format", default="auto", choices=["auto", "csv", "parquet", "smd"])
    t.add_argument("--warm-start", type=Path, help="model directory to start from")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("score", help="score a file through the streaming path")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path, help="scores CSV to write")
    s.add_argument("--format", default="auto", choices=["auto", "csv", "parquet", "smd"])
    s.add_argument("--device", default="auto")
    s.add_argument("--batch", type=int, default=2048, help="records per micro-batch")
    s.add_argument(
        "--reconstruction",
        action="store_true",
        help="also write the model's value of each window's newest point (expected_<feature>)",
    )
    s.add_argument(
        "--impute",
        type=Path,
        metavar="FILE",
        help="accept missing values (empty or nan cells) and write the data to FILE with them "
        "filled by the model, flagged in an `imputed` column",
    )
    s.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx"],
        help="onnx: ONNX Runtime on the CPU (stream-vae[onnx])",
    )

    i = sub.add_parser(
        "incidents", help="summarise alert messages: kinds, incidents, recurring anomalies"
    )
    i.add_argument(
        "--alerts", required=True, type=Path, help="alert messages, one JSON object per line"
    )
    i.add_argument("--top", type=int, default=5, help="series and kinds listed")

    e = sub.add_parser("export", help="export a model to TorchScript and/or ONNX")
    e.add_argument("--model", required=True, type=Path)
    e.add_argument("--out", required=True, type=Path, help="directory for the exported files")
    e.add_argument("--to", default="all", choices=["all", "torchscript", "onnx"])

    d = sub.add_parser("demo", help="train on a generated fleet and stream its future (offline)")
    d.add_argument("--series", type=int, default=20)
    d.add_argument("--features", type=int, default=8)
    d.add_argument("--steps", type=int, default=1600)
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--rate", type=float, default=4000.0, help="records/s streamed into Kafka")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="where the plot goes")
    d.add_argument(
        "--drift",
        action="store_true",
        help="the model lifecycle instead: a regime change → drift → retrain → gate → swap",
    )

    u = sub.add_parser("run", help="the streaming service: Kafka in, alerts out")
    u.add_argument("--model", type=Path, help="model directory (default: the registry's current)")
    u.add_argument("--registry", type=Path, help="registry directory (default: registry.root)")

    rt = sub.add_parser("retrain", help="warm-start retrain from the registry's current model")
    rt.add_argument("--data", required=True, type=Path, help="recent normal telemetry")
    rt.add_argument("--format", default="auto", choices=["auto", "csv", "parquet", "smd"])
    rt.add_argument("--registry", type=Path, help="registry directory (default: registry.root)")
    rt.add_argument("--trigger", default="manual", choices=["manual", "schedule"])

    r = sub.add_parser("replay", help="produce a CSV/Parquet/SMD file to a Kafka topic")
    r.add_argument("data", type=Path)
    r.add_argument("--topic", required=True)
    r.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    r.add_argument("--format", default="auto", choices=["auto", "csv", "parquet", "smd"])

    v = sub.add_parser("evaluate", help="detection quality on labelled data, with baselines")
    v.add_argument("kind", choices=["nab", "smd", "csv"], help="data layout (see docs/results.md)")
    v.add_argument("path", type=Path, help="NAB or SMD root directory, or a labelled CSV file")
    v.add_argument("--out", required=True, type=Path, help="directory for the report")
    v.add_argument("--detectors", nargs="+", help="default: all")
    v.add_argument("--series", nargs="+", help="only these series (SMD names, NAB files)")
    v.add_argument("--quick", action="store_true", help="a few series (the CI regression run)")
    v.add_argument("--label-column", default="label", help="csv: the 0/1 label column")
    v.add_argument("--seed", type=int, default=0)

    g = sub.add_parser("generate", help="write a synthetic labelled fleet as CSV files")
    g.add_argument("--out", required=True, type=Path, help="directory for train.csv, test.csv")
    g.add_argument("--series", type=int, default=20)
    g.add_argument("--features", type=int, default=8)
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--seed", type=int, default=0)

    _registry_parser(sub)
    return p


def _registry_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rg = sub.add_parser("registry", help="model versions: list, add, promote, rollback")
    where = "registry directory (default: the registry.root setting)"
    rg.add_argument("--registry", type=Path, help=where)
    # also accepted after the action; SUPPRESS keeps a value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help=where)
    acts = rg.add_subparsers(dest="registry_command", required=True)
    acts.add_parser("list", parents=[common], help="versions, oldest first; * marks the current")
    a = acts.add_parser("add", parents=[common], help="publish a model directory")
    a.add_argument("model_dir", type=Path)
    a.add_argument("--promote", action="store_true", help="and make it current")
    a.add_argument("--reason", default="", help="recorded in the history when promoting")
    pr = acts.add_parser("promote", parents=[common], help="make a published version current")
    pr.add_argument("version")
    pr.add_argument("--reason", default="", help="recorded in the history")
    rb = acts.add_parser("rollback", parents=[common], help="back to the previous promotion")
    rb.add_argument("--reason", default="", help="recorded in the history")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from . import commands  # heavy imports (torch) only after the arguments parse

    try:
        return int(getattr(commands, f"cmd_{args.command}")(args))
    except StreamVAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

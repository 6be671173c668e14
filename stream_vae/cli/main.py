# PYTHON_ARGCOMPLETE_OK
"""stream-vae: train a model on telemetry, score files, serve Kafka, from the command line.

Argument parsing imports nothing heavy (``--help`` and ``--version`` never import torch); the
settings are built once, here, and each command gets them. Every expected failure prints one
``error: …`` line on stderr and exits with a status that names its kind (:data:`EXIT_CODES`);
tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import StreamVAEError

__all__ = ["EXIT_CODES", "main"]

# The exit statuses, after BSD sysexits.h (docs/cli.md "Exit codes"; tests/test_cli.py checks each).
EXIT_CODES = {
    0: "success",
    2: "usage: an unknown option, or an option's value the command cannot use",
    3: "retrain: the gate rejected the candidate (nothing was promoted)",
    65: "bad data: a file or record that cannot be used (EX_DATAERR)",
    66: "bad model or registry: missing, corrupt, or not fitting the data (EX_NOINPUT)",
    75: "Kafka or the network unreachable: retriable (EX_TEMPFAIL)",
    78: "bad configuration: a setting, the --config file, an environment key (EX_CONFIG)",
    130: "interrupted (Ctrl-C)",
}
FORMATS = ["auto", "csv", "parquet", "smd"]


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one to show (not ``None`` or a flag's ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False or default == "":
            return text
        if default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._VersionAction | argparse._HelpAction):
            return text
        return f"{text} (default: %(default)s)"


def _epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())


def _globals(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """The options every command takes, before or after its name. Given after it they win;
    ``SUPPRESS`` on the subcommand keeps a value given before it."""
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="TOML",
        help="settings file; STREAM_VAE_* environment variables win over it",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="log at INFO (the log.level setting wins)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stream-vae",
        description=__doc__.splitlines()[0],
        epilog=_epilog(),
        formatter_class=_Help,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _globals(p, default=None)
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=text, description=text, parents=[common], formatter_class=_Help
        )

    _model_commands(command)
    _service_commands(command)
    _offline_commands(command)
    _registry_parser(command, common)
    return p


# (name, help) -> the subcommand's parser, with the global options
_Command = Callable[[str, str], argparse.ArgumentParser]


def _forward_options(p: argparse.ArgumentParser) -> None:
    """Where a one-shot command runs the model (`run` takes them from service.* instead)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx"],
        help="onnx: ONNX Runtime on the CPU (stream-vae[onnx])",
    )


def _model_commands(command: _Command) -> None:
    t = command("train", "fit a model on normal telemetry")
    t.add_argument("--data", required=True, type=Path, help="CSV/Parquet file, or SMD dir/file")
    t.add_argument("--out", required=True, type=Path, help="model directory to write")
    t.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty directory that is not a model (nothing in it is deleted)",
    )
    t.add_argument("--format", default="auto", choices=FORMATS, help="format of --data")
    t.add_argument("--warm-start", type=Path, metavar="MODEL", help="model directory to start from")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--no-progress", action="store_true", help="no per-epoch progress lines")

    s = command("score", "score a file through the streaming path")
    s.add_argument("--model", required=True, type=Path, help="model directory")
    s.add_argument("--data", required=True, type=Path, help="CSV/Parquet file, or SMD dir/file")
    s.add_argument("--out", required=True, type=Path, help="scores CSV to write")
    s.add_argument("--format", default="auto", choices=FORMATS, help="format of --data")
    _forward_options(s)
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

    e = command("export", "export a model to TorchScript and/or ONNX")
    e.add_argument("--model", required=True, type=Path, help="model directory")
    e.add_argument("--out", required=True, type=Path, help="directory for the exported files")
    e.add_argument(
        "--to",
        default="all",
        choices=["all", "torchscript", "onnx", "triton"],
        help="which formats (triton: a Triton Inference Server model repository in --out)",
    )

    rt = command("retrain", "warm-start retrain from the registry's current model, gate, promote")
    rt.add_argument("--data", required=True, type=Path, help="recent normal telemetry")
    rt.add_argument("--format", default="auto", choices=FORMATS, help="format of --data")
    rt.add_argument("--registry", type=Path, help="registry directory (default: registry.root)")
    rt.add_argument(
        "--trigger",
        default="manual",
        choices=["manual", "schedule"],
        help="recorded in the registry's history",
    )


def _service_commands(command: _Command) -> None:
    u = command("run", "the streaming service: Kafka in, alerts out")
    u.add_argument("--model", type=Path, help="model directory (default: the registry's current)")
    u.add_argument("--registry", type=Path, help="registry directory (default: registry.root)")
    u.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default: service.device)")
    u.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        help="auto: ONNX Runtime on the CPU where installed (default: service.backend)",
    )

    ro = command("route", "alerts from the alert topic to an Alertmanager and/or a webhook")
    ro.add_argument(
        "--alertmanager",
        metavar="URL",
        help="Alertmanager base URL, posted to URL/api/v2/alerts (default: route.alertmanager_url)",
    )
    ro.add_argument(
        "--webhook", metavar="URL", help="JSON webhook URL (default: route.webhook_url)"
    )

    sv = command("serve", "a stateless HTTP scoring endpoint: POST /v1/score (stream-vae[serve])")
    sv.add_argument("--model", required=True, type=Path, help="model directory")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    _forward_options(sv)

    r = command("replay", "produce a CSV/Parquet/SMD file to a Kafka topic")
    r.add_argument("--data", type=Path, help="CSV/Parquet file, or SMD dir/file")
    r.add_argument("legacy_data", nargs="?", type=Path, help=argparse.SUPPRESS)  # before 0.2
    r.add_argument("--topic", required=True, help="topic to produce to")
    r.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    r.add_argument("--format", default="auto", choices=FORMATS, help="format of --data")

    d = command("demo", "train on a generated fleet and stream its future (embedded broker)")
    d.add_argument("--series", type=int, default=20, help="machines in the fleet")
    d.add_argument("--features", type=int, default=8, help="channels per machine")
    d.add_argument("--steps", type=int, default=1600, help="points per machine")
    d.add_argument("--epochs", type=int, default=20, help="training epochs")
    d.add_argument("--seed", type=int, default=0, help="seeds the fleet and the training")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    d.add_argument("--rate", type=float, default=4000.0, help="records/s streamed into Kafka")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="where the plot goes")
    d.add_argument(
        "--drift",
        action="store_true",
        help="the model lifecycle instead: a regime change → drift → retrain → gate → swap",
    )


def _offline_commands(command: _Command) -> None:
    i = command("incidents", "summarise alert messages: kinds, incidents, recurring anomalies")
    i.add_argument(
        "--alerts", required=True, type=Path, help="alert messages, one JSON object per line"
    )
    i.add_argument("--top", type=int, default=5, help="series and kinds listed")

    v = command("evaluate", "detection quality on labelled data, with baselines")
    v.add_argument("kind", choices=["nab", "smd", "csv"], help="data layout (see docs/results.md)")
    v.add_argument("path", type=Path, help="NAB or SMD root directory, or a labelled CSV file")
    v.add_argument("--out", required=True, type=Path, help="directory for the report")
    v.add_argument("--detectors", nargs="+", help="default: all")
    v.add_argument("--series", nargs="+", help="only these series (SMD names, NAB files)")
    v.add_argument("--quick", action="store_true", help="a few series (the CI regression run)")
    v.add_argument("--label-column", default="label", help="csv: the 0/1 label column")
    v.add_argument("--seed", type=int, default=0, help="seeds training and the baselines")

    g = command("generate", "write a synthetic labelled fleet as CSV files")
    g.add_argument("--out", required=True, type=Path, help="directory for train.csv, test.csv")
    g.add_argument("--series", type=int, default=20, help="machines in the fleet")
    g.add_argument("--features", type=int, default=8, help="channels per machine")
    g.add_argument("--steps", type=int, default=2000, help="points per machine")
    g.add_argument("--seed", type=int, default=0, help="seeds the fleet")


def _registry_parser(command: _Command, common: argparse.ArgumentParser) -> None:
    rg = command("registry", "model versions: list, add, promote, rollback")
    where = "registry directory (default: the registry.root setting)"
    rg.add_argument("--registry", type=Path, help=where)
    # also accepted after the action; SUPPRESS keeps a value given before it
    local = argparse.ArgumentParser(add_help=False)
    local.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help=where)
    acts = rg.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return acts.add_parser(
            name, help=text, description=text, parents=[common, local], formatter_class=_Help
        )

    action("list", "versions, oldest first; * marks the current")
    a = action("add", "publish a model directory")
    a.add_argument("model_dir", type=Path, help="model directory")
    a.add_argument("--promote", action="store_true", help="and make it current")
    a.add_argument("--reason", default="", help="recorded in the history when promoting")
    pr = action("promote", "make a published version current")
    pr.add_argument("version", help="a version `registry list` shows")
    pr.add_argument("--reason", default="", help="recorded in the history")
    rb = action("rollback", "back to the previous promotion")
    rb.add_argument("--reason", default="", help="recorded in the history")


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion where argcomplete is installed (``stream-vae[completion]``; then
    ``eval "$(register-python-argcomplete stream-vae)"``); a no-op otherwise."""
    try:
        argcomplete = importlib.import_module("argcomplete")
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings given as options: ``run --device/--backend`` are ``service.device/backend``,
    ``route --alertmanager/--webhook`` are ``route.alertmanager_url/webhook_url``."""
    if args.command == "route":
        given = {"alertmanager_url": args.alertmanager, "webhook_url": args.webhook}
        route = {k: v for k, v in given.items() if v}
        return {"route": route} if route else {}
    if args.command != "run":
        return {}
    service = {k: getattr(args, k) for k in ("device", "backend") if getattr(args, k)}
    return {"service": service} if service else {}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    _complete(parser)
    args = parser.parse_args(argv)
    if args.command == "replay":
        if (args.data is None) == (args.legacy_data is None):
            parser.error("replay: give the file once, as --data FILE")
        args.data = args.data or args.legacy_data
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    from ..config import load_settings
    from ..logs import configure_logging

    json_logs = False
    try:
        settings = load_settings(args.config, **_overrides(args))
        json_logs = settings.log.format == "json"
        serving = args.command in ("run", "route", "serve")
        level = "INFO" if args.verbose or serving else "WARNING"
        configure_logging(settings.log, default_level=level)
        if not serving and settings.log.level is None:
            # A one-shot command reports an unreachable broker in its one error line; the
            # client's own reconnect lines would come first and bury it.
            logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        from . import commands, offline  # heavy imports (torch) only once the arguments parse

        module = offline if hasattr(offline, f"cmd_{args.command}") else commands
        return int(getattr(module, f"cmd_{args.command}")(args, settings))
    except StreamVAEError as exc:
        if json_logs:  # stderr stays one JSON object per line for the log pipeline
            logging.getLogger("stream_vae").error("%s", exc, extra={"exit_code": exc.exit_code})
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

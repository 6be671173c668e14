"""Implementations of the CLI subcommands (argument parsing lives in :mod:`stream_vae.cli.main`)."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiokafka.errors import KafkaError

from .. import _json
from ..config import Settings
from ..errors import ArtifactError, ConfigError, KafkaUnavailableError, UsageError
from ..runtime.impute import impute
from ..runtime.live import DetectorOptions, LiveModel, build_detector
from ..scoring.scorer import ScoredBatch
from ..storage.files import check_destination, load_artifact, save_artifact
from ..storage.tabular import Table, read_table, write_imputed, write_scores
from ..training.build import MAX_TRAIN_ABS, train_artifact

__all__ = [
    "EXIT_REJECTED",
    "cmd_export",
    "cmd_registry",
    "cmd_replay",
    "cmd_retrain",
    "cmd_route",
    "cmd_run",
    "cmd_score",
    "cmd_serve",
    "cmd_train",
]

# `retrain` ran, and the gate rejected its candidate: nothing was promoted (a CronJob shows it).
EXIT_REJECTED = 3


def _device(name: str, flag: str = "--device") -> str:
    """``--device`` (or the setting named by ``flag``) checked before any work: a device this
    machine lacks is one error line, not a traceback from inside torch after the data is read
    (a :class:`UsageError` for an option, a :class:`ConfigError` for a setting)."""
    if name == "auto":
        return name
    error = UsageError if flag.startswith("-") else ConfigError
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise error(f"{flag} {name}: not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise error(
                f"{flag} {name}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}): use cpu or auto"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise error(f"{flag} {name}: this machine has {n} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise error(f"{flag} {name}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise error(f"{flag} {name}: not supported (auto, cpu, cuda, cuda:1, mps)")
    return name


def _check_out(path: Path, *, directory: bool) -> None:
    """Refuse an ``--out`` that cannot be written before any work is done (not a traceback
    once it is): a directory where a file goes or the reverse, or a file on the way to it."""
    if path.exists() and path.is_dir() != directory:
        what = "not a directory" if directory else "a directory"
        raise UsageError(f"--out {path}: exists and is {what}")
    for parent in path.parents:  # the nearest one that exists must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {path}: {parent} is a file, not a directory")
            return


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    device = _device(args.device)
    check_destination(args.out, force=args.force)  # before training, not after
    _check_out(args.out, directory=True)
    warm = load_artifact(args.warm_start) if args.warm_start else None
    table = read_table(args.data, fmt=args.format, max_abs=MAX_TRAIN_ABS)
    art = train_artifact(
        table.batch,
        table.feature_names,
        settings,
        warm_start=warm,
        device=device,
        progress=not args.no_progress,
    )
    try:
        save_artifact(art, args.out, force=args.force)
    except OSError as exc:  # permissions, a full disk: after training, but still one line
        raise ArtifactError(f"cannot write the model to {args.out}: {exc}") from None
    m = art.training["metrics"]
    print(
        f"model {art.version} -> {args.out}: {m['n_series']} series, {m['n_rows']} rows, "
        f"{m['n_windows']['train']} training windows, best epoch {m['best_epoch']}, "
        f"val recon {m['val_recon']:.4f}, alpha {art.hybrid.alpha:.2f}, threshold "
        f"{art.threshold:.4f} ({art.calibration.method}, target FPR "
        f"{art.calibration.target_fpr:g}), {m['train_seconds']:.1f} s"
    )
    if m["posterior_collapse"]:
        print(
            "warning: posterior collapse (every latent dim has KL ~ 0); the latent score is "
            "uninformative: lower train.beta or raise train.free_bits"
        )
    return 0


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    if args.batch < 1:
        raise UsageError("--batch must be ≥ 1")
    device = _device(args.device)
    _check_out(args.out, directory=False)
    art = load_artifact(args.model)
    if args.impute is not None:
        _check_out(args.impute, directory=False)
    table = read_table(
        args.data, fmt=args.format, feature_names=art.feature_names, missing=bool(args.impute)
    )
    # The file need not be in time order (as for train); the window store must see each series
    # in time order, or the rows that come back in time are skipped as late.
    batch, n_moved = table.batch.in_series_time_order()
    live = LiveModel(
        art,
        DetectorOptions(device=device, backend=args.backend),
        alerts=settings.alerts,
    )
    rows: list[tuple[str, float, float, float, float, bool]] = []
    expected: list[np.ndarray] = []  # (n, d) per chunk, with --reconstruction
    n_alerts = 0

    def consume(scored: ScoredBatch) -> None:
        nonlocal n_alerts
        if args.reconstruction and scored.expected is not None:
            expected.append(scored.expected)
        rows.extend(
            (k, float(t), float(s), float(r), float(z), bool(a))
            for k, t, s, r, z, a in zip(
                scored.keys,
                scored.ts,
                scored.smoothed,
                scored.raw,
                scored.threshold,
                scored.is_alert,
                strict=True,
            )
        )
        n_alerts += sum(1 for a in scored.alerts if a.event == "open")

    if args.impute is None:
        for scored in live.stream(batch, args.batch):
            consume(scored)
    else:
        done = impute(live, batch, args.batch, consume)
        args.impute.parent.mkdir(parents=True, exist_ok=True)
        write_imputed(
            args.impute, Table(done.batch, art.feature_names), done.missing, done.by_model
        )
        print(
            f"imputed {int(done.missing.sum())} missing values, {int(done.by_model.sum())} by "
            f"the model (the rest carried forward: no window yet) -> {args.impute}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recon = None
    if args.reconstruction:
        d = len(art.feature_names)
        recon = (art.feature_names, np.concatenate(expected) if expected else np.empty((0, d)))
    write_scores(args.out, rows, recon)
    c = live.store.counters
    print(
        f"scored {len(rows)} windows of {len(set(batch.series_ids))} series with "
        f"{art.version}: {n_alerts} alert episodes -> {args.out}"
    )
    if n_moved:
        print(
            f"note: {n_moved} rows were out of time order within their series: each series "
            "was scored in time order"
        )
    if c["late"] or c["gap_resets"]:
        print(
            f"note: {c['late']} rows repeating a timestamp of their series were skipped and "
            f"{c['gap_resets']} gaps restarted a series' window"
        )
    return 0


def _until_signalled(run: Callable[[Any], Awaitable[None]], settings: Settings) -> None:
    """``run(stop)`` on a new event loop until it returns; SIGINT and SIGTERM set ``stop`` (the
    service drains and commits). A broker that cannot be reached is one retriable error."""
    import asyncio
    import signal

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    try:
        asyncio.run(serve())
    except (OSError, KafkaError) as exc:
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}"
        ) from None


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from ..service import Service

    _device(settings.service.device, "--device" if args.device else "service.device")
    torch.set_num_threads(settings.service.torch_threads)
    registry = _registry(args, settings, required=args.model is None)
    artifact = load_artifact(args.model) if args.model is not None else registry.load()
    service = Service(settings, artifact, registry=registry)
    # What is alive now (torch, the model, the settings: hundreds of thousands of objects) lives
    # as long as the process: out of the cyclic collector's walks, which at 100k series cost a
    # quarter of the service's rate (docs/operations.md). Reference counting still frees it (the
    # first model after a hot swap: any part of it in a reference cycle stays, one model at most).
    gc.freeze()
    _until_signalled(service.run, settings)
    print("stopped: " + ", ".join(f"{k} {v}" for k, v in service.accounting().items()))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The stateless scoring endpoint until SIGTERM/SIGINT (stream_vae.serve)."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port")
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f"serve needs its extra ({exc}): pip install 'stream-vae[serve]'"
        ) from None
    device = _device(args.device)
    torch.set_num_threads(settings.service.torch_threads)
    art = load_artifact(args.model)
    detector = build_detector(art, DetectorOptions(device=device, backend=args.backend))
    app = create_app(art, detector)
    print(f"serving {art.version} on http://{args.host}:{args.port} (docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    """Alerts to people until SIGTERM/SIGINT (stream_vae.service.route)."""
    from ..service.route import Router

    router = Router(settings.kafka, settings.route)
    _until_signalled(router.run, settings)
    print("stopped: " + ", ".join(f"{k} {v}" for k, v in router.counts.items()))
    return 0


def _registry(args: argparse.Namespace, settings: Settings, *, required: bool) -> Any:
    from ..storage.registry import Registry

    root = getattr(args, "registry", None) or settings.registry.root
    if root is None:
        if required:
            raise ConfigError(
                "no model: pass --model DIR, or --registry DIR / registry.root "
                "(STREAM_VAE_REGISTRY__ROOT) with a promoted version"
            )
        return None
    return Registry(root)


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    """On demand (or from a CronJob): retrain on a file of recent normal telemetry, gate, and
    promote in the registry; running services swap to it within ``registry.poll_s``."""
    from ..lifecycle.job import run_job
    from ..lifecycle.policy import RetrainPolicy

    torch.set_num_threads(settings.retrain.torch_threads)
    registry = _registry(args, settings, required=True)
    live = registry.load()
    table = read_table(args.data, fmt=args.format, feature_names=live.feature_names)
    rows = table.batch.in_time_order()
    # The service's reservoir and its filter: windows the live model holds in an alert episode
    # are not learned from (a file of "normal" data rarely is all normal).
    policy = RetrainPolicy(settings.retrain, seed=settings.service.seed)
    live_model = LiveModel(live, DetectorOptions(device="cpu"), alerts=settings.alerts)
    n_series = len(set(rows.series_ids))
    for ready, scored in live_model.steps(rows):
        policy.offer(ready, scored, live_model.scorer, n_series)
    sample = policy.reservoir.sample()
    outcome = run_job(registry, sample, settings, trigger=args.trigger)
    print(_json.dumps(outcome).decode())
    return 0 if outcome["event"] == "promoted" else EXIT_REJECTED


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from ..service.replay import replay

    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be > 0 messages per second")
    table = read_table(args.data, fmt=args.format)
    try:
        n = asyncio.run(replay(table, settings.kafka, args.topic, rate=args.rate))
    except (OSError, KafkaError) as exc:
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc} "
            "(set STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS)"
        ) from None
    print(f"replayed {n} records from {args.data} to {args.topic}")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from ..storage.export import to_onnx, to_torchscript, to_triton

    _check_out(args.out, directory=True)
    art = load_artifact(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    model = art.model()
    written = []
    if args.to in ("all", "torchscript"):
        written.append(to_torchscript(model, args.out / "model.ts"))
    if args.to in ("all", "onnx", "triton"):
        try:
            if args.to == "triton":
                written.append(to_triton(model, args.out))
            else:
                written.append(to_onnx(model, args.out / "model.onnx"))
        except ImportError as exc:
            raise ConfigError(
                f"ONNX export needs the onnx package ({exc}): pip install 'stream-vae[onnx]'"
            ) from None
    print("exported " + ", ".join(str(p) for p in written))
    return 0


def cmd_registry(args: argparse.Namespace, settings: Settings) -> int:
    """``registry list|add|promote|rollback`` on --registry or the registry.root setting."""
    from ..errors import RegistryError
    from ..storage.registry import Registry

    root = args.registry or settings.registry.root
    if root is None:
        raise ConfigError(
            "no registry: pass --registry DIR or set registry.root (STREAM_VAE_REGISTRY__ROOT)"
        )
    reg, act = Registry(root), args.registry_command
    try:
        if act == "list":
            infos = reg.versions()
            print("\n".join(i.summary() for i in infos) or f"no versions in {root}")
        elif act == "add":
            version = reg.publish(load_artifact(args.model_dir), trigger="initial")
            print(f"published {version} from {args.model_dir} in {root}")
            if args.promote:
                reg.promote(version, reason=args.reason or "registry add --promote", actor="cli")
                print(f"promoted {version}")
        elif act == "promote":
            before = reg.current()
            reg.promote(args.version, reason=args.reason, actor="cli")
            print(f"promoted {args.version} (was {before or 'none'})")
        else:
            target = reg.rollback(reason=args.reason, actor="cli")
            print(f"rolled back {reg.history()[-1]['from']} -> {target}")
    except OSError as exc:  # permissions, a full disk, a missing mount: not a traceback
        raise RegistryError(f"registry {root}: {exc}") from None
    return 0

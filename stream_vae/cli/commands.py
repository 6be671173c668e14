"""Implementations of the CLI subcommands (argument parsing lives in :mod:`stream_vae.cli.main`)."""

from __future__ import annotations

import argparse
import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiokafka.errors import KafkaError

from .. import _json
from ..config import Settings, load_settings
from ..core.records import RecordBatch
from ..errors import ConfigError, DataError, KafkaUnavailableError
from ..runtime.live import Pipeline
from ..storage.artifact import Artifact
from ..storage.tabular import read_table, write_scores
from ..training.build import train_artifact

__all__ = [
    "cmd_demo",
    "cmd_evaluate",
    "cmd_export",
    "cmd_generate",
    "cmd_registry",
    "cmd_replay",
    "cmd_retrain",
    "cmd_run",
    "cmd_score",
    "cmd_train",
]


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_train(args: argparse.Namespace) -> int:
    settings = _settings(args)
    warm = Artifact.load(args.warm_start) if args.warm_start else None
    table = read_table(args.data, fmt=args.format)
    art = train_artifact(
        table.batch,
        table.feature_names,
        settings,
        warm_start=warm,
        device=args.device,
        progress=not args.no_progress,
    )
    art.save(args.out)
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


def cmd_score(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigError("--batch must be ≥ 1")
    art = Artifact.load(args.model)
    table = read_table(args.data, fmt=args.format, feature_names=art.feature_names)
    pipe = Pipeline.from_artifact(art, args.device, args.backend)
    rows: list[tuple[str, float, float, float, float, bool]] = []
    n_alerts = 0
    for scored in pipe.stream(table.batch, args.batch):
        alert = scored.is_alert
        rows.extend(
            (k, float(t), float(s), float(r), scored.threshold, bool(a))
            for k, t, s, r, a in zip(
                scored.keys, scored.ts, scored.smoothed, scored.raw, alert, strict=True
            )
        )
        n_alerts += sum(1 for a in scored.alerts if a.event == "open")
    if args.out.parent and not args.out.parent.exists():
        args.out.parent.mkdir(parents=True)
    write_scores(args.out, rows)
    c = pipe.store.counters
    print(
        f"scored {len(rows)} windows of {len(set(table.batch.series_ids))} series with "
        f"{art.version}: {n_alerts} alert episodes -> {args.out}"
    )
    if c["late"] or c["gap_resets"]:
        print(
            f"note: {c['late']} late or duplicate rows were skipped (timestamps must increase "
            f"within a series) and {c['gap_resets']} gaps restarted a series' window"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from ..service import Service

    settings = _settings(args)
    torch.set_num_threads(settings.train.torch_threads)
    registry = _registry(args, settings, required=args.model is None)
    artifact = Artifact.load(args.model) if args.model is not None else registry.load()
    service = Service(settings, artifact, registry=registry)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    try:
        asyncio.run(serve())
    except (OSError, KafkaError) as exc:
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}"
        ) from None
    print("stopped: " + ", ".join(f"{k} {v}" for k, v in service.accounting().items()))
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


def cmd_retrain(args: argparse.Namespace) -> int:
    """On demand (or from a CronJob): retrain on a file of recent normal telemetry, gate, and
    promote in the registry; running services swap to it within ``registry.poll_s``."""
    from ..lifecycle.policy import RetrainPolicy
    from ..training.gate import run_job

    settings = _settings(args)
    torch.set_num_threads(settings.retrain.torch_threads)
    registry = _registry(args, settings, required=True)
    live = registry.load()
    table = read_table(args.data, fmt=args.format, feature_names=live.feature_names)
    b = table.batch
    order = np.argsort(b.ts, kind="stable")
    rows = RecordBatch(tuple(b.series_ids[i] for i in order), b.ts[order], b.values[order])
    # The service's reservoir and its filter: windows the live model holds in an alert episode
    # are not learned from (a file of "normal" data rarely is all normal).
    policy = RetrainPolicy(settings, live)
    pipe = Pipeline.from_artifact(live, "cpu")
    n_series = len(set(rows.series_ids))
    for i in range(0, len(rows), 2048):
        ready = pipe.store.push_many(rows.slice(i, i + 2048))
        scored = pipe.scorer.update(ready.keys, ready.ts, pipe.detector.infer(ready.values))
        policy.offer(ready, scored, pipe.scorer, n_series)
    sample = policy.reservoir.sample()
    outcome = run_job(registry, sample, settings, trigger=args.trigger)
    print(_json.dumps(outcome).decode())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from ..service.replay import replay

    settings = _settings(args)
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be > 0 messages per second")
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


def cmd_export(args: argparse.Namespace) -> int:
    from ..storage.export import to_onnx, to_torchscript

    art = Artifact.load(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    model = art.model()
    written = []
    if args.to in ("all", "torchscript"):
        written.append(to_torchscript(model, args.out / "model.ts"))
    if args.to in ("all", "onnx"):
        try:
            written.append(to_onnx(model, args.out / "model.onnx"))
        except ImportError as exc:
            raise DataError(
                f"ONNX export needs the onnx package ({exc}): pip install 'stream-vae[onnx]'"
            ) from None
    print("exported " + ", ".join(str(p) for p in written))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ..demo.synthetic import generate_fleet

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


def cmd_demo(args: argparse.Namespace) -> int:
    """Train on a generated fleet's past; stream its future through Kafka and the service."""
    import asyncio
    import time
    import uuid

    from ..broker import EmbeddedBroker
    from ..core.records import RecordBatch
    from ..demo.fleet import stream_through_kafka
    from ..demo.synthetic import generate_fleet
    from ..evaluation.events import Segment, match_events

    if args.drift:
        return _demo_drift(args)
    base = _settings(args)
    torch.set_num_threads(base.train.torch_threads)
    # The demo trades a little accuracy for time: fewer epochs than a production fit.
    settings = base.model_copy(
        update={"train": base.train.model_copy(update={"epochs": args.epochs})}
    )
    fleet = generate_fleet(
        args.series, args.features, args.steps, seed=args.seed, anomaly_start=int(args.steps * 0.6)
    )
    past, future = fleet.split(int(args.steps * 0.6))
    print(
        f"fleet: {args.series} series x {args.features} sensors, {args.steps} steps; training on "
        f"the first {past.n_steps} steps, then streaming {future.n_steps} steps with "
        f"{len(future.injections)} injected anomalies through Kafka"
    )
    sids, ts, values, _ = past.interleaved()
    art = train_artifact(
        RecordBatch(tuple(sids), ts, values),
        fleet.feature_names,
        settings,
        device=args.device,
        progress=True,
    )
    print(
        f"model {art.version}: alpha {art.hybrid.alpha:.2f}, threshold {art.threshold:.3f} "
        f"({art.calibration.method}), {art.training['metrics']['train_seconds']:.0f} s"
    )
    sids, ts, values, _ = future.interleaved()
    stream = RecordBatch(tuple(sids), ts, values)
    last_progress = [0.0]

    def on_alert(a: dict[str, Any]) -> None:
        when = datetime.fromtimestamp(a["ts"], UTC).strftime("%Y-%m-%d %H:%M")
        top = ", ".join(f"{t['feature']} {t['share']:.0%}" for t in a["top_features"])
        print(
            f"{when}  {a['event'].upper():5}  {a['series_id']}  score {a['score']:.2f} "
            f"(threshold {a['threshold']:.2f})  top: {top}",
            flush=True,
        )

    def on_progress(sent: int, total: int, acc: dict[str, int]) -> None:
        now = time.monotonic()
        if now - last_progress[0] >= 2.0 or acc["consumed"] >= total:
            last_progress[0] = now
            print(
                f"  .. produced {sent}/{total}, consumed {acc['consumed']}, windows scored "
                f"{acc['windows']}, alerts {acc['alerts']}",
                flush=True,
            )

    tag = uuid.uuid4().hex[:6]
    with EmbeddedBroker() as broker:
        print(f"embedded Kafka-compatible broker on {broker.bootstrap_servers}")
        kafka = settings.kafka.model_copy(
            update={
                "bootstrap_servers": broker.bootstrap_servers,
                "group_id": f"demo-{tag}",
                "input_topics": ("telemetry",),
                "topic_partitions": 4,
                "session_timeout_ms": 6000,
            }
        )
        service = settings.service.model_copy(update={"metrics_port": 0})  # any free port
        run_settings = settings.model_copy(update={"kafka": kafka, "service": service})
        alerts, acc = asyncio.run(
            stream_through_kafka(art, stream, run_settings, on_alert, on_progress, rate=args.rate)
        )
    step_s = float(fleet.ts[1] - fleet.ts[0])
    opens = [
        (a["series_id"], round((a["ts"] - fleet.ts[0]) / step_s))
        for a in alerts
        if a["event"] == "open"
    ]
    segments = [
        Segment(i.series_id, i.start + past.n_steps, i.end + past.n_steps, i.kind)
        for i in future.injections
    ]
    report = match_events(opens, segments, tolerance=art.vae_config.window)
    print(
        f"\nconsumed {acc['consumed']} records: {acc['scored']} scored, {acc['buffered']} "
        f"buffered (windows filling), {acc['late']} late, {acc['dead_letters']} dead letters"
    )
    print(
        f"detected {report.n_detected}/{report.n_segments} injected anomalies "
        f"(recall {report.recall:.2f}); {report.n_alerts} alerts, {report.n_false} false "
        f"(precision {report.precision:.2f}); mean delay {report.mean_delay:.1f} steps"
    )
    print("recall by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in report.recall_by_kind.items()))
    _demo_plot(args.out, art, future, stream, alerts, past.n_steps)
    return 0


def _demo_drift(args: argparse.Namespace) -> int:
    """Train on a fleet's past; at 40% of the stream every sensor's scale and level change; the
    service detects the drift, retrains in a worker process, gates, promotes and swaps, live."""
    import asyncio
    import shutil
    import uuid

    from ..broker import EmbeddedBroker
    from ..demo.fleet import drift_cycle
    from ..demo.synthetic import generate_fleet
    from ..storage.registry import Registry

    base = _settings(args)
    torch.set_num_threads(1)  # the retraining worker gets the other core
    steps, train_end, change = 3300, 900, 1200
    n_series = 12
    fleet = generate_fleet(
        n_series, 4, steps, seed=args.seed, n_anomalies_per_series=0, regime_change_at=change
    )
    settings = base.model_copy(
        update={
            "window": base.window.model_copy(update={"size": 16}),
            "model": base.model.model_copy(update={"hidden": 16, "latent": 4}),
            "train": base.train.model_copy(
                update={"epochs": 8, "batch_size": 64, "lr": 0.005, "torch_threads": 1}
            ),
            "scoring": base.scoring.model_copy(update={"target_fpr": 0.01}),
            "retrain": base.retrain.model_copy(
                update={"min_windows": 600 * n_series, "epochs": 8, "fleet_min_series": 10}
            ),
        }
    )
    sids, ts, values, _ = fleet.split(train_end)[0].interleaved()
    art = train_artifact(
        RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings, device="cpu"
    )
    root = args.out / "registry"
    shutil.rmtree(root, ignore_errors=True)
    registry = Registry(root)
    registry.publish(art, trigger="initial")
    registry.promote(art.version, reason="demo: initial model")
    print(
        f"model {art.version} trained on steps 0-{train_end} of {n_series} series; registry "
        f"{root}; streaming steps {train_end}-{steps}; every sensor changes scale and level "
        f"at step {change}"
    )
    future = fleet.split(train_end)[1]
    sids, ts, values, _ = future.interleaved()
    stream = RecordBatch(tuple(sids), ts, values)
    step_s = float(fleet.ts[1] - fleet.ts[0])

    def on_event(e: dict[str, Any]) -> None:
        at = f"step {round((e['ts'] - fleet.ts[0]) / step_s)}" if "ts" in e else ""
        if e["event"] == "drift":
            print(f"DRIFT    {e['kind']} on {e['channel']} at {at} (p = {e['p_value']:.1e})")
        elif e["event"] in ("promoted", "rejected"):
            g = e["gate"]
            print(
                f"{e['event'].upper():8} {e['version']} (parent {e['parent']}, {e['trigger']}): "
                f"trained {e['train_seconds']:.1f} s on {e['n_windows']} clean windows; gate: "
                f"-ELBO {g['candidate_neg_elbo']:.3f} vs live {g['live_neg_elbo']:.3f}, "
                f"alert rate {g['alert_rate']:.3%} (≤ {int(g['max_alerts'])} alerts allowed)"
                + ("" if g["passed"] else f"; rejected: {'; '.join(g['reasons'])}")
            )
        elif e["event"] == "swapped":
            print(
                f"SWAPPED  {e['previous']} -> {e['version']} between two batches "
                f"({e['closed_episodes']} open episodes closed with reason model_swap)"
            )
        else:
            print(f"{e['event'].upper():8} {e}")

    tag = uuid.uuid4().hex[:6]
    with EmbeddedBroker() as broker:
        kafka = settings.kafka.model_copy(
            update={
                "bootstrap_servers": broker.bootstrap_servers,
                "group_id": f"demo-drift-{tag}",
                "input_topics": (f"telemetry-{tag}",),
                "topic_partitions": 2,
            }
        )
        run_settings = settings.model_copy(
            update={
                "kafka": kafka,
                "service": settings.service.model_copy(
                    update={"metrics_port": None, "device": "cpu", "max_batch_records": 500}
                ),
                "registry": settings.registry.model_copy(update={"root": root, "poll_s": 0.5}),
            }
        )
        service, _, at_swap = asyncio.run(
            drift_cycle(run_settings, registry, stream, on_event, rate=min(args.rate, 1500.0))
        )
    acc = service.accounting()
    if at_swap:
        t0, t1 = service.lifecycle.job_times[0]
        before = at_swap["windows_over_threshold"] / max(1, at_swap["windows"])
        after = (acc["windows_over_threshold"] - at_swap["windows_over_threshold"]) / max(
            1, acc["windows"] - at_swap["windows"]
        )
        print(
            f"\nwindows over the threshold: {before:.1%} until the swap (the old model on the "
            f"new regime), {after:.2%} after it (target {settings.scoring.target_fpr:.0%}); "
            f"retraining took {t1 - t0:.1f} s while scoring went on"
        )
    else:
        print("\nno swap happened (see the events above)")
    print("registry: stream-vae registry --registry " + str(root) + " list")
    return 0 if at_swap else 1


def _demo_plot(
    out: Path, art: Artifact, future: Any, stream: Any, alerts: list[Any], offset: int
) -> None:
    """A PNG of four series with injected anomalies: a channel, the score, alerts, labels."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("(no plot: pip install matplotlib)")
        return
    from ..demo.plot import plot_series

    # The same scores the service computed, recomputed through the same path for the picture.
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for sc in Pipeline.from_artifact(art, "cpu").stream(stream, 4000):
        for k, t, v in zip(sc.keys, sc.ts.tolist(), sc.smoothed.tolist(), strict=True):
            ts_list, v_list = scores.setdefault(k, ([], []))
            ts_list.append(t)
            v_list.append(v)
    by_series: dict[str, list[Any]] = {}
    for inj in future.injections:
        by_series.setdefault(inj.series_id, []).append(inj)
    chosen = sorted(by_series)[:4]
    step = float(future.ts[1] - future.ts[0])
    ch = {sid: by_series[sid][0].features[0] for sid in chosen}
    out.mkdir(parents=True, exist_ok=True)
    path = plot_series(
        out / "demo.png",
        chosen,
        {sid: future.values[future.series_ids.index(sid), :, ch[sid]] for sid in chosen},
        future.ts,
        {sid: (np.asarray(scores[sid][0]), np.asarray(scores[sid][1])) for sid in chosen},
        art.threshold,
        alerts,
        {
            sid: [(future.ts[i.start], future.ts[0] + i.end * step) for i in by_series[sid]]
            for sid in chosen
        },
    )
    print(f"plot: {path}")


# --quick: the series a CI run evaluates (small, with labelled anomalies of different kinds)
_QUICK = {
    "smd": ["omi-1", "omi-3"],
    "nab": ["art_daily_jumpsup", "art_daily_no_noise", "ec2_request_latency_system_failure"],
    "csv": [],
}


def cmd_evaluate(args: argparse.Namespace) -> int:
    import logging

    from ..evaluation.datasets import read_labelled_csv, read_smd
    from ..evaluation.detectors import DEFAULT_DETECTORS, DETECTORS
    from ..evaluation.runner import evaluate_nab_to, evaluate_to

    settings = _settings(args)
    detectors = args.detectors or list(DEFAULT_DETECTORS)
    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown:
        raise ConfigError(f"unknown detectors {unknown}; choose from {sorted(DETECTORS)}")
    logging.getLogger("stream_vae.evaluation").setLevel(logging.INFO)
    names = args.series or (_QUICK[args.kind] if args.quick else None)
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


def cmd_registry(args: argparse.Namespace) -> int:
    """``registry list|add|promote|rollback`` on --registry or the registry.root setting."""
    from ..errors import RegistryError
    from ..storage.registry import Registry

    root = args.registry or _settings(args).registry.root
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
            version = reg.publish(Artifact.load(args.model_dir), trigger="initial")
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

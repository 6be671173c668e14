"""``window.stride``: scoring every S-th window of each series, for S = 1, 2, 4, 8.

    python bench/stride.py [--strides 1 2 4 8] [--seeds 0 1 2] [--asd ../shared/data/asd]
                           [--servers machine-1-1 ...] [--out bench/results/stride.md]

One model per training run serves every stride: the stride decides only which windows are
scored, so each is the same weights re-calibrated for it (``rescore_artifact``: the threshold is
set on the EMA of every S-th validation window, as the service smooths them). Three parts:

cost   the service's path without Kafka (``LiveModel.stream``: window store, model, scorer; the
       default backend, ONNX Runtime where installed) over
       a fleet of --cost-series series x 8 sensors, in chunks of 2,048 records; points/s and
       windows/s, the median of --repeats passes, and the cost per point against S = 1. The
       first W steps (buffers filling) are not timed.
fleet  the demo's fleet (20 series x 8 sensors, 1,600 steps, faults injected in the last 40%),
       trained once per seed, streamed at each stride: event recall, precision, mean delay in
       steps, false alerts per series per day, at the calibrated threshold, as the demo scores
       them.
asd    the ASD servers under bench/configs/asd.toml, trained once per server and seed: VUS-PR,
       AUC-PR, event F1 and delay of the product. A window's score also goes to the S - 1
       points it is the first to cover (the points it newly covers).

Only public tools (time.perf_counter).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from stream_vae.config import Settings, load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.alerting import own_threshold, stream_offline
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.evaluation.datasets import LabelledSeries, read_smd
from stream_vae.evaluation.detectors import score_product, train_product
from stream_vae.evaluation.events import Segment
from stream_vae.evaluation.runner import series_metrics
from stream_vae.runtime.live import DetectorOptions, LiveModel
from stream_vae.storage.artifact import Artifact
from stream_vae.training.build import rescore_artifact, train_artifact

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 2048


def with_stride(settings: Settings, stride: int) -> Settings:
    return settings.model_copy(
        update={"window": settings.window.model_copy(update={"stride": stride})}
    )


def seeded(settings: Settings, seed: int, **train: Any) -> Settings:
    return settings.model_copy(
        update={"train": settings.train.model_copy(update={"seed": seed, **train})}
    )


def interleaved(fleet: Any) -> RecordBatch:
    sids, ts, values, _ = fleet.interleaved()
    return RecordBatch(tuple(sids), ts, values)


def cost(
    art: Artifact, train: RecordBatch, settings: Settings, strides: list[int], args: Any
) -> list[dict[str, float]]:
    """Points/s and windows/s through LiveModel.stream at each stride (median of passes)."""
    w = art.vae_config.window
    fleet = generate_fleet(args.cost_series, 8, w + args.cost_steps, seed=7)
    batch = interleaved(fleet)
    warm = w * args.cost_series  # the first W steps of every series: buffers filling
    head, tail = batch.slice(0, warm), batch.slice(warm, len(batch))
    rows = []
    for s in strides:
        art_s = rescore_artifact(art, train, with_stride(settings, s))
        rates = []
        for _ in range(args.repeats):
            live = LiveModel(
                art_s, DetectorOptions(device="cpu", backend="auto"), alerts=settings.alerts
            )
            for _ in live.stream(head, CHUNK):
                pass
            n_windows, t0 = 0, time.perf_counter()
            for scored in live.stream(tail, CHUNK):
                n_windows += len(scored.keys)
            dt = time.perf_counter() - t0
            rates.append((len(tail) / dt, n_windows / dt))
        points = statistics.median(r[0] for r in rates)
        windows = statistics.median(r[1] for r in rates)
        rows.append({"stride": s, "points_s": points, "windows_s": windows})
        print(f"cost S={s}: {points:,.0f} points/s, {windows:,.0f} windows/s", flush=True)
    base = rows[0]["points_s"]
    for r in rows:
        r["us_point"] = 1e6 / r["points_s"]
        r["speedup"] = r["points_s"] / base
    return rows


def fleet_part(
    settings: Settings, strides: list[int], seeds: list[int], args: Any
) -> tuple[dict[int, list[dict[str, float]]], tuple[Artifact, RecordBatch, Settings]]:
    """Per stride, the demo fleet's alerts against its injected faults, one row per seed."""
    out: dict[int, list[dict[str, float]]] = {s: [] for s in strides}
    first: tuple[Artifact, RecordBatch, Settings] | None = None
    steps, split = 1600, 960
    for seed in seeds:
        fleet = generate_fleet(20, 8, steps, seed=seed, anomaly_start=split)
        past, future = fleet.split(split)
        run = seeded(settings, seed, epochs=20)  # the demo's epochs
        train = interleaved(past)
        art = train_artifact(train, fleet.feature_names, run, device="cpu", progress=False)
        if first is None:
            first = (art, train, run)
        stream = interleaved(future)
        step_s = float(fleet.ts[1] - fleet.ts[0])
        w = art.vae_config.window
        segments = [
            Segment(i.series_id, i.start + split, i.end + split, i.kind) for i in future.injections
        ]
        for s in strides:
            run_s = with_stride(run, s)
            art_s = rescore_artifact(art, train, run_s)
            alerts = stream_offline(art_s, run_s, stream, run.alerts.threshold_mode)
            got = own_threshold(
                alerts,
                segments,
                series_ids=sorted(set(stream.series_ids)),
                t0=float(fleet.ts[0]),
                step_s=step_s,
                steps=(split + w - 1, steps),
                tolerance=w,
                target=art_s.calibration.target_fpr,
            )
            e = got.events
            row = {
                "recall": e.recall,
                "precision": e.precision,
                "delay": e.mean_delay,
                "false_day": got.false_per_series_day,
                "normal_rate": got.normal_rate,
            }
            out[s].append(row)
            print(f"fleet seed {seed} S={s}: {row}", flush=True)
    assert first is not None
    return out, first


def asd_part(
    settings: Settings, strides: list[int], seeds: list[int], servers: list[LabelledSeries]
) -> dict[int, list[dict[str, float]]]:
    """Per stride and seed, the product's mean metrics over the servers."""
    per: dict[tuple[int, int], list[dict[str, float]]] = {}
    for seed in seeds:
        for series in servers:
            t0 = time.perf_counter()
            run = seeded(settings, seed)
            art = train_product(series, run, seed)
            train = RecordBatch(
                (series.name,) * len(series.train),
                series.train_ts,
                series.train.astype(np.float32),
            )
            days = (float(series.ts[-1] - series.ts[0]) + series.step_s) / 86_400.0
            for s in strides:
                run_s = with_stride(run, s)
                art_s = rescore_artifact(art, train, run_s)
                product = score_product(series, art_s, run_s)["stream-vae"]
                m = series_metrics(
                    product, series.labels, series.interpretation, run.window.size, days
                )
                per.setdefault((s, seed), []).append(m)
            print(
                f"asd seed {seed} {series.name}: {time.perf_counter() - t0:.0f} s, VUS-PR "
                + ", ".join(f"S={s} {per[(s, seed)][-1]['vus_pr']:.3f}" for s in strides),
                flush=True,
            )
    keys = ("vus_pr", "auc_pr", "event_f1", "event_recall", "delay", "normal_alert_rate")
    out: dict[int, list[dict[str, float]]] = {s: [] for s in strides}
    for (s, _), rows in sorted(per.items()):
        out[s].append({k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in keys})
    return out


def spread(rows: list[dict[str, float]], key: str, fmt: str = ".3f") -> str:
    vals = [r[key] for r in rows if np.isfinite(r[key])]
    if not vals:
        return ""
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} ± {statistics.pstdev(vals):{fmt}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--asd", type=Path, default=ROOT.parent / "shared" / "data" / "asd")
    ap.add_argument("--servers", nargs="+", help="only these ASD servers")
    ap.add_argument("--asd-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--no-asd", action="store_true", help="skip the ASD part")
    ap.add_argument("--cost-series", type=int, default=500)
    ap.add_argument("--cost-steps", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stride.md")
    args = ap.parse_args()
    strides = sorted(set(args.strides))
    if strides[0] != 1:
        strides = [1, *strides]  # the baseline of every ratio

    base = load_settings()
    # the fleet part trains the cost part's model (its first seed's): run with --seeds 0 for
    # the cost alone
    fleet, (art, train, run) = fleet_part(base, strides, args.seeds, args)
    costs = cost(art, train, run, strides, args)
    asd: dict[int, list[dict[str, float]]] = {}
    if args.no_asd:
        pass
    elif args.asd.is_dir():
        servers = read_smd(args.asd, args.servers)
        asd = asd_part(
            load_settings(ROOT / "bench" / "configs" / "asd.toml"), strides, args.asd_seeds, servers
        )
    else:
        print(f"no ASD data at {args.asd}: that part is skipped")

    w = art.vae_config.window
    lines = [
        "# window.stride: cost and detection per stride",
        "",
        f"`python bench/stride.py` (W = {w}, d = 8, hidden {art.vae_config.hidden}, CPU). "
        f"Cost: {args.cost_series} series, median of {args.repeats} passes. Fleet: seeds "
        f"{args.seeds}, mean ± std over seeds. ASD: seed(s) {args.asd_seeds}, mean over "
        f"{len(args.servers or []) or 'all'} servers (± std over seeds).",
        "",
        "| S | points/s | windows/s | µs per point | points/s vs S=1 | fleet recall | "
        "fleet precision | fleet delay (steps) | false / series-day | normal steps alerted | "
        "ASD VUS-PR | ASD AUC-PR | ASD event F1 | ASD delay |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for c in costs:
        s = int(c["stride"])
        a = asd.get(s, [])
        lines.append(
            f"| {s} | {c['points_s']:,.0f} | {c['windows_s']:,.0f} | {c['us_point']:.1f} | "
            f"{c['speedup']:.2f}× | {spread(fleet[s], 'recall', '.2f')} | "
            f"{spread(fleet[s], 'precision', '.2f')} | {spread(fleet[s], 'delay', '.1f')} | "
            f"{spread(fleet[s], 'false_day', '.2f')} | {spread(fleet[s], 'normal_rate', '.4f')} | "
            + (
                f"{spread(a, 'vus_pr')} | {spread(a, 'auc_pr')} | {spread(a, 'event_f1')} | "
                f"{spread(a, 'delay', '.1f')} |"
                if a
                else "| | | |"
            )
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

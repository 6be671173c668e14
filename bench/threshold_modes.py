"""The product as it alerts, under the static and the streaming (dspot) threshold, on real data.

    python bench/threshold_modes.py smd ../shared/data/asd --config bench/configs/asd.toml \
        --cache /tmp/asd-0.npz [--seed 0] [--grid]
    python bench/threshold_modes.py nab ../shared/data/nab --config bench/configs/nab.toml \
        --cache /tmp/nab-0.npz

The first run trains the product on each series (as ``stream-vae evaluate`` does) and caches
each series' smoothed test scores, its calibrated threshold and its streaming start; later runs
read the cache and only replay the thresholds and episodes, in seconds. For each threshold (the
deployment's ``alerts`` settings, and with ``--grid`` a sweep of the streaming threshold's
depth, floor and ceiling) it prints what users get, no labels used to alert:
smd: event precision/recall/F1, the alert rate on normal points against the target (median and
worst series) and false alerts per series per day; nab: NAB's standard and low-FP profiles at
the product's own alerts (one detection where an episode opens).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stream_vae.config import AlertSettings, Settings, load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.evaluation import metrics as M
from stream_vae.evaluation import nab
from stream_vae.evaluation.datasets import LabelledSeries, read_smd
from stream_vae.runtime.live import DetectorOptions, LiveModel, novelty_history
from stream_vae.scoring.episodes import EpisodeTracker
from stream_vae.scoring.spot import StreamingThreshold, TailStart
from stream_vae.scoring.threshold import newest_point_error
from stream_vae.training.build import train_artifact

_START_KEYS = ("level", "peak_threshold", "peak_rate", "shape", "scale")


def _start(a: np.ndarray) -> dict[str, float] | None:
    return dict(zip(_START_KEYS, a.tolist(), strict=True)) if a.size else None


def _series(layout: str, root: Path) -> tuple[list[LabelledSeries], list[Any]]:
    if layout == "smd":
        return read_smd(root), []
    files = nab.read_nab(root)
    out = []
    for f in files:
        labels = np.zeros(len(f.ts), dtype=bool)
        for start, end in f.windows:
            labels |= (f.ts >= start) & (f.ts <= end)
        x = f.values.reshape(-1, 1)
        prob = nab.probation_rows(len(x))
        out.append(
            LabelledSeries(
                f.name,
                x[:prob],
                x,
                labels,
                names=("value",),
                train_times=f.ts[:prob],
                test_times=f.ts,
            )
        )
    return out, files


def _score(series: LabelledSeries, settings: Settings) -> dict[str, Any]:
    """Train as the evaluation does; the smoothed score of every test window, in order."""
    train = RecordBatch(
        (series.name,) * len(series.train), series.train_ts, series.train.astype(np.float32)
    )
    art = train_artifact(train, series.feature_names, settings, device="cpu", progress=False)
    live = LiveModel(art, DetectorOptions(device="cpu"))
    test = RecordBatch((series.name,) * len(series.test), series.ts, series.test.astype(np.float32))
    ts, smoothed, err = [], [], []
    scale = art.scaler.std[: len(art.feature_names)]
    for ready, out in live.steps(test, 512):
        ts.append(out.ts)
        smoothed.append(out.smoothed)
        if out.expected is not None:
            err.append(newest_point_error(ready.values, out.expected, scale))
    settle = art.calibration.details.get("settle")
    return {
        "ts": np.concatenate(ts),
        "smoothed": np.concatenate(smoothed),
        # each window's newest-point error and the level it settles below (alerts.close_on_settle)
        "settle_err": np.concatenate(err) if err and settle else None,
        "settle_level": float(settle["level"]) if settle else None,
        "t0": art.threshold,
        "q": art.calibration.target_fpr,
        "start": art.calibration.details.get("stream"),  # None: too few held-out windows
    }


def _predictions(series: LabelledSeries, cached: dict[str, Any], a: AlertSettings) -> np.ndarray:
    ts, s = cached["ts"], cached["smoothed"]
    keys = [series.name] * len(ts)
    thr = np.full(len(ts), cached["t0"])
    if a.threshold_mode == "dspot" and cached["start"] is not None:
        spot = StreamingThreshold(
            TailStart.from_dict(cached["start"]),
            cached["t0"],
            cached["q"] * a.threshold_tail_factor,
            depth=a.threshold_depth,
            floor=a.threshold_floor,
            ceiling=a.threshold_ceiling,
        )
        thr = spot.update(keys, s)
    gate = novelty_history(a)
    may_open = None if gate is None else gate.update(keys, s) >= a.novelty_gate
    p = np.zeros(len(series.test), dtype=bool)
    opened = None
    tracker = EpisodeTracker(a.hysteresis, a.close_after, a.cooldown)
    settled = None
    if a.close_on_settle and cached.get("settle_err") is not None:
        settled = cached["settle_err"] < cached["settle_level"] * a.settle_factor
    for e in tracker.update(keys, ts, s, thr, may_open, settled):
        row = int(series.test_rows([e.ts])[0])
        if e.event == "open":
            opened = row
        elif opened is not None:
            p[opened:row] = True
            opened = None
    if opened is not None:
        p[opened:] = True
    return p


def _smd_line(series: list[LabelledSeries], cache: dict[str, Any], a: AlertSettings) -> str:
    f1, prec, rec, rates, per_day = [], [], [], [], []
    q = 0.0
    for s in series:
        p = _predictions(s, cache[s.name], a)
        e = M.event_prf(p, s.labels)
        f1.append(e.f1), prec.append(e.precision), rec.append(e.recall)
        rates.append(float(p[~s.labels].mean()))
        days = (float(s.ts[-1] - s.ts[0]) + s.step_s) / 86_400
        per_day.append(M.false_alarms(p, s.labels) / days)
        q = cache[s.name]["q"]
    med, worst = statistics.median(rates), max(rates)
    return (
        f"event P {statistics.fmean(prec):.3f} R {statistics.fmean(rec):.3f} "
        f"F1 {statistics.fmean(f1):.3f} | normal alert rate median {med / q:.1f}× worst "
        f"{worst / q:.1f}× | false alerts/day {statistics.fmean(per_day):.2f}"
    )


def _nab_line(
    series: list[LabelledSeries],
    files: list[Any],
    cache: dict[str, Any],
    a: AlertSettings,
    profiles: dict[str, Any],
) -> str:
    own = {}
    for s in series:
        p = _predictions(s, cache[s.name], a)
        own[s.name] = (p & ~np.r_[False, p[:-1]]).astype(np.float64)
    scores = {k: nab.score_at_threshold(files, own, prof, 0.5) for k, prof in profiles.items()}
    return " | ".join(f"{k}_own {v:.2f}" for k, v in scores.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("layout", choices=("smd", "nab"))
    p.add_argument("root", type=Path)
    p.add_argument("--config", type=Path)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", action="store_true", help="sweep depth, floor and ceiling")
    p.add_argument(
        "--settle", action="store_true", help="each threshold with close_on_settle flipped too"
    )
    args = p.parse_args(argv)
    settings = load_settings(args.config, train={"seed": args.seed})
    series, files = _series(args.layout, args.root)
    if args.cache.exists():
        loaded = np.load(args.cache, allow_pickle=False)
        cache = {
            s.name: {
                "ts": loaded[f"{s.name}/ts"],
                "smoothed": loaded[f"{s.name}/smoothed"],
                "t0": float(loaded[f"{s.name}/t0"]),
                "q": float(loaded[f"{s.name}/q"]),
                "start": _start(loaded[f"{s.name}/start"]),
                "settle_err": loaded.get(f"{s.name}/settle_err"),
                "settle_level": (
                    float(loaded[f"{s.name}/settle_level"])
                    if f"{s.name}/settle_level" in loaded
                    else None
                ),
            }
            for s in series
        }
    else:
        cache = {}
        for s in series:
            cache[s.name] = _score(s, settings)
            print(f"scored {s.name}", file=sys.stderr, flush=True)
        flat = {}
        for name, c in cache.items():
            flat |= {
                f"{name}/ts": c["ts"],
                f"{name}/smoothed": c["smoothed"],
                f"{name}/t0": np.float64(c["t0"]),
                f"{name}/q": np.float64(c["q"]),
                f"{name}/start": np.array(
                    [] if c["start"] is None else [c["start"][k] for k in _START_KEYS]
                ),
            }
            if c["settle_err"] is not None:
                flat[f"{name}/settle_err"] = c["settle_err"]
                flat[f"{name}/settle_level"] = np.float64(c["settle_level"])
        np.savez(args.cache, **flat)
    base = settings.alerts
    variants = [("static", base.model_copy(update={"threshold_mode": "static"}))]
    grid = (
        itertools.product((500, 2000, 5000), (0.5, 1.0), (3.0, 10.0, 30.0))
        if args.grid
        else [(base.threshold_depth, base.threshold_floor, base.threshold_ceiling)]
    )
    for depth, floor, ceiling in grid:
        a = base.model_copy(
            update={
                "threshold_mode": "dspot",
                "threshold_depth": depth,
                "threshold_floor": floor,
                "threshold_ceiling": ceiling,
            }
        )
        variants.append((f"dspot depth {depth} floor {floor} ceiling {ceiling}", a))
    if args.settle:
        flip = not base.close_on_settle
        variants += [
            (f"{name}, close_on_settle {flip}", a.model_copy(update={"close_on_settle": flip}))
            for name, a in variants
        ]
    profiles = nab.read_profiles(args.root) if args.layout == "nab" else {}
    for name, a in variants:
        line = (
            _smd_line(series, cache, a)
            if args.layout == "smd"
            else _nab_line(series, files, cache, a, profiles)
        )
        print(f"{name}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

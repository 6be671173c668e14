"""Run detectors over labelled series and report: the multivariate protocol.

Per series: every detector learns from the training rows (no labels), then scores the test rows
in order (:mod:`stream_vae.evaluation.detectors`). Metrics per series, then mean ± std over
series:

* threshold-free: ``roc_auc``, ``auc_pr``, ``vus_pr`` (buffer up to 2·W, TSB-AD's choice);
* at the detector's own threshold (ours: the calibrated one, no test labels): point-wise and
  event-wise ``precision``/``recall``/``f1``, ``alert_rate``, ``normal_alert_rate`` (the share
  of normal points alerted: what the calibration's ``target_fpr`` aims at; the summary gives
  its median and worst series too), ``false_alerts_per_day`` (alert episodes touching no
  labelled point, per day of test data), ``delay`` (steps from an event's
  start to its first alert), ``attribution`` (share of detected events whose alert blamed one
  of the labelled features), and ``pa_f1`` (point-adjusted: inflated, printed next to the others,
  never alone);
* ``best_f1``: the oracle — the best point-wise F1 over all thresholds, chosen with the test
  labels; an upper bound, not a result.

Examples
--------
>>> import numpy as np
>>> y = np.array([0, 0, 1, 1, 0, 0, 0, 0], bool)
>>> m = series_metrics(Output(np.array([0, .1, .9, .8, .2, 0, 0, .1])), y, (), window=2)
>>> m["roc_auc"], m["best_f1"]
(1.0, 1.0)
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import Settings
from . import metrics as M
from . import nab
from .datasets import LabelledSeries
from .detectors import DEFAULT_DETECTORS, Output, run_detector
from .novelty import novelty_stage
from .report import markdown_table, plot_outputs, write_report

__all__ = [
    "evaluate",
    "evaluate_nab_to",
    "evaluate_to",
    "nab_unit_scores",
    "series_metrics",
    "summarise",
]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

# The order of the report's columns; metrics a detector has no value for are left blank.
METRICS = (
    "vus_pr",
    "auc_pr",
    "roc_auc",
    "f1",
    "precision",
    "recall",
    "event_f1",
    "event_precision",
    "event_recall",
    "delay",
    "attribution",
    "alert_rate",
    "normal_alert_rate",
    "false_alerts_per_day",
    "best_f1",
    "pa_f1",
)


def series_metrics(
    out: Output,
    labels: npt.NDArray[np.bool_],
    interpretation: Sequence[tuple[int, int, frozenset[int]]],
    window: int,
    days: float = math.nan,
) -> dict[str, float]:
    """One detector's metrics on one series (NaN where a metric does not apply); ``days``: how
    long the test part lasts (for false alerts per day)."""
    s = out.scores
    m: dict[str, float] = {
        "roc_auc": M.roc_auc(s, labels),
        "auc_pr": M.average_precision(s, labels),
        "vus_pr": M.vus_pr(s, labels, max_buffer=2 * window),
        "best_f1": M.best_f1(s, labels)[0],
    }
    p = out.predictions
    if p is None:
        return m
    point, event = M.point_prf(p, labels), M.event_prf(p, labels)
    delays = M.detection_delays(p, labels)
    m |= {
        "precision": point.precision,
        "recall": point.recall,
        "f1": point.f1,
        "event_precision": event.precision,
        "event_recall": event.recall,
        "event_f1": event.f1,
        "alert_rate": float(p.mean()),
        # what the calibration aims at: the share of normal points alerted (target_fpr)
        "normal_alert_rate": float(p[~labels].mean()) if (~labels).any() else math.nan,
        "false_alerts_per_day": M.false_alarms(p, labels) / days,
        "delay": statistics.fmean(delays) if delays else math.nan,
        "pa_f1": M.point_adjusted_f1(p, labels),
    }
    if out.top_features is not None and interpretation:
        m["attribution"] = M.attribution_hit_rate(p, out.top_features, interpretation)
    return m


def evaluate(
    series: Sequence[LabelledSeries],
    settings: Settings,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    *,
    seed: int = 0,
    on_series: Callable[[str, str, dict[str, float], float], None] | None = None,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, Output]]]:
    """Every detector on every series → ``{detector: {series: metrics}}``, and the outputs
    (for plots). ``on_series(detector, series, metrics, seconds)`` reports progress."""
    per: dict[str, dict[str, dict[str, float]]] = {}
    outputs: dict[str, dict[str, Output]] = {}
    for s in series:
        if not s.labels.any():
            log.warning("%s: no labelled anomaly in the test part; skipped", s.name)
            continue
        for name in detectors:
            t0 = time.perf_counter()
            for det, out in run_detector(name, s, settings, seed).items():
                m = series_metrics(out, s.labels, s.interpretation, settings.window.size, _days(s))
                per.setdefault(det, {})[s.name] = m
                outputs.setdefault(det, {})[s.name] = out
                if on_series is not None:
                    on_series(det, s.name, m, time.perf_counter() - t0)
    return per, outputs


# Metrics whose median and worst series the summary also gives.
_SPREAD = ("normal_alert_rate",)


def _days(s: LabelledSeries) -> float:
    """How long a series' test part lasts, in days (one step per row beyond the last)."""
    ts = s.ts
    return (float(ts[-1] - ts[0]) + s.step_s) / 86_400.0


def summarise(per: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """``{detector: {metric: mean, metric_std: std}}`` over series (NaNs left out)."""
    out: dict[str, dict[str, Any]] = {}
    for det, by_series in per.items():
        row: dict[str, Any] = {"n_series": len(by_series)}
        for key in METRICS:
            vals = [m[key] for m in by_series.values() if key in m and not math.isnan(m[key])]
            if vals:
                row[key] = statistics.fmean(vals)
                row[f"{key}_std"] = statistics.pstdev(vals)
                if key in _SPREAD:  # a target on the typical and the worst series
                    row[f"{key}_median"] = statistics.median(vals)
                    row[f"{key}_max"] = max(vals)
        out[det] = row
    return out


def evaluate_to(
    out: Path,
    series: Sequence[LabelledSeries],
    settings: Settings,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    *,
    seed: int = 0,
    title: str = "",
) -> str:
    """:func:`evaluate`, then write ``out/report.{json,md}``, ``details.json`` and
    ``series.png``; returns the Markdown table."""
    t0 = time.perf_counter()

    def progress(det: str, name: str, m: dict[str, float], seconds: float) -> None:
        log.info(
            "%s %s: VUS-PR %.3f AUC-PR %.3f (%.1f s)", det, name, m["vus_pr"], m["auc_pr"], seconds
        )

    per, outputs = evaluate(series, settings, detectors, seed=seed, on_series=progress)
    summary = summarise(per)
    table = markdown_table(summary, METRICS)
    head = f"# {title}\n\n" if title else ""
    note = (
        f"\n\n{len(series)} series, window {settings.window.size}, seed {seed}, "
        f"{time.perf_counter() - t0:.0f} s. Means ± std over series. best_f1 is an oracle "
        "(threshold chosen with the test labels); pa_f1 is point-adjusted (inflated)."
        + _alert_rate_note(summary, settings.scoring.target_fpr)
    )
    write_report(
        out,
        summary,
        {"per_series": per, "settings": settings.model_dump(mode="json", exclude={"kafka"})},
        head + table + note,
    )
    if "stream-vae" in outputs:
        plot_outputs(out / "series.png", series, outputs["stream-vae"])
    return table + note


def _alert_rate_note(summary: dict[str, dict[str, Any]], target: float) -> str:
    """What users get at each detector's own threshold: its alert rate on normal points against
    the calibration's target, on the median and the worst series."""
    lines = [
        f"- {det}: median {row['normal_alert_rate_median']:.4f} "
        f"({row['normal_alert_rate_median'] / target:.1f}× the target), worst "
        f"{row['normal_alert_rate_max']:.4f} ({row['normal_alert_rate_max'] / target:.1f}×)"
        for det, row in summary.items()
        if "normal_alert_rate_median" in row
    ]
    if not lines:
        return ""
    head = f"\n\nAlert rate on normal points at the detector's own threshold (target {target:g}):"
    return head + "\n" + "\n".join(lines)


def nab_unit_scores(out: Output, settings: Settings) -> F64:
    """A detector's per-row scores as NAB wants them: in [0, 1], comparable across files (one
    threshold is swept over all files) and high where an excursion starts, not all along it
    (NAB charges every flagged row outside a window). Every detector's score goes through the
    same stage, the product's novelty (:mod:`stream_vae.evaluation.novelty`, the evaluation
    settings): ours computes it on its smoothed score as it streams (carried over a model swap);
    the baselines' scores get it here, so that the comparison is of the scores, not of the
    post-processing."""
    if out.novelty is not None:
        return np.clip(out.novelty, 0.0, 1.0)
    return novelty_stage(settings.evaluation).update(
        ["s"] * len(out.scores), np.nan_to_num(out.scores, nan=0.0)
    )


def evaluate_nab_to(
    out: Path,
    root: Path,
    settings: Settings,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> str:
    """NAB's protocol: each file on its own, every detector learning from the probationary
    rows only (the first min(⌊0.15·n⌋, 750)), then scoring every row in order; NAB scores per
    profile at the threshold swept over all files together, and for ours also as the product
    alerts (``*_own``: one detection where each alert episode opens, at the calibrated
    threshold; no labels). Writes ``out/report.{json,md}``, ``details.json`` (per file, for
    each detector: windows detected, false positives and delays at the standard swept
    threshold) and ``series.png``; returns the table."""
    t0 = time.perf_counter()
    files = nab.read_nab(root)
    if names:
        files = [f for f in files if f.name in names or Path(f.name).stem in names]
    profiles = nab.read_profiles(root)
    scores: dict[str, dict[str, F64]] = {}
    own: dict[str, dict[str, F64]] = {}  # 1 where an alert episode opened
    shown: list[LabelledSeries] = []  # for the plot: each file, with the product's outputs
    ours: dict[str, Output] = {}
    for f in files:
        series = _nab_series(f)
        shown.append(series)
        for name in detectors:
            t1 = time.perf_counter()
            for det, o in run_detector(name, series, settings, seed).items():
                if det == "stream-vae":
                    ours[f.name] = o
                scores.setdefault(det, {})[f.name] = nab_unit_scores(o, settings)
                if o.predictions is not None:  # the product's alerts: one detection each
                    p = o.predictions
                    opens = p & ~np.r_[False, p[:-1]]
                    own.setdefault(det, {})[f.name] = opens.astype(np.float64)
            log.info("%s %s (%.1f s)", name, f.name, time.perf_counter() - t1)
    summary: dict[str, dict[str, Any]] = {}
    per_file: dict[str, dict[str, dict[str, Any]]] = {}
    for det, by_file in scores.items():
        res = nab.score_detector(files, by_file, profiles)
        swept = res["standard"].threshold if "standard" in res else None
        if swept is not None:  # where the points come from, at the standard swept threshold
            per_file[det] = {
                f.name: asdict(nab.file_outcome(f, by_file[f.name], swept)) for f in files
            }
        row: dict[str, Any] = {"n_series": len(files)}
        row |= {p: r.score for p, r in res.items()}
        row |= {f"{p}_threshold": r.threshold for p, r in res.items()}
        if det in own:
            row |= {
                f"{p}_own": nab.score_at_threshold(files, own[det], prof, 0.5)
                for p, prof in profiles.items()
            }
        summary[det] = row
    cols = [*profiles, *(f"{p}_own" for p in profiles)]
    table = markdown_table(summary, cols).replace(" ± ", "")
    note = (
        f"\n\n{len(files)} files, window {settings.window.size}, seed {seed}, "
        f"{time.perf_counter() - t0:.0f} s. NAB scores at each profile's best threshold over "
        "all files (swept, as NAB does); *_own: ours as it alerts (a detection where an alert "
        "episode opens, calibrated threshold, no labels)."
    )
    write_report(
        out,
        summary,
        {
            "per_file_at_standard_threshold": per_file,
            "settings": settings.model_dump(mode="json", exclude={"kafka"}),
        },
        f"# NAB {root}\n\n{table}{note}",
    )
    if ours:
        plot_outputs(out / "series.png", shown, ours)
    return table + note


def _nab_series(f: nab.NabFile) -> LabelledSeries:
    """The probationary rows to learn from; every row to score (NAB scores past probation),
    each at its own timestamp (the window's calendar channels read them)."""
    labels = np.zeros(len(f.ts), dtype=bool)
    for start, end in f.windows:
        labels |= (f.ts >= start) & (f.ts <= end)
    x = f.values.reshape(-1, 1)
    prob = nab.probation_rows(len(x))
    return LabelledSeries(
        f.name,
        x[:prob],
        x,
        labels,
        names=("value",),
        step_s=float(np.median(np.diff(f.ts))),
        train_times=f.ts[:prob],
        test_times=f.ts,
    )

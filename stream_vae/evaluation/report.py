"""Evaluation reports: ``report.json`` (detector → metric → value, for scripts), ``report.md``
(the table for people), ``details.json`` (per series) and ``series.png`` (a few series).

Examples
--------
>>> print(markdown_table({"pca": {"vus_pr": 0.4, "vus_pr_std": 0.1, "n_series": 2}}, ["vus_pr"]))
| detector | series | vus_pr |
| --- | ---: | ---: |
| pca | 2 | 0.400 ± 0.100 |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _json
from .datasets import LabelledSeries
from .detectors import Output

__all__ = ["markdown_table", "plot_outputs", "write_report"]


def markdown_table(summary: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """Detectors as rows, ``mean ± std`` per metric; metrics no detector has are left out."""
    cols = [m for m in metrics if any(m in row for row in summary.values())]
    lines = [
        "| detector | series | " + " | ".join(cols) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for det, row in summary.items():
        cells = [_cell(row.get(m), row.get(f"{m}_std")) for m in cols]
        lines.append(f"| {det} | {row.get('n_series', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}"


def write_report(
    out: Path,
    summary: Mapping[str, Mapping[str, Any]],
    details: Mapping[str, Any],
    markdown: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_bytes(_json.dumps(summary, indent=True))
    (out / "details.json").write_bytes(_json.dumps(details, indent=True))
    (out / "report.md").write_text(markdown + "\n")


def plot_outputs(
    path: Path,
    series: Sequence[LabelledSeries],
    outputs: Mapping[str, Output],
    n: int = 3,
) -> Path | None:
    """A few series (those with the most labelled points first) with the product's score,
    its threshold, its alerts and the labels; None when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from .plot import plot_series

    shown = sorted((s for s in series if s.name in outputs), key=lambda s: -int(s.labels.sum()))[:n]
    if not shown:
        return None
    shown = [s for s in shown if len(s.test) == len(shown[0].test)]  # one time axis
    values, scores, labels = {}, {}, {}
    alerts: list[dict[str, Any]] = []
    # one time axis per panel pair: rows as hours from the test part's start
    for s in shown:
        ts = s.ts - s.ts[0]
        values[s.name] = s.test[:, 0]
        scores[s.name] = (ts, outputs[s.name].scores)
        labels[s.name] = [(ts[a], ts[b - 1]) for a, b in _runs(s.labels)]
        p = outputs[s.name].predictions
        if p is not None:
            starts = np.flatnonzero(p & ~np.r_[False, p[:-1]])
            alerts += [{"series_id": s.name, "event": "open", "ts": ts[i]} for i in starts]
    return plot_series(
        path,
        [s.name for s in shown],
        values,
        shown[0].ts - shown[0].ts[0],
        scores,
        {s.name: outputs[s.name].threshold or math.nan for s in shown},
        alerts,
        labels,
        channel="feature 1",
        caption="hours into the test part (orange: labelled anomaly, red line: alert opened)",
    )


def _runs(y: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, y.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))

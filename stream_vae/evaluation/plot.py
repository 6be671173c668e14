"""Plots for people: a few series with their smoothed score, threshold, alerts and labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_series"]


def plot_series(
    path: Path,
    series: Sequence[str],
    values: Mapping[str, np.ndarray],  # series → (T,) one channel, for context
    value_ts: np.ndarray,  # (T,)
    scores: Mapping[str, tuple[np.ndarray, np.ndarray]],  # series → (ts, smoothed score)
    threshold: float | Mapping[str, float],  # one for all series, or one per series
    alerts: Sequence[Mapping[str, Any]],  # alert messages (open/close)
    labels: Mapping[str, Sequence[tuple[float, float]]],  # series → [(start_ts, end_ts)]
    channel: str = "",
    caption: str = "hours (orange: injected anomaly, red line: alert opened)",
) -> Path:
    """Write a PNG with one panel pair (value, score) per series; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 * len(series), 1, figsize=(11, 2.6 * len(series)), sharex=True)
    t0 = float(value_ts[0])
    hours = (value_ts - t0) / 3600.0
    for i, sid in enumerate(series):
        ax_v, ax_s = axes[2 * i], axes[2 * i + 1]
        ax_v.plot(hours, values[sid], lw=0.8, color="tab:blue")
        ax_v.set_ylabel(channel or "value")
        ax_v.set_title(sid, loc="left", fontsize=10)
        ts, sc = scores[sid]
        thr = threshold if isinstance(threshold, float | int) else threshold[sid]
        ax_s.plot((ts - t0) / 3600.0, sc, lw=0.8, color="black", label="score (EMA)")
        ax_s.axhline(thr, color="tab:red", ls="--", lw=0.8, label="threshold")
        ax_s.set_yscale("symlog", linthresh=max(thr, 1e-3))
        ax_s.set_ylabel("score")
        for start, end in labels.get(sid, ()):
            for ax in (ax_v, ax_s):
                ax.axvspan((start - t0) / 3600, (end - t0) / 3600, color="tab:orange", alpha=0.25)
        opens = [a for a in alerts if a["series_id"] == sid and a["event"] == "open"]
        for a in opens:
            ax_s.axvline((float(a["ts"]) - t0) / 3600, color="tab:red", lw=1.2)
        if i == 0:
            ax_s.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel(caption)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

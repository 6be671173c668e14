"""Cutting windows: WindowStore.push_many's vectorised path against its per-record loop, per
record, for batches that hold few or many records of each series.

    python bench/windows.py [--window 64] [--features 8] [--repeats 3]

Records are interleaved step by step over the series (as a topic delivers a fleet) and pushed
in batches of the given size; the first W steps fill the buffers and are not timed. Each
figure is the median over the batches of a pass, then the median of --repeats passes. The
loop is forced by raising the vectorised path's minimum batch size. Public tools only
(time.perf_counter).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from stream_vae.core import windows
from stream_vae.core.records import RecordBatch


def _per_record_us(vector: bool, n_series: int, per_batch: int, w: int, d: int) -> float:
    minimum = windows._RUNS_MIN_RECORDS
    windows._RUNS_MIN_RECORDS = minimum if vector else 1 << 62
    try:
        store = windows.WindowStore(w, d)
        n_steps = w + max(40, 4 * per_batch // n_series)
        sids = tuple(f"s{i}" for i in range(n_series)) * n_steps
        ts = np.repeat(np.arange(n_steps, dtype=np.float64), n_series)
        values = np.random.default_rng(0).normal(size=(len(sids), d)).astype(np.float32)
        batch = RecordBatch(sids, ts, values)
        times = []
        for i in range(0, len(batch), per_batch):
            part = batch.slice(i, i + per_batch)
            t0 = time.perf_counter()
            store.push_many(part)
            if i >= w * n_series:  # buffers full
                times.append((time.perf_counter() - t0) / len(part))
        return 1e6 * statistics.median(times)
    finally:
        windows._RUNS_MIN_RECORDS = minimum


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    cases = [(5000, 2048), (1000, 1000), (1000, 2048), (100, 2048), (12, 500), (1, 287)]
    print(f"W {a.window}, {a.features} features, µs per record, median of {a.repeats}:")
    print("| series | batch | records per series | loop | vectorised | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n_series, per_batch in cases:
        loop, vec = (
            statistics.median(
                _per_record_us(v, n_series, per_batch, a.window, a.features)
                for _ in range(a.repeats)
            )
            for v in (False, True)
        )
        print(f"| {n_series} | {per_batch} | {per_batch / n_series:.1f} | {loop:.2f} | "
              f"{vec:.2f} | {loop / vec:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()

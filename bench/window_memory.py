"""Memory per series of a full WindowStore, against the ideal W·d·4 bytes.

    python bench/window_memory.py [--series 100000] [--window 64] [--features 8] [--batch 50000]

Fills a store with N series of W points each (records interleaved across series, pushed in
batches), then prints a Markdown table of
  nbytes   : what the store reports for its pooled buffers and metadata (capacity, not use)
  RSS      : growth of the process's resident set (VmRSS) over the fill, after dropping the
             batches and the emitted windows; includes the id dict, LRU order and the id strings
  traced   : growth of Python-allocator memory seen by tracemalloc in a second, traced fill
             (numpy reports its buffers to tracemalloc, so this is RSS without allocator slack)
each in total and per series. Only the standard library and numpy are used.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from collections.abc import Callable

import numpy as np

from stream_vae.core.records import RecordBatch
from stream_vae.core.windows import WindowStore


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _fill(n_series: int, window: int, n_features: int, batch: int) -> WindowStore:
    """A store holding ``window`` points of each of ``n_series`` series."""
    store = WindowStore(window, n_features)
    ids = [f"series-{i:07d}" for i in range(n_series)]
    rng = np.random.default_rng(0)
    n_total = n_series * window
    for start in range(0, n_total, batch):
        rows = np.arange(start, min(start + batch, n_total))
        step, which = np.divmod(rows, n_series)  # point `step` of series `which`
        values = rng.normal(size=(len(rows), n_features)).astype(np.float32)
        b = RecordBatch(tuple(ids[i] for i in which), step.astype(np.float64), values)
        store.push_many(b)  # the windows emitted by the last round are dropped right away
    return store


def _measure(fn: Callable[[], WindowStore]) -> tuple[WindowStore, int, int]:
    """Run ``fn``; return its store, the RSS growth, and the tracemalloc growth of a rerun."""
    gc.collect()
    rss0 = _rss_bytes()
    store = fn()
    gc.collect()
    rss = _rss_bytes() - rss0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    traced_store = fn()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del traced_store
    return store, rss, traced


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--batch", type=int, default=50_000, help="records per push_many call")
    args = ap.parse_args()
    n, w, d = args.series, args.window, args.features
    store, rss, traced = _measure(lambda: _fill(n, w, d, args.batch))
    assert store.n_series == n and store.counters["points"] == n * w
    ideal = w * d * 4
    print(f"WindowStore memory: {n} series, W={w}, d={d}, batches of {args.batch} records\n")
    print("| measure | total MiB | bytes / series | × ideal |")
    print("| --- | ---: | ---: | ---: |")
    for name, total in (
        ("ideal W·d·4", ideal * n),
        ("store.nbytes()", store.nbytes()),
        ("RSS growth", rss),
        ("tracemalloc", traced),
    ):
        print(f"| {name} | {total / 2**20:.1f} | {total / n:.0f} | {total / (ideal * n):.3f} |")


if __name__ == "__main__":
    main()

"""The scoring endpoint's cost: a 256-window request over real HTTP against the bare model.

    python bench/serve.py [--windows 256] [--repeats 30] [--threads 2] [--backend torch|onnx]

A model of the default shape (W 32, d 8, hidden 64) is trained for two epochs on a generated
fleet (its weights do not matter for time), served by `stream-vae serve` in its own process on a
loopback port (with --threads torch threads, as the bare model here), and timed, each the median
of --repeats calls:
  bare     : the backend's forward pass on the request's windows, already scaled (n, W, d)
  detector : Detector.infer (scaling, forward pass, score components)
  in-proc  : score_records on the records, in this process (windows cut, scored, attributed)
  records  : POST /v1/score with one series' n + W - 1 records (n windows), answer parsed
  windows  : POST /v1/score with the n windows whole (n x W records' worth of JSON)
  http     : GET /healthz, the HTTP round trip alone (a new connection per call, as urllib)
Public tools only (time.perf_counter, urllib, subprocess); client and server share the machine,
not a process (in one process they share the GIL, and the ratio reads 0.3-0.5 higher).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import torch

from stream_vae.config import load_settings
from stream_vae.core.records import RecordBatch
from stream_vae.demo.synthetic import generate_fleet
from stream_vae.runtime.live import DetectorOptions, build_detector, window_store
from stream_vae.runtime.stateless import score_records
from stream_vae.storage.files import save_artifact
from stream_vae.training.build import train_artifact


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    settings = load_settings(env={}, train={"epochs": 2})
    fleet = generate_fleet(4, 8, 1200, seed=0, n_anomalies_per_series=0)
    sids, ts, values, _ = fleet.interleaved()
    art = train_artifact(RecordBatch(tuple(sids), ts, values), fleet.feature_names, settings,
                         device="cpu", progress=False)  # fmt: skip
    w, n = art.vae_config.window, a.windows
    detector = build_detector(art, DetectorOptions(device="cpu", backend=a.backend))
    one = [i for i, s in enumerate(sids) if s == sids[0]][: n + w - 1]
    batch = RecordBatch(tuple(sids[i] for i in one), ts[one], values[one])
    ready = window_store(art).push_many(batch)
    assert len(ready) == n, len(ready)
    scaled = np.ascontiguousarray(detector.scaled(ready.values))
    records = [
        {"series_id": s, "ts": float(t), "values": v.tolist()}
        for s, t, v in zip(batch.series_ids, batch.ts, batch.values, strict=True)
    ]
    windows = [
        {"series_id": records[i]["series_id"], "ts": [r["ts"] for r in records[i : i + w]],
         "values": [r["values"] for r in records[i : i + w]]}
        for i in range(n)
    ]  # fmt: skip

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    model = save_artifact(art, Path(tmp.name) / "model")
    env = {**os.environ, "STREAM_VAE_SERVICE__TORCH_THREADS": str(a.threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "stream_vae", "serve", "--model", str(model), "--port", str(port),
         "--device", "cpu", "--backend", a.backend],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/score"
    for _ in range(600):  # it imports torch and loads the model first
        try:
            urllib.request.urlopen(url.replace("/v1/score", "/healthz")).close()
            break
        except OSError:
            time.sleep(0.1)

    def post(body: dict[str, object]) -> Callable[[], object]:
        data = orjson.dumps(body)

        def call() -> object:
            req = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req) as resp:
                out = orjson.loads(resp.read())  # the answer parsed, as a client would
            assert len(out["windows"]) == n
            return out

        return call

    def get_health() -> object:
        with urllib.request.urlopen(url.replace("/v1/score", "/healthz")) as resp:
            return resp.read()

    t = {
        "http": _median_s(get_health, a.repeats),
        "bare": _median_s(lambda: detector.backend(scaled), a.repeats),
        "detector": _median_s(lambda: detector.infer(ready.values), a.repeats),
        "in-proc": _median_s(lambda: score_records(art, detector, batch), a.repeats),
        "records": _median_s(post({"records": records}), a.repeats),
        "windows": _median_s(post({"windows": windows}), a.repeats),
    }
    server.terminate()
    server.wait(30)
    tmp.cleanup()
    print(f"{n} windows (W {w}, d {len(art.feature_names)}), {a.threads} threads, "
          f"{type(detector.backend).__name__}, median of {a.repeats}:")  # fmt: skip
    for name, s in t.items():
        print(f"  {name:8} {s * 1e3:8.2f} ms  {s / t['bare']:5.2f}x bare")


if __name__ == "__main__":
    main()

"""`stream-vae serve`: the stateless scoring endpoint over real HTTP (uvicorn on a loopback
socket, in a thread), against the streaming path's own scores for the same records."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import uvicorn

from stream_vae.core.records import RecordBatch
from stream_vae.runtime.live import DetectorOptions, LiveModel, build_detector
from stream_vae.serve.app import create_app
from stream_vae.storage.tabular import read_table

from .conftest import TinyModel


@pytest.fixture(scope="module")
def url(tiny: TinyModel) -> Iterator[str]:
    art = tiny.artifact
    app = create_app(art, build_detector(art, DetectorOptions(device="cpu")), max_records=5000)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def _call(url: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _records(tiny: TinyModel, series: int = 2, n: int = 40) -> list[dict[str, Any]]:
    table = read_table(tiny.test_csv, feature_names=tiny.artifact.feature_names)
    out: list[dict[str, Any]] = []
    for sid in sorted(set(table.batch.series_ids))[:series]:
        rows = [r for r in table.batch.records() if r.series_id == sid][:n]
        out += [{"series_id": r.series_id, "ts": r.ts, "values": r.values.tolist()} for r in rows]
    return out


def test_scores_are_the_streaming_paths_raw_scores(url: str, tiny: TinyModel) -> None:
    records = _records(tiny)
    status, got = _call(url, "/v1/score", {"records": records, "reconstruction": True})
    assert status == 200, got
    art = tiny.artifact
    w = art.vae_config.window
    assert got["model_version"] == art.version and got["window"] == w
    assert len(got["windows"]) == 2 * (40 - w + 1)
    # the same records through the stream's path (window store, detector, hybrid score)
    table = read_table(tiny.test_csv, feature_names=art.feature_names)
    live = LiveModel(art, DetectorOptions(device="cpu"))
    sids = {r["series_id"] for r in records}
    mine = [r for r in table.batch.records() if r.series_id in sids]
    scored = list(live.stream(RecordBatch.from_records(mine, len(art.feature_names))))
    want = {
        (k, float(t)): (float(r), e)
        for s in scored
        for k, t, r, e in zip(s.keys, s.ts, s.raw, s.expected, strict=True)
    }
    for win in got["windows"]:
        raw, expected = want[(win["series_id"], win["ts"])]
        assert win["score"] == pytest.approx(raw, rel=1e-5, abs=1e-6)
        assert win["over_threshold"] == (win["score"] >= got["threshold"])
        assert list(win["expected"]) == list(art.feature_names)
        np.testing.assert_allclose(list(win["expected"].values()), expected, rtol=1e-4, atol=1e-4)
        assert 1 <= len(win["top_features"]) <= 3


def test_whole_windows_score_as_their_records_do(url: str, tiny: TinyModel) -> None:
    w = tiny.artifact.vae_config.window
    records = _records(tiny, series=1, n=w)
    names = tiny.artifact.feature_names
    window = {
        "series_id": records[0]["series_id"],
        "ts": [r["ts"] for r in records],
        "values": [dict(zip(names, r["values"], strict=True)) for r in records],  # by name
    }
    _, by_records = _call(url, "/v1/score", {"records": records})
    status, by_window = _call(url, "/v1/score", {"windows": [window]})
    assert status == 200 and len(by_window["windows"]) == 1
    assert by_window["windows"][0]["score"] == pytest.approx(by_records["windows"][0]["score"])
    assert by_window["windows"][0]["expected"] is None  # not asked for


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"records": [{"series_id": "m", "ts": 1, "values": [1.0]}]}, 422, "wrong_arity"),
        (
            {"records": [{"series_id": "m", "ts": 1, "values": {"volts": 1}}]},
            422,
            "unknown_feature",
        ),
        (
            {"records": [{"series_id": "m", "ts": "soon", "values": [1, 2, 3]}]},
            422,
            "bad_timestamp",
        ),
        # past float32 (it became inf, and the scores NaN)
        ({"records": [{"series_id": "m", "ts": 1, "values": [1e39, 1, 1]}]}, 422, "bad_value"),
        (
            {"records": [{"series_id": "m" * 300, "ts": 1, "values": [1, 1, 1]}]},
            422,
            "invalid_request",
        ),
        ({"records": [{"series_id": "m", "ts": 1}]}, 422, "invalid_request"),
        ({"rows": []}, 422, "invalid_request"),
        ({"records": [{"series_id": "m", "ts": 1, "values": [1, 2, 3]}] * 5001}, 413, "too_large"),
    ],
)
def test_errors_are_json_with_a_reason(
    url: str, body: dict[str, Any], status: int, reason: str
) -> None:
    got_status, got = _call(url, "/v1/score", body)
    assert (got_status, got["reason"]) == (status, reason), got
    assert got["error"]


def test_a_body_past_the_limit_and_not_json_are_refused(url: str) -> None:
    assert _call(url, "/v1/score", raw=b"{not json")[1]["reason"] == "invalid_request"
    # the size is refused from the header, before a byte of the body is read
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {17 << 20}\r\n\r\n".encode()
        )
        resp = http.client.HTTPResponse(conn)
        resp.begin()
        assert resp.status == 413
        assert json.loads(resp.read())["reason"] == "too_large"
    # a chunked body has no length to refuse it by: it is counted as it arrives
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for chunk in [b" " * (1 << 20)] * 16 + [b" "]:  # one byte past the limit, at the end
            conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        with contextlib.suppress(OSError):  # the server may have answered and closed already
            conn.sendall(b"0\r\n\r\n")
        resp = http.client.HTTPResponse(conn)
        resp.begin()
        assert resp.status == 413


def test_fewer_records_than_a_window_score_nothing_and_the_docs_are_served(
    url: str, tiny: TinyModel
) -> None:
    status, got = _call(url, "/v1/score", {"records": _records(tiny, series=1, n=3)})
    assert status == 200 and got["windows"] == []
    status, spec = _call(url, "/openapi.json")
    assert status == 200 and "/v1/score" in spec["paths"]
    assert _call(url, "/v1/model")[1]["features"] == list(tiny.artifact.feature_names)
    assert _call(url, "/healthz") == (200, {"status": "ok"})

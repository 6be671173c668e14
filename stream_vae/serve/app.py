"""The scoring endpoint: ``POST /v1/score`` takes records or whole windows of one or more
series and returns each window's score parts, the threshold and, on request, the model's
reconstruction. Nothing is remembered between requests (the caller sends whole windows), so
replicas scale behind any load balancer. OpenAPI at ``/openapi.json``, docs at ``/docs``.

Errors are JSON ``{"reason": ..., "error": ...}``: ``invalid_request`` (422, the body does not
match the schema), a record's own reason (422: ``unknown_feature``, ``wrong_arity``,
``bad_timestamp``, ...), ``too_large`` (413, past ``max_body_bytes`` or ``max_records``).
The forward pass runs in one worker thread of the app's own, not on its event loop, and not
in the server's thread pool: torch's threads belong to the thread that calls it, and a pool
that hands calls to several threads keeps several teams of them busy on the same cores (that
cost a 256-window request 1.9× the time of its scoring, bench/serve.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import _json
from ..core.records import RecordBatch, RecordDecoder
from ..errors import RecordError
from ..model.detector import Detector
from ..runtime.stateless import WindowScores, score_records
from ..storage.artifact import Artifact

__all__ = ["create_app"]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
Values = list[float] | dict[str, float]


class RecordIn(BaseModel):
    """One observation (the input topic's record, with its series id)."""

    model_config = _STRICT
    series_id: Annotated[str, Field(min_length=1, max_length=256)]
    ts: float | str = Field(description="epoch seconds or ISO-8601")
    values: Values = Field(description="one value per feature, or keyed by feature name")


class WindowIn(BaseModel):
    """One whole window: W timestamps and W rows of values, oldest first."""

    model_config = _STRICT
    series_id: Annotated[str, Field(min_length=1, max_length=256)]
    ts: list[float | str]
    values: list[Values]


class ScoreRequest(BaseModel):
    model_config = _STRICT
    records: list[RecordIn] = Field(
        default_factory=list, description="per series in time order; W of them make a window"
    )
    windows: list[WindowIn] = Field(default_factory=list)
    reconstruction: bool = Field(False, description="add each window's expected values")
    top_k: int = Field(3, ge=0, le=64, description="features listed per window")


class FeatureShare(BaseModel):
    feature: str
    share: float


class WindowOut(BaseModel):
    series_id: str
    ts: float = Field(description="the window's newest timestamp")
    score: float = Field(description="raw hybrid score (the stream smooths it per series)")
    recon_score: float
    latent_score: float
    over_threshold: bool = Field(description="score ≥ threshold")
    top_features: list[FeatureShare]
    expected: dict[str, float] | None = Field(
        None, description="the model's value of the newest point, per feature"
    )


class ScoreResponse(BaseModel):
    model_version: str
    threshold: float
    window: int = Field(description="points per window (W)")
    windows: list[WindowOut]


class ModelInfo(BaseModel):
    model_version: str
    features: list[str]
    window: int
    threshold: float


class _TooLargeError(Exception):
    """A request with more records than the endpoint takes (413)."""


def _error(status: int, reason: str, error: str) -> JSONResponse:
    return JSONResponse({"reason": reason, "error": error}, status_code=status)


def _batch(req: ScoreRequest, decoder: RecordDecoder, window: int) -> RecordBatch:
    """The request's records, each checked as an input message is (arity, feature names,
    finite values within float32, the timestamp, the series id)."""
    rows = [(r.series_id, r.ts, r.values) for r in req.records]
    for w in req.windows:
        if len(w.ts) != window or len(w.values) != window:
            raise RecordError(
                "wrong_arity", f"a window of {w.series_id} has {len(w.values)} points, not {window}"
            )
        rows += [(w.series_id, t, v) for t, v in zip(w.ts, w.values, strict=True)]
    return decoder.batch(rows)


def _response(scores: WindowScores, names: tuple[str, ...], window: int) -> Response:
    """The :class:`ScoreResponse` body, written straight to JSON (validating 256 response
    objects cost more than the model's forward pass)."""
    expected = None if scores.expected is None else scores.expected.tolist()
    out = [
        {
            "series_id": sid,
            "ts": ts,
            "score": score,
            "recon_score": recon,
            "latent_score": latent,
            "over_threshold": score >= scores.threshold,
            "top_features": [{"feature": f, "share": v} for f, v in tops],
            "expected": None if expected is None else dict(zip(names, expected[i], strict=True)),
        }
        for i, (sid, ts, score, recon, latent, tops) in enumerate(
            zip(
                scores.series_ids,
                scores.ts.tolist(),
                scores.score.tolist(),
                scores.recon.tolist(),
                scores.latent.tolist(),
                scores.top_features,
                strict=True,
            )
        )
    ]
    body = {
        "model_version": scores.model_version,
        "threshold": scores.threshold,
        "window": window,
        "windows": out,
    }
    return Response(_json.dumps(body), media_type="application/json")


class _LimitSize:
    """Refuse a body whose Content-Length is past ``max_body_bytes`` before reading it (413),
    or is not a number (400). Plain ASGI: Starlette's ``BaseHTTPMiddleware`` passes every body
    through in-memory streams, which cost more than the whole scoring of a 256-window request
    over HTTP did (bench/serve.py)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = value.decode("latin-1")
                    response = None
                    if not length.isdigit():
                        response = _error(400, "invalid_request", f"Content-Length {length[:20]!r}")
                    elif int(length) > self.max_body_bytes:
                        response = _error(
                            413,
                            "too_large",
                            f"body of {length} bytes, at most {self.max_body_bytes}",
                        )
                    if response is not None:
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def _request_schema(app: FastAPI) -> dict[str, Any]:
    """:class:`ScoreRequest`'s JSON Schema for the OpenAPI document (its nested models go to
    ``components.schemas``, where OpenAPI looks for them)."""
    schema = ScoreRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    original = app.openapi

    def openapi() -> dict[str, Any]:
        doc = original()
        doc.setdefault("components", {}).setdefault("schemas", {}).update(defs)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    return schema


def create_app(
    artifact: Artifact,
    detector: Detector,
    *,
    max_body_bytes: int = 16 << 20,
    max_records: int = 200_000,
) -> FastAPI:
    """The endpoint for one model version."""
    names = artifact.feature_names
    window = artifact.vae_config.window
    decoder = RecordDecoder(names)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-vae-serve")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=True)

    app = FastAPI(
        title="stream-vae",
        version=artifact.version,
        description="Stateless anomaly scoring of telemetry windows by an LSTM-VAE.",
        lifespan=lifespan,
    )

    app.add_middleware(_LimitSize, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        return _error(422, "invalid_request", f"{where}: {first['msg']}")

    @app.exception_handler(_TooLargeError)
    async def too_large(request: Request, exc: _TooLargeError) -> JSONResponse:
        return _error(413, "too_large", str(exc))

    @app.exception_handler(RecordError)
    async def bad_record(request: Request, exc: RecordError) -> JSONResponse:
        return _error(422, exc.reason, exc.message)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model() -> ModelInfo:
        return ModelInfo(
            model_version=artifact.version,
            features=list(names),
            window=window,
            threshold=float(artifact.threshold),
        )

    def work(body: bytes) -> Response:
        try:
            req = ScoreRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        n = len(req.records) + window * len(req.windows)
        if n > max_records:
            raise _TooLargeError(f"{n} records, at most {max_records}")
        batch = _batch(req, decoder, window)
        scores = score_records(
            artifact, detector, batch, top_k=req.top_k, reconstruction=req.reconstruction
        )
        return _response(scores, names, window)

    # The body is parsed by pydantic straight from its bytes (FastAPI's own parsing goes through
    # Python objects, and was most of a request's overhead); the schema still goes in the docs.
    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses={413: {"description": "too_large"}, 422: {"description": "a reason"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _request_schema(app)}},
            }
        },
    )
    async def score(request: Request) -> Response:
        chunks, size = [], 0
        async for chunk in request.stream():  # a chunked body has no Content-Length to check
            size += len(chunk)
            if size > max_body_bytes:
                return _error(413, "too_large", f"body past {max_body_bytes} bytes")
            chunks.append(chunk)
        # the forward pass off the loop, in the app's one worker thread
        return await asyncio.get_running_loop().run_in_executor(executor, work, b"".join(chunks))

    return app

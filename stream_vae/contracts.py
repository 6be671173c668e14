"""The messages stream-vae reads and writes, as published contracts: JSON Schemas generated from
the models below into ``schemas/`` (``python -m stream_vae.contracts schemas``), and an
AsyncAPI document naming the topics that carry them (``schemas/asyncapi.yaml``).

These models describe the wire; the code that writes each message is elsewhere
(:meth:`stream_vae.scoring.alerts.Alert.to_dict`, the sink's dead-letter headers, the lifecycle's
events). ``tests/test_contracts_schemas.py`` keeps the files in sync with the models and
validates real messages of a service run against the files. Fields are only ever added: every
schema allows properties it does not name, so a consumer validating with an older schema keeps
reading newer messages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from . import _json
from .core.records import MAX_SERIES_ID_BYTES, REASONS

__all__ = [
    "SCHEMAS",
    "AlertMessage",
    "DeadLetterHeaders",
    "FeedbackMessage",
    "InputRecord",
    "ModelEvent",
    "schema_of",
    "write_schemas",
]

_OPEN = ConfigDict(extra="allow")  # fields are only ever added
# The dead-letter reasons: the decoder's closed set, and the service's timestamp check.
DEAD_LETTER_REASONS = (*REASONS, "implausible_timestamp")
AlertKind = Literal["anomaly", "flatline", "out_of_range", "stale", "incident"]
Score = Annotated[
    float | None, Field(description="null where not defined (a close forced by a model swap)")
]


class InputRecord(BaseModel):
    """A telemetry record: the value of a message on an input topic, keyed by its series id."""

    model_config = _OPEN

    series_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_SERIES_ID_BYTES,
        description="the series; may be left out when the message key carries it",
    )
    ts: float | str = Field(description="epoch seconds, or an ISO-8601 string")
    values: (
        Annotated[list[float], Field(min_length=1)]
        | Annotated[dict[str, float], Field(min_length=1)]
    ) = Field(description="one value per feature, in the model's order, or keyed by feature name")


class TopFeature(BaseModel):
    model_config = _OPEN
    feature: str
    share: float = Field(description="the feature's share of the window's error (0..1)")


class Expected(BaseModel):
    model_config = _OPEN
    feature: str
    observed: float | None = Field(description="the window's newest value, in the data's units")
    expected: float | None = Field(description="the model's reconstruction of it")


class Member(BaseModel):
    model_config = _OPEN
    series_id: str
    ts: float = Field(description="when the series' own episode opened")
    suppressed: bool = Field(description="its own open was not published (the incident was)")


class AlertMessage(BaseModel):
    """An alert event: the value of a message on the alert topic, keyed by its series id.

    De-duplicate on (``alert_id``, ``event``): after a crash, alerts since the last commit
    repeat with the same id."""

    model_config = _OPEN

    alert_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="the episode's deterministic id")
    series_id: str = Field(description='the series, or "*" for a fleet incident')
    event: Literal["open", "close"]
    ts: float = Field(description="epoch seconds of the window that caused the event")
    episode_start_ts: float
    score: Score = Field(description="the smoothed score, or a quality check's measure")
    threshold: Score = Field(description="the threshold that score met")
    raw_score: Score
    recon_score: Score
    latent_score: Score
    peak_score: Score
    top_features: list[TopFeature]
    model_version: str
    kind: AlertKind = "anomaly"
    reason: Literal["model_swap", "evicted"] | None = Field(
        None, description="why a close came other than by the score falling"
    )
    expected: list[Expected] | None = Field(
        None, description="the top features' observed and expected values"
    )
    cluster: str | None = Field(None, description="the recurring kind of anomaly this is")
    cluster_count: int | None = Field(None, ge=1, description="episodes of that kind so far")
    members: list[Member] | None = Field(None, description="an incident's series")


class FeedbackMessage(BaseModel):
    """A person's verdict on an alert: the value of a message on the feedback topic
    (``kafka.feedback_topic``; any key). See :mod:`stream_vae.lifecycle.feedback`."""

    model_config = _OPEN

    alert_id: str = Field(min_length=1, max_length=256, description="the alert's alert_id")
    verdict: Literal["false_positive", "confirmed", "ignore"] = Field(
        description="false_positive: learn it as normal; confirmed: the gate must still find it"
    )
    by: str | None = Field(None, max_length=256, description="who said it")
    ts: float | str | None = Field(None, description="when: epoch seconds or ISO-8601")


class DeadLetterHeaders(BaseModel):
    """The headers of a dead letter (its value and key are the input's own bytes, cut to fit
    where they were larger than the topic takes). Kafka headers are bytes: these are their
    UTF-8 texts."""

    model_config = _OPEN

    reason: Literal[DEAD_LETTER_REASONS]  # type: ignore[valid-type]
    error: str = Field(max_length=1000, description="what was wrong, for a person")
    source_topic: str
    source_partition: str = Field(pattern=r"^[0-9]+$")
    source_offset: str = Field(pattern=r"^[0-9]+$")
    original_value_bytes: str | None = Field(
        None, pattern=r"^[0-9]+$", description="the value was cut to fit; its size before"
    )
    original_key_bytes: str | None = Field(None, pattern=r"^[0-9]+$")


class DriftEvent(BaseModel):
    model_config = _OPEN
    event: Literal["drift"]
    kind: Literal["score", "input"]
    channel: str = Field(description='"score", or the feature whose inputs drifted')
    ts: float
    since_ts: float
    n_samples: int
    p_value: float
    model_version: str


class RetrainEvent(BaseModel):
    model_config = _OPEN
    event: Literal["promoted", "rejected"]
    version: str
    parent: str
    trigger: Literal["drift", "schedule", "feedback", "manual"]
    data_from_ts: float
    data_to_ts: float
    n_windows: int
    train_seconds: float
    threshold: float
    gate: dict[str, Any] = Field(description="passed, reasons, and the gate's measures")
    job_seconds: float | None = None


class FailedEvent(BaseModel):
    model_config = _OPEN
    event: Literal["failed"]
    trigger: Literal["drift", "schedule", "feedback", "manual"]
    error: str
    job_seconds: float | None = None


class RefusedEvent(BaseModel):
    model_config = _OPEN
    event: Literal["refused"]
    version: str
    reason: str


class SwappedEvent(BaseModel):
    model_config = _OPEN
    event: Literal["swapped"]
    version: str
    previous: str
    closed_episodes: int


class ModelEvent(
    RootModel[
        Annotated[
            DriftEvent | RetrainEvent | FailedEvent | RefusedEvent | SwappedEvent,
            Field(discriminator="event"),
        ]
    ]
):
    """A model lifecycle event on the model-events topic (one partition, in order)."""


SCHEMAS: dict[str, type[BaseModel]] = {
    "input-record": InputRecord,
    "alert": AlertMessage,
    "dead-letter-headers": DeadLetterHeaders,
    "feedback": FeedbackMessage,
    "model-event": ModelEvent,
}


def schema_of(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the message ``name`` (a key of :data:`SCHEMAS`)."""
    model = SCHEMAS[name]
    schema = model.model_json_schema()
    doc = (model.__doc__ or "").split("\n\n")[0]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{name}.schema.json",
        "title": name,
        "description": " ".join(doc.split()),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def write_schemas(directory: Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every message into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SCHEMAS:
        path = directory / f"{name}.schema.json"
        path.write_bytes(_json.dumps(schema_of(name), indent=True) + b"\n")
        out.append(path)
    return out


if __name__ == "__main__":
    write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas"))

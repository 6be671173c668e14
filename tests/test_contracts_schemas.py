"""The published contracts in ``schemas/``: in sync with the models they are generated from,
valid JSON Schemas, named by the AsyncAPI document with the service's topics. Real messages of
service runs are validated against them where those runs happen (test_service.py,
test_lifecycle.py: alerts of every kind, dead-letter headers, records, model events)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from stream_vae import _json
from stream_vae.config import KafkaSettings
from stream_vae.contracts import SCHEMAS, schema_of, write_schemas
from stream_vae.scoring.alerts import Alert

from .schemas import assert_valid

ROOT = Path(__file__).resolve().parents[1]
DIR = ROOT / "schemas"


def test_the_committed_schemas_are_what_the_models_generate(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert sorted(p.name for p in DIR.glob("*.schema.json")) == sorted(p.name for p in written)
    for path in written:
        assert (DIR / path.name).read_bytes() == path.read_bytes(), (
            f"schemas/{path.name} is stale: python -m stream_vae.contracts schemas"
        )
    for name in SCHEMAS:
        Draft202012Validator.check_schema(schema_of(name))


def test_the_asyncapi_document_names_the_topics_and_every_schema() -> None:
    doc = yaml.safe_load((DIR / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    k = KafkaSettings()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert k.feedback_topic is None  # off by default: the document names the docs' example
    assert addresses == {
        *k.input_topics, k.alert_topic, k.dead_letter_topic, k.model_events_topic,
        "telemetry.feedback",
    }  # fmt: skip
    refs = set()
    for message in doc["components"]["messages"].values():
        for part in ("payload", "headers"):
            ref = message.get(part, {}).get("schema", {}).get("$ref")
            if ref:
                assert (DIR / ref).is_file(), ref
                refs.add(Path(ref).name)
    assert refs == {f"{name}.schema.json" for name in SCHEMAS}
    group = doc["operations"]["consumeTelemetry"]["bindings"]["kafka"]["groupId"]["const"]
    assert group == k.group_id


def _alert(**changes: object) -> dict[str, object]:
    base = Alert(
        alert_id="0123456789abcdef", series_id="m-1", event="open", ts=1.0, episode_start_ts=1.0,
        score=2.0, threshold=1.0, raw_score=2.5, recon_score=2.0, latent_score=0.5,
        peak_score=2.0, top_features=(("temp", 0.7),), model_version="v-1",
    )  # fmt: skip
    return {**base.to_dict(), **changes}


def test_the_alert_schema_accepts_what_the_code_writes_and_refuses_what_it_cannot() -> None:
    assert_valid("alert", _alert())
    assert_valid("alert", _json.loads(_json.dumps(_alert(score=float("inf")))))  # inf is null
    assert_valid("alert", _alert(kind="incident", series_id="*", members=[
        {"series_id": "m-1", "ts": 1.0, "suppressed": False}]))  # fmt: skip
    assert_valid("alert", _alert(a_field_added_later=1))  # consumers keep reading newer alerts
    for bad in (_alert(event="reopen"), _alert(kind="weird"), _alert(alert_id="xyz")):
        with pytest.raises(AssertionError):
            assert_valid("alert", bad)


def test_the_input_schema_takes_both_forms_of_values() -> None:
    assert_valid("input-record", {"series_id": "p-1", "ts": 1.7e9, "values": [0.1, 2.3]})
    assert_valid("input-record", {"ts": "2026-12-06T10:00:00Z", "values": {"temp": 0.1}})
    with pytest.raises(AssertionError):
        assert_valid("input-record", {"series_id": "p-1", "ts": 1.0, "values": []})
    json.dumps(schema_of("input-record"))

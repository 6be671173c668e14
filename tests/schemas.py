"""Validating messages against the published JSON Schemas in ``schemas/`` (the files, as a
consumer would, not the models they were generated from)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(name: str, message: Any) -> None:
    """Fail with every violation if ``message`` does not match the schema ``name``."""
    errors = sorted(_validator(name).iter_errors(message), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '.'}: {e.message}" for e in errors[:5]
    )


def headers(pairs: Any) -> dict[str, str]:
    """Kafka record headers as the UTF-8 texts the dead-letter schema describes."""
    return {k: v.decode() for k, v in pairs}

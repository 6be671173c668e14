"""Message formats beyond the contract's JSON: Avro (with a local schema, or by schema id in
the Confluent wire format) and JSON Schema-framed JSON, decoded into the same :class:`Record`
and validated by the same :class:`RecordDecoder` as JSON.

The Confluent wire format is a magic byte 0, a 4-byte big-endian schema id, then the payload.
The schemas themselves come from outside (a registry, a file): this module never does I/O.
:meth:`RegistryDecoder.unknown_ids` says which ids a batch needs that are not known yet, the
caller fetches them (:mod:`stream_vae.service.schema_registry`) and hands them over with
:meth:`RegistryDecoder.add_schema`. Avro needs the ``avro`` extra (fastavro).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from typing import Any, Literal

from .. import _json
from ..errors import RecordError
from .records import Record, RecordDecoder

__all__ = ["AvroDecoder", "RegistryDecoder", "wire_schema_id"]

MAGIC = 0
_HEADER = struct.Struct(">bI")  # magic byte, schema id


def wire_schema_id(value: bytes) -> int:
    """The schema id of a Confluent wire-format message, or ``bad_encoding``."""
    if len(value) < _HEADER.size or value[0] != MAGIC:
        raise RecordError("bad_encoding", "not the schema registry's wire format (magic byte 0)")
    return int(_HEADER.unpack_from(value)[1])


def _avro() -> Any:
    try:
        import fastavro
    except ImportError:  # pragma: no cover - the extra is in dev
        raise ImportError("Avro needs fastavro: pip install 'stream-vae[avro]'") from None
    return fastavro


def _read_avro(payload: bytes, schema: Any) -> dict[str, Any]:
    try:
        body = _avro().schemaless_reader(io.BytesIO(payload), schema)
    except Exception as exc:  # fastavro raises many kinds on a malformed payload
        raise RecordError("bad_encoding", f"not Avro of its schema: {exc}"[:300]) from None
    if not isinstance(body, dict):
        raise RecordError("bad_encoding", f"expected an Avro record, got {type(body).__name__}")
    return body


class AvroDecoder:
    """Avro with one known writer schema (a local ``.avsc``; no registry, no header)."""

    def __init__(self, schema: dict[str, Any] | str, decoder: RecordDecoder) -> None:
        raw = _json.loads(schema) if isinstance(schema, str) else schema
        self._schema = _avro().parse_schema(raw)
        self.decoder = decoder

    def __call__(self, key: bytes | None, value: bytes | None) -> Record:
        payload = self.decoder.check_size(value)
        return self.decoder.record(key, _read_avro(payload, self._schema))


class RegistryDecoder:
    """The schema registry's wire format: Avro, or JSON (``json_schema``: the JSON is not
    validated against its schema here; the record checks are the contract's)."""

    def __init__(self, kind: Literal["avro", "json_schema"], decoder: RecordDecoder) -> None:
        self.kind = kind
        self.decoder = decoder
        self._schemas: dict[int, Any] = {}
        self._missing: set[int] = set()  # ids the registry said it does not have

    def unknown_ids(self, values: Iterable[bytes | None]) -> set[int]:
        """The schema ids these messages carry that are neither known nor known missing."""
        out = set()
        for v in values:
            if v is not None and len(v) >= _HEADER.size and v[0] == MAGIC:
                sid = int(_HEADER.unpack_from(v)[1])
                if sid not in self._schemas and sid not in self._missing:
                    out.add(sid)
        return out

    def add_schema(self, schema_id: int, schema: str | None) -> None:
        """The registry's schema text for ``schema_id``, or None if it has none (a message with
        that id is then dead-lettered as ``unknown_schema``)."""
        if schema is None:
            self._missing.add(schema_id)
        elif self.kind == "avro":
            self._schemas[schema_id] = _avro().parse_schema(_json.loads(schema))
        else:
            self._schemas[schema_id] = schema

    def __call__(self, key: bytes | None, value: bytes | None) -> Record:
        payload = self.decoder.check_size(value)
        schema_id = wire_schema_id(payload)
        schema = self._schemas.get(schema_id)
        if schema is None:
            raise RecordError("unknown_schema", f"schema id {schema_id} is not in the registry")
        body = payload[_HEADER.size :]
        if self.kind == "json_schema":
            return self.decoder(key, body)
        return self.decoder.record(key, _read_avro(body, schema))

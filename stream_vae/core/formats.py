"""Message formats beyond the contract's JSON: Avro (with a local schema, or by schema id in
the Confluent wire format), Protobuf (with a local descriptor set, or by schema id:
:mod:`stream_vae.core.protobuf`) and JSON Schema-framed JSON, decoded into the same
:class:`Record` and validated by the same :class:`RecordDecoder` as JSON.

The Confluent wire format is a magic byte 0, a 4-byte big-endian schema id, then the payload
(for Protobuf, the message indexes first).
The schemas themselves come from outside (a registry, a file): this module never does I/O.
:meth:`RegistryDecoder.unknown_ids` says which ids a batch needs that are not known yet, the
caller fetches them (:mod:`stream_vae.service.schema_registry`) and hands them over with
:meth:`RegistryDecoder.add_schema`. Avro needs the ``avro`` extra (fastavro), Protobuf the
``protobuf`` extra.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from .. import _json
from ..errors import RecordError
from .protobuf import ProtoSchema, message_indexes
from .records import Record, RecordDecoder, outcome

__all__ = ["AvroDecoder", "ProtobufDecoder", "RegistryDecoder", "wire_schema_id"]

log = logging.getLogger(__name__)

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


# Avro types whose values reach Python as int or float, never bool or None
_NUMERIC = frozenset({"double", "float", "int", "long"})


def _typed(schema: Any, decoder: RecordDecoder) -> bool:
    """Whether a writer schema makes a record's series id a string, its ts a number and every
    value a number: then a batch of its records is checked at once (RecordDecoder.batch)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return False
    types = {f.get("name"): f.get("type") for f in schema.get("fields", ())}
    f = decoder.fields

    def numeric(t: Any) -> bool:  # a union or a complex type is a list or a dict: not typed
        return isinstance(t, str) and t in _NUMERIC

    if types.get(f.series_id) != "string" or not numeric(types.get(f.ts)):
        return False
    fields = decoder.value_fields
    if fields is not None:
        return all(numeric(types.get(name)) for name in fields)
    values = types.get(f.values)
    return (
        isinstance(values, dict) and values.get("type") == "array" and numeric(values.get("items"))
    )


def _read_avro(payload: bytes, schema: Any, reader: Any) -> dict[str, Any]:
    try:
        body = reader(io.BytesIO(payload), schema)
    except Exception as exc:  # fastavro raises many kinds on a malformed payload
        raise RecordError("bad_encoding", f"not Avro of its schema: {exc}"[:300]) from None
    if not isinstance(body, dict):
        raise RecordError("bad_encoding", f"expected an Avro record, got {type(body).__name__}")
    return body


Read = Callable[[bytes], dict[str, Any]]  # a payload → the record's fields (or bad_encoding)


class _OneSchema:
    """Messages of one known schema, no registry and no header: ``read`` parses a payload."""

    def __init__(self, read: Read, typed: bool, decoder: RecordDecoder) -> None:
        self._read = read
        self._typed = typed
        self.decoder = decoder

    def __call__(self, key: bytes | None, value: bytes | None) -> Record:
        return self.decoder.record(key, self._read(self.decoder.check_size(value)))

    def many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[Record | RecordError]:
        """Each message decoded, or the reason it cannot be (aligned with ``values``)."""
        read, max_bytes = self._read, self.decoder.max_bytes
        payloads: list[Any] = []
        for key, value in zip(keys, values, strict=True):
            if value is None or len(value) > max_bytes:
                payloads.append(outcome(self, key, value))
                continue
            try:
                payloads.append(read(value))
            except RecordError as exc:
                payloads.append(exc)
        return self.decoder.bodies(keys, payloads, typed=self._typed)


class AvroDecoder(_OneSchema):
    """Avro with one known writer schema (a local ``.avsc``; no registry, no header)."""

    def __init__(self, schema: dict[str, Any] | str, decoder: RecordDecoder) -> None:
        raw = _json.loads(schema) if isinstance(schema, str) else schema
        super().__init__(_avro_read(raw), _typed(raw, decoder), decoder)


class ProtobufDecoder(_OneSchema):
    """Protobuf of one message type from a local ``FileDescriptorSet`` (no registry, no
    header): see :mod:`stream_vae.core.protobuf`."""

    def __init__(self, descriptor_set: bytes, message: str, decoder: RecordDecoder) -> None:
        schema = ProtoSchema.from_descriptor_set(descriptor_set, decoder)
        desc = schema.by_name(message)
        super().__init__(schema.reader(desc), schema.typed(desc), decoder)


def _avro_read(raw: Any) -> Read:
    schema, reader = _avro().parse_schema(raw), _avro().schemaless_reader

    def read(payload: bytes) -> dict[str, Any]:
        return _read_avro(payload, schema, reader)

    return read


class RegistryDecoder:
    """The schema registry's wire format: Avro, Protobuf (with its message indexes after the
    schema id), or JSON (``json_schema``: the JSON is not validated against its schema here;
    the record checks are the contract's). Schemas arrive by :meth:`add_schema`."""

    def __init__(
        self, kind: Literal["avro", "protobuf", "json_schema"], decoder: RecordDecoder
    ) -> None:
        self.kind = kind
        self.decoder = decoder
        self._schemas: dict[int, Any] = {}  # Avro: (read, typed); Protobuf: ProtoSchema
        self._missing: set[int] = set()  # ids the registry said it does not have
        # Protobuf: (schema id, message index bytes) → (read, typed)
        self._messages: dict[tuple[int, bytes], tuple[Read, bool]] = {}

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
        """The registry's schema for ``schema_id`` (for Protobuf, its ``format=serialized``
        answer), or None if it has none: a message with that id is then dead-lettered as
        ``unknown_schema``, as is one whose schema cannot be used (it is logged)."""
        if schema is None:
            self._missing.add(schema_id)
        elif self.kind == "avro":
            raw = _json.loads(schema)
            self._schemas[schema_id] = (_avro_read(raw), _typed(raw, self.decoder))
        elif self.kind == "protobuf":
            try:
                self._schemas[schema_id] = ProtoSchema.from_registry(schema, self.decoder)
            except Exception as exc:  # a descriptor the pool cannot build (an import missing)
                log.warning("schema %d cannot be used: %s", schema_id, exc)
                self._missing.add(schema_id)
        else:
            self._schemas[schema_id] = schema

    def _reader(self, value: bytes, schema_id: int) -> tuple[Read, int, bool] | None:
        """How to read a known schema's message: (read, where its payload starts, typed)."""
        schema = self._schemas.get(schema_id)
        if schema is None:
            return None
        if self.kind == "avro":
            return schema[0], _HEADER.size, schema[1]
        at = _HEADER.size
        if len(value) > at and value[at] == 0:  # the common case: the file's first message
            indexes, start = [0], at + 1
        else:
            indexes, start = message_indexes(value, at)
        key = (schema_id, value[at:start])
        found = self._messages.get(key)
        if found is None:
            desc = schema.message_type(indexes)
            found = self._messages[key] = (schema.reader(desc), schema.typed(desc))
        return found[0], start, found[1]

    def __call__(self, key: bytes | None, value: bytes | None) -> Record:
        payload = self.decoder.check_size(value)
        schema_id = wire_schema_id(payload)
        if self.kind == "json_schema":
            if schema_id not in self._schemas:
                raise RecordError("unknown_schema", f"schema id {schema_id} is not in the registry")
            return self.decoder(key, payload[_HEADER.size :])
        reader = self._reader(payload, schema_id)
        if reader is None:
            raise RecordError("unknown_schema", f"schema id {schema_id} is not in the registry")
        read, start, _ = reader
        return self.decoder.record(key, read(payload[start:]))

    def many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[Record | RecordError]:
        """Each message decoded, or the reason it cannot be (aligned with ``values``); Avro or
        Protobuf whose schemas type every value is checked as one array."""
        if self.kind == "json_schema":
            return [outcome(self, k, v) for k, v in zip(keys, values, strict=True)]
        max_bytes, typed = self.decoder.max_bytes, True
        payloads: list[Any] = []
        for key, value in zip(keys, values, strict=True):
            reader = None
            if value is not None and _HEADER.size < len(value) <= max_bytes and value[0] == MAGIC:
                try:
                    reader = self._reader(value, int.from_bytes(value[1:5], "big"))
                except RecordError:
                    reader = None  # it says why, below
            if reader is None or value is None:  # refused, or an unknown schema: it says why
                payloads.append(outcome(self, key, value))
                continue
            read, start, typed_one = reader
            typed &= typed_one
            try:
                payloads.append(read(value[start:]))
            except RecordError as exc:
                payloads.append(exc)
        return self.decoder.bodies(keys, payloads, typed=typed)

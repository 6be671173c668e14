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
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from .. import _json
from ..errors import RecordError
from .records import Record, RecordBatch, RecordDecoder

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


def _many(
    decoder: RecordDecoder, typed: bool, keys: Sequence[bytes | None], payloads: list[Any]
) -> list[Record | RecordError]:
    """Records from ``payloads``, one per message: its parsed body, or its outcome already (a
    Record or a RecordError). Checked as one array where the schema types every value (the
    common case: bench/decode.py), else, or when a record in it is refused, one at a time."""
    out: list[Any] = list(payloads)
    good = [i for i, p in enumerate(payloads) if type(p) is dict]
    if typed and good:
        batch = _columns(decoder, [payloads[i] for i in good])
        if batch is not None:
            sids, ts, values = batch.series_ids, batch.ts.tolist(), batch.values
            for j, i in enumerate(good):
                out[i] = Record(sids[j], ts[j], values[j])
            return out
    for i in good:
        try:
            out[i] = decoder.record(keys[i], payloads[i])
        except RecordError as exc:
            out[i] = exc
    return out


def _columns(decoder: RecordDecoder, bodies: list[dict[str, Any]]) -> RecordBatch | None:
    """The bodies as one checked batch (RecordDecoder.columns), or None when one of them needs
    the per-record checks (a field missing, a value refused)."""
    f, fields = decoder.fields, decoder.value_fields
    try:
        if fields is not None:
            cols = list(zip(*map(itemgetter(f.series_id, f.ts, *fields), bodies), strict=True))
            values = np.array(cols[2:], dtype=np.float64).T  # (d, n) → (n, d)
        else:
            cols = list(zip(*map(itemgetter(f.series_id, f.ts, f.values), bodies), strict=True))
            values = np.array(cols[2], dtype=np.float64)  # (n, d); ragged: ValueError
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return decoder.columns(cols[0], cols[1], values)


def _read_avro(payload: bytes, schema: Any, reader: Any) -> dict[str, Any]:
    try:
        body = reader(io.BytesIO(payload), schema)
    except Exception as exc:  # fastavro raises many kinds on a malformed payload
        raise RecordError("bad_encoding", f"not Avro of its schema: {exc}"[:300]) from None
    if not isinstance(body, dict):
        raise RecordError("bad_encoding", f"expected an Avro record, got {type(body).__name__}")
    return body


def _one(decode: Any, key: bytes | None, value: bytes | None) -> Record | RecordError:
    try:
        rec: Record = decode(key, value)
    except RecordError as exc:
        return exc
    return rec


class AvroDecoder:
    """Avro with one known writer schema (a local ``.avsc``; no registry, no header)."""

    def __init__(self, schema: dict[str, Any] | str, decoder: RecordDecoder) -> None:
        raw = _json.loads(schema) if isinstance(schema, str) else schema
        self._schema = _avro().parse_schema(raw)
        self._reader = _avro().schemaless_reader
        self._typed = _typed(raw, decoder)
        self.decoder = decoder

    def __call__(self, key: bytes | None, value: bytes | None) -> Record:
        payload = self.decoder.check_size(value)
        return self.decoder.record(key, _read_avro(payload, self._schema, self._reader))

    def many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[Record | RecordError]:
        """Each message decoded, or the reason it cannot be (aligned with ``values``)."""
        schema, reader, max_bytes = self._schema, self._reader, self.decoder.max_bytes
        payloads: list[Any] = []
        for key, value in zip(keys, values, strict=True):
            if value is None or len(value) > max_bytes:
                payloads.append(_one(self, key, value))
                continue
            try:
                payloads.append(_read_avro(value, schema, reader))
            except RecordError as exc:
                payloads.append(exc)
        return _many(self.decoder, self._typed, keys, payloads)


class RegistryDecoder:
    """The schema registry's wire format: Avro, or JSON (``json_schema``: the JSON is not
    validated against its schema here; the record checks are the contract's)."""

    def __init__(self, kind: Literal["avro", "json_schema"], decoder: RecordDecoder) -> None:
        self.kind = kind
        self.decoder = decoder
        self._schemas: dict[int, Any] = {}
        self._missing: set[int] = set()  # ids the registry said it does not have
        self._typed: set[int] = set()  # Avro ids whose records are checked a batch at once

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
            raw = _json.loads(schema)
            self._schemas[schema_id] = _avro().parse_schema(raw)
            if _typed(raw, self.decoder):
                self._typed.add(schema_id)
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
        return self.decoder.record(key, _read_avro(body, schema, _avro().schemaless_reader))

    def many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[Record | RecordError]:
        """Each message decoded, or the reason it cannot be (aligned with ``values``); Avro
        whose schemas type every value is checked as one array."""
        if self.kind != "avro":
            return [_one(self, k, v) for k, v in zip(keys, values, strict=True)]
        schemas, max_bytes, reader = (
            self._schemas,
            self.decoder.max_bytes,
            _avro().schemaless_reader,
        )
        ids: set[int] = set()
        payloads: list[Any] = []
        for key, value in zip(keys, values, strict=True):
            schema = None
            if value is not None and _HEADER.size <= len(value) <= max_bytes and value[0] == MAGIC:
                schema_id = int.from_bytes(value[1:5], "big")
                schema = schemas.get(schema_id)
            if schema is None or value is None:  # refused, or an unknown schema: it says why
                payloads.append(_one(self, key, value))
                continue
            ids.add(schema_id)
            try:
                payloads.append(_read_avro(value[_HEADER.size :], schema, reader))
            except RecordError as exc:
                payloads.append(exc)
        return _many(self.decoder, bool(ids) and ids <= self._typed, keys, payloads)

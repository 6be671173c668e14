"""Protobuf input: messages of a schema held as descriptors, decoded into the same record
checks as every other format (:class:`~stream_vae.core.records.RecordDecoder`).

Two ways to know the schema, neither of which compiles ``.proto`` text here:

- a schema registry: each message is in its wire format (magic byte 0, a 4-byte schema id, the
  message indexes, then the payload) and the registry serves each id's schema as a serialized
  ``FileDescriptorProto`` (``GET /schemas/ids/{id}?format=serialized``);
- a local ``FileDescriptorSet`` (``protoc --include_imports --descriptor_set_out=FILE``) and
  the full name of the message type; messages are then the bare payload.

Fields are read by name: the series id (a ``string``), ``ts`` (a number, or a
``google.protobuf.Timestamp``) and the features (numbers, one field each, or one repeated
field). A proto3 field that was not set reads as its default (``""``, ``0``): an empty series
id is refused as ``bad_series_id``, a missing ``ts`` reads as 0. Needs the ``protobuf`` extra.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from ..errors import RecordError
from .records import RecordDecoder

__all__ = ["ProtoSchema", "message_indexes"]

# FieldDescriptor types whose values reach Python as int or float (not bool, enum, bytes)
_NUMERIC = frozenset({1, 2, 3, 4, 5, 6, 7, 13, 15, 16, 17, 18})  # double ... sint64
_STRING, _MESSAGE, _REPEATED = 9, 11, 3


def _repeated(field: Any) -> bool:
    """Whether a field is repeated (``is_repeated`` since protobuf 5.28, ``label`` before)."""
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == _REPEATED


_TIMESTAMP = "google.protobuf.Timestamp"


def _pb() -> Any:
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:  # pragma: no cover - the extra is in dev
        raise ImportError("Protobuf needs protobuf: pip install 'stream-vae[protobuf]'") from None
    return descriptor_pb2, descriptor_pool, message_factory


def message_indexes(value: bytes, at: int) -> tuple[list[int], int]:
    """The wire format's message indexes from ``value[at:]`` (a zigzag varint count, then that
    many zigzag varints; a lone 0 means the file's first message) and where the payload starts;
    ``bad_encoding`` when they run past the message."""

    def varint(i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            if i >= len(value) or shift > 63:
                raise RecordError("bad_encoding", "truncated message indexes")
            b = value[i]
            result |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return (result >> 1) ^ -(result & 1), i  # zigzag
            shift += 7

    n, at = varint(at)
    if n == 0:
        return [0], at
    if not 0 < n <= 32:
        raise RecordError("bad_encoding", f"{n} message indexes")
    out = []
    for _ in range(n):
        index, at = varint(at)
        out.append(index)
    return out, at


class ProtoSchema:
    """The message types of one schema (a serialized ``FileDescriptorProto``, or a
    ``FileDescriptorSet`` with its imports), and how to read a record out of their messages."""

    def __init__(self, files: Sequence[bytes], decoder: RecordDecoder) -> None:
        descriptor_pb2, descriptor_pool, self._factory = _pb()
        from google.protobuf import duration_pb2, timestamp_pb2

        self.decoder = decoder
        self._pool = descriptor_pool.DescriptorPool()
        self._protos = []
        # the well-known types a schema may import, then the schema's own files, each once
        known = [timestamp_pb2.DESCRIPTOR.serialized_pb, duration_pb2.DESCRIPTOR.serialized_pb]
        for raw in [*known, *files]:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            try:
                self._pool.FindFileByName(proto.name)
            except KeyError:
                self._pool.AddSerializedFile(raw)
            self._protos.append(proto)
        self._classes: dict[str, Any] = {}

    @classmethod
    def from_registry(cls, text: str, decoder: RecordDecoder) -> ProtoSchema:
        """From the registry's ``format=serialized`` answer: a base64 ``FileDescriptorProto``."""
        return cls([base64.b64decode(text)], decoder)

    @classmethod
    def from_descriptor_set(cls, data: bytes, decoder: RecordDecoder) -> ProtoSchema:
        """From a ``FileDescriptorSet`` (imports first, as protoc writes them)."""
        descriptor_pb2, _, _ = _pb()
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
        return cls([f.SerializeToString() for f in fds.file], decoder)

    def message_type(self, indexes: Sequence[int] = (0,)) -> Any:
        """The message type the indexes name in the schema's (last) file: the i-th top-level
        message, then its j-th nested one, ..."""
        proto = self._protos[-1]
        if min(indexes, default=0) < 0:  # zigzag allows them; Python would count from the end
            raise RecordError("unknown_schema", f"no message at indexes {list(indexes)}")
        try:
            m = proto.message_type[indexes[0]]
            names = [m.name]
            for i in indexes[1:]:
                m = m.nested_type[i]
                names.append(m.name)
        except IndexError:
            raise RecordError("unknown_schema", f"no message at indexes {list(indexes)}") from None
        return self.by_name(".".join(filter(None, [proto.package, *names])))

    def by_name(self, full_name: str) -> Any:
        try:
            return self._pool.FindMessageTypeByName(full_name)
        except KeyError:
            raise RecordError("unknown_schema", f"no message type {full_name!r}") from None

    def reader(self, desc: Any) -> Any:
        """A function: payload bytes → the record's fields as a dict (or ``bad_encoding``)."""
        cls = self._classes.get(desc.full_name)
        if cls is None:
            cls = self._classes[desc.full_name] = self._factory.GetMessageClass(desc)
        f, fields = self.decoder.fields, self.decoder.value_fields
        wanted = [f.series_id, f.ts, *(fields if fields is not None else (f.values,))]
        present = [n for n in wanted if n in desc.fields_by_name]
        ts_is_message = f.ts in desc.fields_by_name and desc.fields_by_name[f.ts].type == _MESSAGE

        def read(payload: bytes) -> dict[str, Any]:
            try:
                msg = cls.FromString(payload)
            except Exception as exc:  # DecodeError, and what a hostile payload raises
                raise RecordError(
                    "bad_encoding", f"not Protobuf of its schema: {exc}"[:300]
                ) from None
            body = {n: getattr(msg, n) for n in present}
            if ts_is_message:
                ts = body[f.ts]
                body[f.ts] = (
                    ts.seconds + ts.nanos / 1e9 if ts.DESCRIPTOR.full_name == _TIMESTAMP else ts
                )
            if fields is None and f.values in body:
                body[f.values] = list(body[f.values])  # a repeated field's container
            return body

        return read

    def typed(self, desc: Any) -> bool:
        """Whether the message type makes the series id a string, ts a number (or Timestamp)
        and every value a number: then a batch is checked as one array."""
        f, fields = self.decoder.fields, self.decoder.value_fields
        by = desc.fields_by_name
        sid, ts = by.get(f.series_id), by.get(f.ts)
        if sid is None or sid.type != _STRING or ts is None:
            return False
        if ts.type not in _NUMERIC and not (
            ts.type == _MESSAGE and ts.message_type.full_name == _TIMESTAMP
        ):
            return False
        if fields is not None:
            return all(n in by and by[n].type in _NUMERIC and not _repeated(by[n]) for n in fields)
        values = by.get(f.values)
        return values is not None and values.type in _NUMERIC and _repeated(values)

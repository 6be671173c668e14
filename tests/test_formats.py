"""Input formats beyond the contract's JSON (stream_vae.core.formats): Avro by a local schema
and by schema id in the registry's wire format, JSON in that wire format, and field names
mapped by settings; every failure is a typed dead-letter reason."""

from __future__ import annotations

import io
import struct

import fastavro
import pytest

from stream_vae import _json
from stream_vae.core.formats import AvroDecoder, ProtobufDecoder, RegistryDecoder, wire_schema_id
from stream_vae.core.protobuf import message_indexes
from stream_vae.core.records import FieldMap, RecordDecoder
from stream_vae.errors import RecordError

NAMES = ("temp", "pressure")
# A producer's own record: other field names, features as fields, a field the model ignores.
SCHEMA = {
    "type": "record",
    "name": "Reading",
    "fields": [
        {"name": "machine", "type": "string"},
        {"name": "time", "type": "double"},
        {"name": "temperature_c", "type": "double"},
        {"name": "pressure_bar", "type": "float"},
        {"name": "site", "type": "string"},
    ],
}
FIELDS = FieldMap(
    "machine", "time", "values", (("pressure", "pressure_bar"), ("temp", "temperature_c"))
)


def _avro(record: dict[str, object], schema: dict[str, object] = SCHEMA) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def _wire(schema_id: int, payload: bytes) -> bytes:
    return struct.pack(">bI", 0, schema_id) + payload


READING = {
    "machine": "m-7",
    "time": 1.7e9,
    "temperature_c": 71.5,
    "pressure_bar": 2.25,
    "site": "a",
}


def test_avro_with_a_local_schema_and_mapped_fields() -> None:
    decode = AvroDecoder(_json.dumps(SCHEMA).decode(), RecordDecoder(NAMES, fields=FIELDS))
    rec = decode(None, _avro(READING))
    assert (rec.series_id, rec.ts, rec.values.tolist()) == ("m-7", 1.7e9, [71.5, 2.25])
    with pytest.raises(RecordError) as info:
        decode(None, b"\x02not avro")
    assert info.value.reason == "bad_encoding"


def test_avro_by_schema_id_from_the_wire_format() -> None:
    decode = RegistryDecoder("avro", RecordDecoder(NAMES, fields=FIELDS))
    msg = _wire(42, _avro(READING))
    assert wire_schema_id(msg) == 42
    assert decode.unknown_ids([msg, msg, None, b"{}"]) == {42}
    decode.add_schema(42, _json.dumps(SCHEMA).decode())
    assert decode.unknown_ids([msg]) == set()
    assert decode(b"m-7", msg).values.tolist() == [71.5, 2.25]
    decode.add_schema(7, None)  # the registry has no schema 7
    assert decode.unknown_ids([_wire(7, b"")]) == set()  # not asked for again
    for bad, reason in ((_wire(7, b""), "unknown_schema"), (b'{"ts": 1}', "bad_encoding")):
        with pytest.raises(RecordError) as info:
            decode(None, bad)
        assert info.value.reason == reason


def test_json_in_the_wire_format_and_the_contract_checks_still_apply() -> None:
    decode = RegistryDecoder("json_schema", RecordDecoder(NAMES))
    decode.add_schema(3, '{"type": "object"}')
    body = {"series_id": "m-1", "ts": 5.0, "values": [1.0, 2.0]}
    assert decode(None, _wire(3, _json.dumps(body))).values.tolist() == [1.0, 2.0]
    for changed, reason in (({"values": [1.0]}, "wrong_arity"), ({"ts": "soon"}, "bad_timestamp")):
        with pytest.raises(RecordError) as info:
            decode(None, _wire(3, _json.dumps({**body, **changed})))
        assert info.value.reason == reason


def test_mapped_json_fields_and_what_is_missing() -> None:
    decode = RecordDecoder(NAMES, fields=FIELDS)
    rec = decode(
        None, _json.dumps({"machine": "m", "time": 1, "temperature_c": 3, "pressure_bar": 4})
    )
    assert rec.values.tolist() == [3.0, 4.0]
    with pytest.raises(RecordError, match="no 'pressure_bar' field") as info:
        decode(None, _json.dumps({"machine": "m", "time": 1, "temperature_c": 3}))
    assert info.value.reason == "missing_field"
    renamed = RecordDecoder(NAMES, fields=FieldMap(series_id="id", ts="t", values="v"))
    assert renamed(None, b'{"id": "x", "t": 2, "v": [1, 2]}').series_id == "x"


def _results(out: list[object]) -> list[object]:
    """Records as (id, ts, values), errors as their reason: what a batch decode is compared on."""
    return [
        o.reason if isinstance(o, RecordError) else (o.series_id, o.ts, o.values.tolist())  # type: ignore[attr-defined]
        for o in out
    ]


def _alone(decode: object, values: list[bytes | None]) -> list[object]:
    """Each message decoded by itself: what ``many`` must agree with."""
    out: list[object] = []
    for v in values:
        try:
            out.append(decode(None, v))  # type: ignore[operator]
        except RecordError as exc:
            out.append(exc)
    return out


def test_a_batch_of_avro_records_decodes_as_each_record_alone_would() -> None:
    dec = RecordDecoder(NAMES, fields=FIELDS)
    local = AvroDecoder(_json.dumps(SCHEMA).decode(), dec)
    by_id = RegistryDecoder("avro", dec)
    by_id.add_schema(42, _json.dumps(SCHEMA).decode())
    good = [_avro({**READING, "machine": f"m-{i}", "time": 1.7e9 + i}) for i in range(40)]
    bad = [
        b"\x02not avro",  # bad_encoding
        _avro({**READING, "temperature_c": float("nan")}),  # nan_value
        _avro({**READING, "machine": ""}),  # bad_series_id
        None,  # a tombstone
    ]
    for batch in (good, good[:5] + bad + good[5:]):
        keys = [None] * len(batch)
        alone = _alone(local, batch)
        assert _results(local.many(keys, batch)) == _results(alone)
        wire = [None if v is None else _wire(42, v) for v in batch]
        assert _results(by_id.many(keys, wire)) == _results(alone)
    # a schema that does not type every value (a nullable feature) is checked record by record
    nullable = {**SCHEMA, "fields": [*SCHEMA["fields"][:2],  # type: ignore[index]
                {"name": "temperature_c", "type": ["null", "double"]}, *SCHEMA["fields"][3:]]}  # type: ignore[index]  # fmt: skip
    loose = AvroDecoder(nullable, dec)
    msgs = [_avro({**READING, "temperature_c": None}, nullable), _avro(READING, nullable)]
    assert _results(loose.many([None, None], msgs)) == [
        "bad_value",
        ("m-7", 1.7e9, [71.5, 2.25]),
    ]


# -- Protobuf ---------------------------------------------------------------------------------

STRING, DOUBLE, FLOAT, BOOL = 9, 1, 2, 8  # FieldDescriptorProto types
TIMESTAMP = ".google.protobuf.Timestamp"


def _proto_file(fields: list[tuple[str, int | str]]) -> object:
    """A schema file (package t.v1) whose *second* message, Reading, has these fields (so its
    message indexes are [1]); its first, Other, has a string ``note``."""
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FileDescriptorProto(
        name="reading.proto", package="t.v1", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )  # fmt: skip
    fdp.message_type.add(name="Other").field.add(name="note", number=1, type=STRING, label=1)
    m = fdp.message_type.add(name="Reading")
    for i, (name, kind) in enumerate(fields, start=1):
        if isinstance(kind, str):
            m.field.add(name=name, number=i, type=11, type_name=kind, label=1)
        else:
            m.field.add(name=name, number=i, type=kind, label=1)
    return fdp


def _proto_class(fdp: object, name: str) -> object:
    from google.protobuf import descriptor_pool, message_factory, timestamp_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(fdp.SerializeToString())  # type: ignore[attr-defined]
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def _b64(fdp: object) -> str:
    import base64

    return base64.b64encode(fdp.SerializeToString()).decode()  # type: ignore[attr-defined]


PROTO_FIELDS = [("machine", STRING), ("time", TIMESTAMP), ("temperature_c", DOUBLE),
                ("pressure_bar", FLOAT), ("site", STRING)]  # fmt: skip


def _reading(cls: object, **changes: object) -> bytes:
    fields = {"machine": "m-7", "temperature_c": 71.5, "pressure_bar": 2.25, "site": "a"}
    fields.update(changes)  # type: ignore[arg-type]
    msg = cls(**fields)  # type: ignore[operator]
    msg.time.seconds, msg.time.nanos = 1_700_000_000, 500_000_000  # the schema pool's Timestamp
    return msg.SerializeToString()  # type: ignore[no-any-return]


def test_protobuf_with_a_local_descriptor_set_and_a_timestamp() -> None:
    from google.protobuf import descriptor_pb2, timestamp_pb2

    fdp = _proto_file(PROTO_FIELDS)
    cls = _proto_class(fdp, "t.v1.Reading")
    fds = descriptor_pb2.FileDescriptorSet()
    fds.file.add().ParseFromString(timestamp_pb2.DESCRIPTOR.serialized_pb)  # as protoc writes
    fds.file.append(fdp)  # type: ignore[arg-type]
    decode = ProtobufDecoder(fds.SerializeToString(), "t.v1.Reading",
                             RecordDecoder(NAMES, fields=FIELDS))  # fmt: skip
    rec = decode(None, _reading(cls))
    assert (rec.series_id, rec.ts, rec.values.tolist()) == ("m-7", 1.7e9 + 0.5, [71.5, 2.25])
    msgs = [_reading(cls, machine=f"m-{i}") for i in range(40)]
    msgs[7], msgs[9] = b"\xff\xff\xff", _reading(cls, machine="")  # bad_encoding, bad_series_id
    alone = _alone(decode, msgs)
    assert _results(decode.many([None] * 40, msgs)) == _results(alone)
    assert _results(alone)[7:10:2] == ["bad_encoding", "bad_series_id"]
    with pytest.raises(RecordError, match="no message type"):
        ProtobufDecoder(fds.SerializeToString(), "t.v1.Nope", RecordDecoder(NAMES, fields=FIELDS))


def test_protobuf_by_schema_id_and_message_indexes() -> None:
    fdp = _proto_file(PROTO_FIELDS)
    cls = _proto_class(fdp, "t.v1.Reading")
    decode = RegistryDecoder("protobuf", RecordDecoder(NAMES, fields=FIELDS))
    decode.add_schema(5, _b64(fdp))
    # indexes [1] (count 1, index 1, zigzag: 2, 2): the file's second message, Reading
    msg = _wire(5, b"\x02\x02" + _reading(cls))
    assert decode(None, msg).values.tolist() == [71.5, 2.25]
    assert (
        _results(decode.many([None, None], [msg, msg])) == [("m-7", 1.7e9 + 0.5, [71.5, 2.25])] * 2
    )
    # a lone 0: the first message, Other, which has none of the fields
    with pytest.raises(RecordError) as info:
        decode(None, _wire(5, b"\x00" + _reading(cls)))
    assert info.value.reason == "missing_field"
    for bad, reason in (
        (_wire(5, b"\x02\x0a"), "unknown_schema"),  # index 5: no such message
        (_wire(5, b"\x02\x01"), "unknown_schema"),  # index -1: not the last message
        (_wire(5, b"\x02"), "bad_encoding"),  # the indexes run past the message
        (_wire(6, b"\x00"), "unknown_schema"),
    ):
        with pytest.raises(RecordError) as info:
            decode(None, bad)
        assert info.value.reason == reason, bad
    # a schema importing what the decoder does not have is logged and refused, not raised
    from google.protobuf import descriptor_pb2

    orphan = descriptor_pb2.FileDescriptorProto(name="o.proto", dependency=["missing.proto"])
    decode.add_schema(8, _b64(orphan))
    assert decode.unknown_ids([_wire(8, b"\x00")]) == set()
    with pytest.raises(RecordError, match="schema id 8"):
        decode(None, _wire(8, b"\x00"))


def test_message_indexes() -> None:
    assert message_indexes(b"\x00\x00", 0) == ([0], 1)
    assert message_indexes(b"xx\x04\x02\x06rest", 2) == ([1, 3], 5)
    for bad in (b"\x04\x02", b"\x80", b"\x7f"):
        with pytest.raises(RecordError):
            message_indexes(bad, 0)


# -- through Kafka, with a schema registry stand-in --------------------------------------------


class RegistryStandIn:
    """A local HTTP server answering the Confluent Schema Registry's documented endpoints the
    way the registry does: ``GET /schemas/ids/{id}`` (``{"schema": "..."}``, or 404 with error
    code 40403; with ``?format=serialized`` for Protobuf, whose schemas are given here already
    serialized) and ``GET /subjects/{subject}/versions``. No real registry runs here."""

    def __init__(self, schemas: dict[int, str], subject: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.asked: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.asked.append(self.path)
                # format=serialized (Protobuf's descriptor, base64) is what the schemas hold
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["schemas", "ids"] and int(parts[2]) in schemas:
                    status, body = 200, {"schema": schemas[int(parts[2])]}
                elif parts == ["subjects", subject, "versions"]:
                    status, body = 200, list(range(1, len(schemas) + 1))
                else:
                    status, body = 404, {"error_code": 40403, "message": "Schema not found"}
                data = _json.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("fmt", ["avro", "protobuf"])
def test_the_service_reads_a_binary_format_through_a_schema_registry(tiny, fmt: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from stream_vae.broker import EmbeddedBroker
    from stream_vae.storage.tabular import read_table

    from .test_service import _fault_settings, _serve_until_consumed

    names = tiny.artifact.feature_names
    table = read_table(tiny.test_csv, feature_names=names)
    rows = list(table.batch.in_time_order().records())[:400]
    fields = [f"{n}_raw" for n in names]

    def reading(r: object) -> dict[str, object]:
        values = r.values.tolist()  # type: ignore[attr-defined]
        return {"machine": r.series_id, "time": r.ts, **dict(zip(fields, values, strict=True))}  # type: ignore[attr-defined]

    if fmt == "avro":
        schema = {
            "type": "record",
            "name": "Reading",
            "fields": [
                {"name": "machine", "type": "string"},
                {"name": "time", "type": "double"},
                *({"name": f, "type": "double"} for f in fields),
            ],
        }
        registry = RegistryStandIn({1: _json.dumps(schema).decode()}, "telemetry-value")
        good = [_wire(1, _avro(reading(r), schema)) for r in rows]
    else:
        fdp = _proto_file([("machine", STRING), ("time", DOUBLE), *((f, DOUBLE) for f in fields)])
        cls = _proto_class(fdp, "t.v1.Reading")
        registry = RegistryStandIn({1: _b64(fdp)}, "telemetry-value")
        good = [_wire(1, b"\x02\x02" + cls(**reading(r)).SerializeToString()) for r in rows]
    bad = [_wire(99, b"\x00"), _wire(1, b"\xff\xff"), b'{"json": "not framed"}']
    try:
        with EmbeddedBroker() as broker:
            s = _fault_settings(broker, fmt)
            k = s.kafka.model_copy(update={
                "value_format": fmt, "schema_registry_url": registry.url,
                "series_id_field": "machine", "ts_field": "time",
                "feature_fields": {n: f"{n}_raw" for n in names},
            })  # fmt: skip
            settings = s.model_copy(update={"kafka": k})

            async def scenario() -> dict[str, int]:
                from stream_vae.service.kafka import ensure_topics, make_producer

                await ensure_topics(k, [k.input_topics[0], k.alert_topic, k.dead_letter_topic])
                producer = make_producer(k)
                await producer.start()
                try:
                    for r, v in zip(rows, good, strict=True):
                        await producer.send(k.input_topics[0], v, key=r.series_id.encode())
                    for v in bad:
                        await producer.send_and_wait(k.input_topics[0], v, key=b"x")
                finally:
                    await producer.stop()
                service = await _serve_until_consumed(settings, tiny.artifact, len(rows) + 3)
                reg = service.metrics.registry
                for reason in ("unknown_schema", "bad_encoding"):
                    labels = {"reason": reason}
                    reasons[reason] = reg.get_sample_value("stream_vae_dead_letters_total", labels)
                return service.accounting()

            reasons: dict[str, float | None] = {}
            acc = asyncio.run(scenario())
    finally:
        registry.close()
    assert acc["consumed"] == len(rows) + 3 and acc["dead_letters"] == 3, acc
    # id 99 is not in the registry; a bad payload, and a message without the wire format
    assert reasons == {"unknown_schema": 1.0, "bad_encoding": 2.0}
    assert acc["scored"] + acc["buffered"] == len(rows) and acc["scored"] > 0, acc
    # each schema id asked for once: 1 (cached), and 99 (known missing after its 404)
    query = "?format=serialized" if fmt == "protobuf" else ""
    assert sorted(registry.asked) == [f"/schemas/ids/1{query}", f"/schemas/ids/99{query}"]


def test_the_settings_say_what_a_binary_format_is_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from stream_vae.config import load_settings
    from stream_vae.errors import ConfigError
    from stream_vae.service.schema_registry import make_decoder

    for kafka, says in (
        ({"value_format": "protobuf"}, "needs schema_registry_url or protobuf_descriptor_file"),
        ({"value_format": "protobuf", "protobuf_descriptor_file": "x.desc"}, "protobuf_message "),
        ({"value_format": "avro"}, "needs schema_registry_url or avro_schema_file"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_settings(env={}, kafka=kafka)
    fdp = _proto_file(PROTO_FIELDS)
    from google.protobuf import descriptor_pb2, timestamp_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    fds.file.add().ParseFromString(timestamp_pb2.DESCRIPTOR.serialized_pb)
    fds.file.append(fdp)  # type: ignore[arg-type]
    path = tmp_path / "reading.desc"
    path.write_bytes(fds.SerializeToString())
    mapped = {"series_id_field": "machine", "ts_field": "time",
              "feature_fields": {"temp": "temperature_c", "pressure": "pressure_bar"}}  # fmt: skip
    ok = load_settings(env={}, kafka={"value_format": "protobuf", "protobuf_descriptor_file": path,
                                      "protobuf_message": "t.v1.Reading", **mapped})  # fmt: skip
    decode, registry = make_decoder(ok.kafka, NAMES, max_bytes=1 << 20)
    assert registry is None and isinstance(decode, ProtobufDecoder)
    wrong = ok.kafka.model_copy(update={"protobuf_message": "t.v1.Nope"})
    with pytest.raises(ConfigError, match=r"kafka\.protobuf_message"):
        make_decoder(wrong, NAMES, max_bytes=1 << 20)

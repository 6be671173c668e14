"""Input decoding rate on one core: the contract's JSON against Avro (a local schema, and by id
in the schema registry's wire format), records/s through the service's own decoders.

    python bench/decode.py [--records 100000] [--features 8] [--repeats 5] [--chunk 500]

Each message is one record of --features values; each figure is the median of --repeats passes
over all of them, decoded one by one (``decoder(key, value)``), and --chunk at once as
KafkaSource decodes a fetched partition's messages (``decoder.many``: Avro whose schema types
every value is checked as one array). Public tools only (time.perf_counter, fastavro to write
the messages).
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np

from stream_vae import _json
from stream_vae.core.formats import AvroDecoder, RegistryDecoder
from stream_vae.core.records import FieldMap, Record, RecordDecoder


def _rate(
    decode: Callable[[bytes | None, bytes | None], Record], msgs: list[bytes], n: int
) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        for m in msgs:
            decode(None, m)
        times.append(time.perf_counter() - t0)
    return len(msgs) / statistics.median(times)


def _rate_many(decoder: Any, msgs: list[bytes], n: int, chunk: int) -> float:
    """As the service decodes: a fetched partition's messages at once (``many``)."""
    keys: list[bytes | None] = [None] * chunk
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        for i in range(0, len(msgs), chunk):
            part = msgs[i : i + chunk]
            out = decoder.many(keys[: len(part)], part)
        times.append(time.perf_counter() - t0)
    assert not isinstance(out[-1], Exception), out[-1]
    return len(msgs) / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk", type=int, default=500, help="messages per many() call")
    a = p.parse_args()
    names = tuple(f"f{i}" for i in range(a.features))
    rng = np.random.default_rng(0)
    values = rng.normal(size=(a.records, a.features))
    rows = [
        {"series_id": f"m-{i % 1000}", "ts": 1.7e9 + i, "values": v.tolist()}
        for i, v in enumerate(values)
    ]
    schema = {
        "type": "record", "name": "R",
        "fields": [{"name": "series_id", "type": "string"}, {"name": "ts", "type": "double"},
                   *({"name": n, "type": "double"} for n in names)],
    }  # fmt: skip
    parsed = fastavro.parse_schema(schema)

    def avro(row: dict[str, object]) -> bytes:
        buf = io.BytesIO()
        flat = {"series_id": row["series_id"], "ts": row["ts"]}
        fastavro.schemaless_writer(buf, parsed, flat | dict(zip(names, row["values"], strict=True)))  # type: ignore[arg-type]
        return buf.getvalue()

    json_msgs = [_json.dumps(r) for r in rows]
    avro_msgs = [avro(r) for r in rows]
    wire_msgs = [struct.pack(">bI", 0, 1) + m for m in avro_msgs]
    flat = RecordDecoder(names, fields=FieldMap(features=tuple((n, n) for n in names)))
    registry = RegistryDecoder("avro", flat)
    registry.add_schema(1, _json.dumps(schema).decode())
    local = AvroDecoder(schema, flat)
    rates = {
        "json": _rate(RecordDecoder(names), json_msgs, a.repeats),
        "avro (local schema)": _rate(local, avro_msgs, a.repeats),
        "avro (registry wire format)": _rate(registry, wire_msgs, a.repeats),
        f"json, {a.chunk} at once": _rate_many(RecordDecoder(names), json_msgs, a.repeats, a.chunk),
        f"avro (local), {a.chunk} at once": _rate_many(local, avro_msgs, a.repeats, a.chunk),
        f"avro (wire), {a.chunk} at once": _rate_many(registry, wire_msgs, a.repeats, a.chunk),
    }
    print(f"{a.records} records x {a.features} features, one core, median of {a.repeats}:")
    for name, r in rates.items():
        print(f"  {name:32} {r:>10,.0f} records/s  {r / rates['json']:.2f}x json")


if __name__ == "__main__":
    main()

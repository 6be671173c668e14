"""A schema registry client, as far as decoding needs one: a schema by its id
(``GET /schemas/ids/{id}``, the Confluent Schema Registry's documented endpoint, which
Redpanda's and Apicurio's compatible APIs serve too). Schemas are immutable by id: each is
fetched once per process and cached by the decoder (:mod:`stream_vae.core.formats`)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..config import KafkaSettings
from ..core.formats import AvroDecoder, ProtobufDecoder, RegistryDecoder
from ..core.records import FieldMap, Record, RecordDecoder
from ..errors import ConfigError, RecordError, StreamVAEError

__all__ = ["RegistryUnavailableError", "SchemaRegistry", "fetch_schemas", "make_decoder"]

log = logging.getLogger(__name__)


class RegistryUnavailableError(StreamVAEError):
    """The schema registry did not answer (it may come back: retriable)."""

    retriable = True
    exit_code = 75


class SchemaRegistry:
    """``schema(id)``: the schema text, or None where the registry has no such id."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def schema(self, schema_id: int, *, serialized: bool = False) -> str | None:
        """``serialized``: Protobuf's ``FileDescriptorProto`` in base64 (``format=serialized``)
        rather than its ``.proto`` text, which only a compiler could read."""
        query = "?format=serialized" if serialized else ""
        req = urllib.request.Request(
            f"{self.url}/schemas/ids/{schema_id}{query}",
            headers={"Accept": "application/vnd.schemaregistry.v1+json, application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RegistryUnavailableError(f"schema registry {self.url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnavailableError(f"schema registry {self.url}: {exc}") from None
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise RegistryUnavailableError(
                f"schema registry {self.url}: no schema in {body!r:.200}"
            )
        return schema


class Decoder(Protocol):
    """An input format's decoder: one message, or a fetched batch of them."""

    def __call__(self, key: bytes | None, value: bytes | None) -> Record: ...

    def many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[Record | RecordError]: ...


def make_decoder(
    k: KafkaSettings, feature_names: Sequence[str], *, max_bytes: int
) -> tuple[Decoder, SchemaRegistry | None]:
    """The input decoder the settings describe, and the registry it needs (if any)."""
    fields = FieldMap(
        k.series_id_field, k.ts_field, k.values_field, tuple(sorted(k.feature_fields.items()))
    )
    missing = sorted(set(feature_names) - set(k.feature_fields)) if k.feature_fields else []
    if missing:
        raise ConfigError(f"kafka.feature_fields does not map the model's features {missing}")
    records = RecordDecoder(feature_names, max_bytes=max_bytes, fields=fields)
    if k.value_format == "json":
        return records, None
    if k.value_format == "avro" and k.avro_schema_file is not None:
        try:
            text = Path(k.avro_schema_file).read_text()
        except OSError as exc:
            raise ConfigError(f"kafka.avro_schema_file: {exc}") from None
        return AvroDecoder(text, records), None
    if k.value_format == "protobuf" and k.protobuf_descriptor_file is not None:
        assert k.protobuf_message is not None  # checked with the settings
        try:
            data = Path(k.protobuf_descriptor_file).read_bytes()
            return ProtobufDecoder(data, k.protobuf_message, records), None
        except OSError as exc:
            raise ConfigError(f"kafka.protobuf_descriptor_file: {exc}") from None
        except RecordError as exc:  # no such message type in the set
            raise ConfigError(f"kafka.protobuf_message: {exc.message}") from None
    assert k.schema_registry_url is not None  # checked with the settings
    registry = SchemaRegistry(k.schema_registry_url)
    return RegistryDecoder(k.value_format, records), registry


def fetch_schemas(decoder: RegistryDecoder, registry: SchemaRegistry, ids: Iterable[int]) -> None:
    """Fetch the schemas of ``ids`` into ``decoder`` (blocking: run it off the event loop)."""
    for schema_id in sorted(ids):
        text = registry.schema(schema_id, serialized=decoder.kind == "protobuf")
        decoder.add_schema(schema_id, text)
        log.info("schema %d from %s", schema_id, registry.url)

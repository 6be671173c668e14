"""The one module that owns orjson: every (de)serialisation of JSON goes through here."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["JSONDecodeError", "dumps", "loads"]

JSONDecodeError = orjson.JSONDecodeError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes (raises :data:`JSONDecodeError`)."""
    return orjson.loads(data)


def dumps(obj: Any, *, indent: bool = False) -> bytes:
    """Serialise to compact JSON bytes; numpy arrays and scalars are allowed."""
    opts = _OPTIONS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(obj, option=opts)

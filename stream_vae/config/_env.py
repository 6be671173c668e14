"""The environment as a settings source: ``STREAM_VAE_`` keys, ``__`` between levels.

Every environment key goes through here (the process's, as pydantic-settings reads it, or a
mapping standing in for it in tests).
A key under the prefix that names no setting is most likely a typo (``STREAM_VAE_WINDOWS__SIZE``
for ``STREAM_VAE_WINDOW__SIZE``): it is logged with the closest real key and skipped, not an
error, because the environment is shared (a deployment may set keys of a newer release). A key
that moved keeps its ``moved to`` error (see :data:`stream_vae.config.MOVED`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .. import _json
from ..errors import ConfigError
from ._tree import paths

__all__ = ["DELIMITER", "PREFIX", "env_name", "read_env"]

log = logging.getLogger(__name__)

PREFIX = "STREAM_VAE_"
DELIMITER = "__"
# Settings are loaded more than once in a process (each CLI command, the tests): a stray key is
# reported the first time only.
_warned: set[str] = set()


def read_env(
    env: Mapping[str, str], root: type[BaseModel], moved: Mapping[str, str]
) -> dict[str, Any]:
    """The settings ``env`` sets, nested as ``root`` expects them (complex values as JSON)."""
    known = {".".join(p) for p in paths(root)}
    out: dict[str, Any] = {}
    for key, value in sorted(env.items(), key=lambda kv: kv[0].upper()):
        if not key.upper().startswith(PREFIX):
            continue
        path = key[len(PREFIX) :].lower().split(DELIMITER)
        dotted = ".".join(path)
        if dotted not in known and dotted not in moved:
            _warn_unknown(key, known)
            continue
        _put(out, key, path, _decode(key, value))
    return out


def env_name(dotted: str) -> str:
    """``window.size`` → ``STREAM_VAE_WINDOW__SIZE``."""
    return PREFIX + dotted.upper().replace(".", DELIMITER)


def _warn_unknown(key: str, known: set[str]) -> None:
    key = key.upper()  # names are case-insensitive, and the process's arrive lowercased
    if key in _warned:
        return
    _warned.add(key)
    # Compared without the prefix, which every candidate shares and would flatten the ratios.
    asked = key[len(PREFIX) :].lower().replace(DELIMITER, ".")
    close = difflib.get_close_matches(asked, sorted(known), n=1, cutoff=0.8)
    hint = f"; did you mean {env_name(close[0])}?" if close else ""
    log.warning("environment key %s is not a setting, ignored%s", key, hint)


def _decode(key: str, value: str) -> Any:
    # Like pydantic-settings' environment source: complex values (lists, objects) are JSON.
    if value.lstrip()[:1] not in ("[", "{"):
        return value
    try:
        return _json.loads(value)
    except _json.JSONDecodeError as exc:  # the message names a position, never the value
        raise ConfigError(f"{key}: not valid JSON ({exc})") from None


def _put(out: dict[str, Any], key: str, path: list[str], value: Any) -> None:
    # Keys come sorted, so a section set whole (as JSON) is met before its own keys, which win.
    node = out
    for i, part in enumerate(path[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            whole = env_name(".".join(path[: i + 1]))
            raise ConfigError(f"{key}: {whole} sets that section to one value, not a table")
    node[path[-1]] = value

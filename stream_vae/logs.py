"""Log lines operators can use: text for a terminal, or one JSON object per line for a log
pipeline, at the level the ``log`` settings name.

Context travels as fields, not only as text: a call passes ``extra={"series": sid,
"partition": 3, "model_version": v}`` and the JSON formatter writes each one it knows as its own
key (:data:`CONTEXT`). Strings that come from outside (series ids, broker errors) cannot forge
a line: the text formatter escapes control characters in the whole message, and JSON escapes
them by construction.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

from . import _json

if TYPE_CHECKING:
    from .config import LogSettings

__all__ = ["CONTEXT", "JsonFormatter", "TextFormatter", "configure_logging", "printable"]

# The ``extra`` keys written as fields of a JSON line (and nothing else a record carries).
CONTEXT = (
    "series",
    "topic",
    "partition",
    "offset",
    "model_version",
    "event",
    "alert_id",
    "exit_code",
)


def printable(text: str, limit: int | None = 200) -> str:
    """``text`` for a log line: control characters escaped (a series id with a newline cannot
    forge a log line), cut to ``limit`` characters (None: whole).

    >>> printable("m-1\\nERROR fake")
    'm-1\\\\nERROR fake'
    """
    if text.isprintable() and (limit is None or len(text) <= limit):
        return text
    cut = text if limit is None else text[:limit]
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return out + ("…" if limit is not None and len(text) > limit else "")


class TextFormatter(logging.Formatter):
    """``2026-12-06 19:52:01,123 INFO stream_vae.service.app: message``, one line per record
    (a traceback follows on its own lines, as Python prints it)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message, None)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (epoch seconds), ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, the :data:`CONTEXT` fields a call passed, and ``exc`` (the
    traceback) where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _json.dumps(out).decode()


def configure_logging(settings: LogSettings, *, default_level: str) -> None:
    """Send log lines to stderr in the configured format and level (``settings.level``, or
    ``default_level`` where it is None). Called by the entry point; a second call replaces the
    handler the first installed and leaves any other (a test runner's) in place."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level or default_level)


_HANDLER = "stream_vae"

"""One exception base for the package, with typed reasons.

Every error the package raises on purpose derives from :class:`StreamVAEError`. Errors caused by
bad input carry a machine-readable ``reason`` (used as the dead-letter reason and as a metric
label) next to the human-readable message.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "KafkaUnavailableError",
    "RecordError",
    "RegistryError",
    "ShapeError",
    "StreamVAEError",
    "check_shape",
]


class StreamVAEError(Exception):
    """Base of every error raised on purpose by stream-vae.

    ``retriable`` tells a caller at a loop boundary whether trying again can succeed.
    """

    retriable: bool = False


class ConfigError(StreamVAEError):
    """A setting is missing, out of range or inconsistent."""


class ShapeError(StreamVAEError, ValueError):
    """An array crossing a module boundary has the wrong shape."""


class RecordError(StreamVAEError, ValueError):
    """One input message could not be decoded or validated.

    ``reason`` is one of a small closed set (``bad_json``, ``missing_field``, ``wrong_arity``,
    ``unknown_feature``, ``nan_value``, ``bad_timestamp``, ``implausible_timestamp``,
    ``bad_series_id``, ``bad_value``, ``oversized``); it names the dead-letter reason.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class KafkaUnavailableError(StreamVAEError):
    """The Kafka cluster could not be reached (it may come back: retriable)."""

    retriable = True


class DataError(StreamVAEError, ValueError):
    """A training or scoring file is unusable (columns, cells, empty, feature set)."""


class ArtifactError(StreamVAEError):
    """A model artifact is missing, corrupt, or does not fit the data it is used with."""


class RegistryError(StreamVAEError):
    """A registry operation cannot be done: unknown version, nothing to roll back, corrupt log."""


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int | None, ...]) -> None:
    """Raise :class:`ShapeError` unless ``shape`` matches ``expected`` (``None`` = any size)."""
    ok = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ShapeError(f"{name}: expected shape {want}, got {tuple(shape)}")

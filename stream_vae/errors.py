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
    "UsageError",
    "check_shape",
]


class StreamVAEError(Exception):
    """Base of every error raised on purpose by stream-vae.

    ``retriable`` tells a caller at a loop boundary whether trying again can succeed;
    ``exit_code`` is the command line's exit status for it (the BSD ``sysexits.h`` convention,
    docs/cli.md, "Exit codes").
    """

    retriable: bool = False
    exit_code: int = 1


class UsageError(StreamVAEError):
    """A command-line option has a value the command cannot use (argparse's own status, 2)."""

    exit_code = 2


class ConfigError(StreamVAEError):
    """A setting is missing, out of range or inconsistent."""

    exit_code = 78  # EX_CONFIG


class ShapeError(StreamVAEError, ValueError):
    """An array crossing a module boundary has the wrong shape."""

    exit_code = 65  # EX_DATAERR


class RecordError(StreamVAEError, ValueError):
    """One input message could not be decoded or validated.

    ``reason`` is one of a small closed set (``bad_json``, ``missing_field``, ``wrong_arity``,
    ``unknown_feature``, ``nan_value``, ``bad_timestamp``, ``implausible_timestamp``,
    ``bad_series_id``, ``bad_value``, ``oversized``); it names the dead-letter reason.
    """

    exit_code = 65  # EX_DATAERR

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class KafkaUnavailableError(StreamVAEError):
    """The Kafka cluster could not be reached (it may come back: retriable)."""

    retriable = True
    exit_code = 75  # EX_TEMPFAIL: a supervisor may try again


class DataError(StreamVAEError, ValueError):
    """A training or scoring file is unusable (columns, cells, empty, feature set)."""

    exit_code = 65  # EX_DATAERR


class ArtifactError(StreamVAEError):
    """A model artifact is missing, corrupt, or does not fit the data it is used with."""

    exit_code = 66  # EX_NOINPUT: the model (not the data) is what is unusable


class RegistryError(StreamVAEError):
    """A registry operation cannot be done: unknown version, nothing to roll back, corrupt log."""

    exit_code = 66  # EX_NOINPUT, as for a model


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int | None, ...]) -> None:
    """Raise :class:`ShapeError` unless ``shape`` matches ``expected`` (``None`` = any size)."""
    ok = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ShapeError(f"{name}: expected shape {want}, got {tuple(shape)}")

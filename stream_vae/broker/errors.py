"""What the embedded broker raises."""

from __future__ import annotations

from ..errors import StreamVAEError

__all__ = ["BrokerError", "PortInUseError"]


class BrokerError(StreamVAEError):
    """The embedded broker could not be found, started or reached."""


class PortInUseError(BrokerError):
    """Another process owns the port the broker was asked to listen on."""

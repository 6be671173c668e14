"""A model version as a directory: ``weights.pt`` and ``manifest.json`` (the format is
:class:`~stream_vae.storage.artifact.Artifact`'s; this module only moves its bytes).

Examples
--------
The CLI's ``train`` writes one with :func:`save_artifact`; ``score`` and ``run`` read it back
with :func:`load_artifact`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ..errors import ArtifactError
from .artifact import MANIFEST, WEIGHTS, Artifact

__all__ = ["load_artifact", "save_artifact"]


def save_artifact(art: Artifact, path: str | os.PathLike[str]) -> Path:
    """Write atomically: a temporary sibling directory renamed into place."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    art = art if art.created_at else replace(art, created_at=time.time())
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name, data in art.to_files().items():
            (tmp / name).write_bytes(data)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Load a model directory; never executes code from it."""
    root = Path(path)
    files = {}
    for name in (MANIFEST, WEIGHTS):
        try:
            files[name] = (root / name).read_bytes()
        except FileNotFoundError:
            continue  # from_files names what is missing
        except OSError as exc:
            raise ArtifactError(f"cannot read {root / name}: {exc.strerror}") from None
    return Artifact.from_files(files, str(root))

"""A model version as a directory: ``weights.pt`` and ``manifest.json`` (the format is
:class:`~stream_vae.storage.artifact.Artifact`'s; this module only moves its bytes).

Writing never deletes what it did not write: a new model goes to a temporary sibling directory
that is renamed into place; an existing *model* directory (those two files and nothing else) is
replaced; an empty directory is filled; any other directory is refused, or with ``force`` gets
the two files beside what it holds.

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

__all__ = ["check_destination", "load_artifact", "save_artifact"]

_MODEL_FILES = frozenset({MANIFEST, WEIGHTS})


def save_artifact(art: Artifact, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write ``art`` to the directory ``path`` (see the module docstring for what is replaced).

    Raises :class:`ArtifactError` when ``path`` is a file, or a non-empty directory that is not
    a model and ``force`` is not given.
    """
    dest = Path(path).absolute()  # "." has no name to rename by
    art = art if art.created_at else replace(art, created_at=time.time())
    files = art.to_files()
    if check_destination(dest, force=force):
        for name, data in files.items():  # beside what is there, each file replaced atomically
            _write_atomic(dest / name, data)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if dest.exists():  # a model (or empty) directory: set aside, swapped, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            dest.rename(old / dest.name)
            tmp.rename(dest)
            shutil.rmtree(old)  # holds at most the two files this module wrote
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def check_destination(path: str | os.PathLike[str], *, force: bool = False) -> bool:
    """Whether a model can be written to ``path``; raises :class:`ArtifactError` if not (call
    it before a long training run). Returns True when the model's files will be written beside
    other files (``force`` on a directory that is not a model)."""
    dest = Path(path)
    if dest.exists() and not dest.is_dir():
        raise ArtifactError(f"{dest} exists and is not a directory")
    held = {p.name for p in dest.iterdir()} if dest.is_dir() else set()
    if not held or held <= _MODEL_FILES:
        return False
    if not force:
        raise ArtifactError(
            f"{dest} is not empty and not a model directory ({len(held)} entries): choose a new "
            "directory, or pass --force to add the model's two files to it (nothing is deleted)"
        )
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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

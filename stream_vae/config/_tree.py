"""Walking the settings tree by path: which keys exist, and which hold secrets.

Used where a path arrives from outside the models (an environment key, the ``loc`` of a
validation error) and must be checked against them before anything is read or echoed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, get_args, get_origin

from pydantic import BaseModel, Secret, SecretBytes, SecretStr

__all__ = ["field_at", "holds_secret", "paths", "section_of"]

_SECRETS = (SecretStr, SecretBytes, Secret)


def section_of(tp: Any) -> type[BaseModel] | None:
    """The settings section ``tp`` is, or is optionally (``X | None``); None for a leaf."""
    for t in (tp, *get_args(tp)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def field_at(root: type[BaseModel], path: Sequence[str | int]) -> tuple[bool, Any]:
    """``(found, annotation)`` of the field at ``path`` under ``root``.

    Parts below a leaf that are not field names (a tuple index, the union member pydantic names
    in an error's ``loc``) stay on that leaf; a name a section lacks is not found.
    """
    tp: Any = root
    for part in path:
        section = section_of(tp)
        if section is None:
            continue  # inside a leaf value
        field = section.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return False, None
        tp = field.annotation
    return True, tp


def holds_secret(tp: Any) -> bool:
    """Whether a value of type ``tp`` is, or contains anywhere, a secret."""
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, _SECRETS):
        return True
    if isinstance(origin, type) and issubclass(origin, _SECRETS):
        return True
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return any(holds_secret(f.annotation) for f in tp.model_fields.values())
    return any(holds_secret(a) for a in get_args(tp))


def paths(root: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every settable path under ``root``: each section, and each field of each section."""
    for name, field in root.model_fields.items():
        path = (*prefix, name)
        yield path
        section = section_of(field.annotation)
        if section is not None:
            yield from paths(section, path)

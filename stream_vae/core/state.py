"""Per-series state: one protocol every part that keeps state per series speaks, and one
registry, so that evicting a series or revoking a partition is a single call.

The parts: the window store and the scorer's EMA and episodes (through
:class:`~stream_vae.runtime.live.LiveModel`), the service's replay watermark and the drift
monitor's thinning counters. (The clean reservoir holds windows, not per-series state: it is
bounded by its capacity, and a revoked series' windows are still normal data to learn from.)
A part forgets a series with :meth:`SeriesState.drop`, tells which it
holds with :meth:`SeriesState.series` and estimates its memory with :meth:`SeriesState.nbytes`.

Examples
--------
>>> class Counts:
...     def __init__(self) -> None:
...         self._n: dict[str, int] = {}
...     def add(self, s: str) -> None:
...         self._n[s] = self._n.get(s, 0) + 1
...     def drop(self, series): [self._n.pop(s, None) for s in series]
...     def series(self): return frozenset(self._n)
...     def nbytes(self): return KEY_BYTES * len(self._n)
>>> a, b = Counts(), Counts()
>>> a.add("pump-1"); a.add("pump-2"); b.add("pump-2")
>>> reg = StateRegistry({"a": a, "b": b})
>>> sorted(reg.series())
['pump-1', 'pump-2']
>>> reg.drop(["pump-2"])
>>> sorted(a.series()), sorted(b.series())
(['pump-1'], [])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = ["KEY_BYTES", "KeyedState", "SeriesState", "StateRegistry"]

# What one series id costs in a dict beside the state itself: the entry, the key's str object
# (~50 B + its length) and the hash table's slack. CPython measures 100-200 B; round up.
KEY_BYTES = 200


@runtime_checkable
class SeriesState(Protocol):
    """A part that keeps state per series."""

    def drop(self, series: Iterable[str]) -> None:
        """Forget these series (unknown ids are ignored)."""

    def series(self) -> frozenset[str]:
        """The series this part holds state for."""

    def nbytes(self) -> int:
        """An estimate of the memory this part holds, in bytes."""


class KeyedState:
    """The :class:`SeriesState` methods of a part whose state is one entry of ``self._state``
    per series, of about ``STATE_BYTES`` each beside its key."""

    STATE_BYTES: ClassVar[int] = 0
    _state: dict[str, Any]

    def series(self) -> frozenset[str]:
        return frozenset(self._state)

    def nbytes(self) -> int:
        return (KEY_BYTES + self.STATE_BYTES) * len(self._state)

    def drop(self, keys: Iterable[str]) -> None:
        """Forget these series (unknown ids are ignored)."""
        for k in keys:
            self._state.pop(k, None)


class StateRegistry:
    """The per-series parts of one process, by name: one :meth:`drop` reaches all of them."""

    def __init__(self, parts: Mapping[str, SeriesState] | None = None) -> None:
        self._parts: dict[str, SeriesState] = {}
        for name, part in (parts or {}).items():
            self.register(name, part)

    def register(self, name: str, part: SeriesState) -> None:
        if name in self._parts:
            raise ValueError(f"a part named {name!r} is registered already")
        if not isinstance(part, SeriesState):
            raise TypeError(f"{name!r} does not implement SeriesState (drop, series, nbytes)")
        self._parts[name] = part

    def drop(self, series: Iterable[str]) -> None:
        series = list(series)
        if series:
            for part in self._parts.values():
                part.drop(series)

    def series(self) -> frozenset[str]:
        """Every series any part holds."""
        return frozenset().union(*(p.series() for p in self._parts.values()))

    def nbytes(self) -> dict[str, int]:
        """Each part's memory estimate, by name."""
        return {name: p.nbytes() for name, p in self._parts.items()}

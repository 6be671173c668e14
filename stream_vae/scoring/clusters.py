"""Recurring kinds of anomaly: episodes grouped, across series and time, by what they blame.

Each episode that opens is described by its attribution: every feature's share of the window's
reconstruction error (a unit vector of shares). Online leader clustering: the episode joins the
kind whose mean attribution is nearest by cosine similarity, if at least ``similarity``;
otherwise it starts a new kind. A kind's id is ``k<n>``, in order of first appearance, and the
alert says how many episodes it has had (``cluster_count``): "the 14th episode like k3". At most
``max_clusters`` kinds are kept; past that an episode joins the nearest however far it is.

The latent code is left out: an attribution is comparable across models (a retrained model's
latent space is not), and it is what an operator reads.

Examples
--------
>>> import numpy as np
>>> c = EpisodeClusters(similarity=0.9)
>>> c.assign(np.array([0.9, 0.1, 0.0])), c.assign(np.array([0.0, 0.2, 0.8]))
(('k1', 1), ('k2', 1))
>>> c.assign(np.array([0.8, 0.15, 0.05]))  # like the first
('k1', 2)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from ..core.state import KEY_BYTES
from ..errors import ConfigError

__all__ = ["EpisodeClusters"]

F64 = npt.NDArray[np.float64]


class EpisodeClusters:
    """Online grouping of episodes by attribution (a fleet-level part: no per-series state).

    Parameters
    ----------
    similarity : float
        In (0, 1]; the cosine similarity at which an episode joins a kind.
    max_clusters : int
        >= 1; kinds kept.
    """

    def __init__(self, similarity: float = 0.85, max_clusters: int = 256) -> None:
        if not 0.0 < similarity <= 1.0 or max_clusters < 1:
            raise ConfigError(
                f"EpisodeClusters: need 0 < similarity <= 1 and max_clusters >= 1, got "
                f"{similarity!r}, {max_clusters!r}"
            )
        self.similarity = similarity
        self.max_clusters = max_clusters
        self._sums: list[F64] = []  # per kind: the sum of its members' unit attributions
        self._counts: list[int] = []

    def assign(self, attribution: npt.ArrayLike) -> tuple[str, int]:
        """The kind of an episode with this attribution (non-negative, one per feature), and
        how many episodes that kind has had, this one included."""
        a = np.asarray(attribution, dtype=np.float64)
        norm = float(np.linalg.norm(a))
        if not norm > 0 or not np.isfinite(norm):
            a, norm = np.ones_like(a), float(np.sqrt(a.size))  # nothing blamed: all alike
        unit = a / norm
        best, best_sim = -1, -1.0
        if self._sums:
            centres = np.stack(self._sums)  # (K, d)
            sims = centres @ unit / np.maximum(np.linalg.norm(centres, axis=1), 1e-12)
            best = int(np.argmax(sims))
            best_sim = float(sims[best])
        if best < 0 or (best_sim < self.similarity and len(self._sums) < self.max_clusters):
            self._sums.append(unit.copy())
            self._counts.append(1)
            return f"k{len(self._sums)}", 1
        self._sums[best] += unit
        self._counts[best] += 1
        return f"k{best + 1}", self._counts[best]

    def summary(self) -> list[tuple[str, int, F64]]:
        """Each kind: id, episodes, mean unit attribution (d,)."""
        return [
            (f"k{i + 1}", n, s / n)
            for i, (s, n) in enumerate(zip(self._sums, self._counts, strict=True))
        ]

    # a fleet-level part: it keeps no state per series
    def series(self) -> frozenset[str]:
        return frozenset()

    def nbytes(self) -> int:
        return sum(int(s.nbytes) + KEY_BYTES for s in self._sums)

    def drop(self, keys: Iterable[str]) -> None:
        return None

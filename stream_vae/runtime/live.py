"""The one path a record travels to become a score: WindowStore → Detector → Scorer.

The Kafka service, offline scoring and evaluation all go through :class:`Pipeline`; the service
calls the three steps itself so that the forward pass runs off the event loop.

Examples
--------
The CLI builds one from a model directory: ``Pipeline.from_artifact(Artifact.load(path))``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ..config import WindowSettings
from ..core.records import RecordBatch
from ..core.windows import WindowStore
from ..model.detector import Detector, Precision
from ..scoring.scorer import ScoredBatch, Scorer
from ..storage.artifact import Artifact

__all__ = ["Pipeline"]


@dataclass(slots=True)
class Pipeline:
    store: WindowStore
    detector: Detector
    scorer: Scorer

    @classmethod
    def from_artifact(
        cls,
        artifact: Artifact,
        device: str = "auto",
        backend: Literal["torch", "onnx"] = "torch",
        window: WindowSettings | None = None,
        *,
        precision: Precision = "fp32",
        compile: bool = False,
        cuda_graphs: bool = False,
        max_batch: int = 4096,
    ) -> Pipeline:
        """``window`` replaces the artifact's window settings (same size as the model's).

        The keywords go to :meth:`Artifact.detector`: the GPU options (docs/operations.md, "GPU
        inference") and ``max_batch``, the most windows per forward pass.
        """
        detector = artifact.detector(
            device,
            backend=backend,
            precision=precision,
            compile=compile,
            cuda_graphs=cuda_graphs,
            max_batch=max_batch,
        )
        return cls(artifact.window_store(window), detector, artifact.scorer())

    def process(self, batch: RecordBatch) -> ScoredBatch:
        """Records in arrival order → scores of the windows they completed, and alert events."""
        ready = self.store.push_many(batch)
        parts = self.detector.infer(ready.values)  # (n, W, d) → ScoreParts
        return self.scorer.update(ready.keys, ready.ts, parts)

    def stream(self, batch: RecordBatch, chunk: int = 2048) -> Iterator[ScoredBatch]:
        """Process a long batch in arrival-order chunks (one forward pass each)."""
        for i in range(0, len(batch), chunk):
            yield self.process(batch.slice(i, i + chunk))

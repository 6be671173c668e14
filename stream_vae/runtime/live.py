"""One live model: the window store, the detector, the scorer and the version they serve.

The one path a record travels to become a score, written once::

    records → prepare (WindowStore) → infer (Detector: the forward pass) → score (Scorer)

The Kafka service, offline scoring, evaluation and the demo all go through :class:`LiveModel`;
the service calls the three steps itself so that :meth:`LiveModel.infer` runs in a worker thread
off the event loop. :meth:`LiveModel.install` is the one swap sequence.

Examples
--------
The CLI's ``score`` builds one from a model directory,
``LiveModel(load_artifact(path), DetectorOptions(device="cpu"))``, then reads
``for scored in live.stream(batch): ...``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..config.deployment import AlertSettings, ServiceSettings
from ..core.records import RecordBatch
from ..core.windows import ReadyWindows, WindowStore
from ..errors import ArtifactError, ConfigError
from ..model.backends import (
    Backend,
    OrtBackend,
    Precision,
    TorchBackend,
    int8_graph,
    onnx_graph,
)
from ..model.detector import MAX_BATCH, Detector
from ..model.sampled import SAMPLED_MODES
from ..model.vae import pick_device
from ..scoring.alerts import Alert
from ..scoring.clusters import EpisodeClusters
from ..scoring.hybrid import ScoreParts
from ..scoring.novelty import SeriesNovelty
from ..scoring.quality import QUALITY_KINDS, QualityMonitor, StaleMonitor
from ..scoring.scorer import ScoredBatch, Scorer
from ..scoring.shaping import AlertShaper
from ..scoring.spot import UNITS, StreamingThreshold, TailStart
from ..storage.artifact import Artifact

__all__ = [
    "DetectorOptions",
    "LiveModel",
    "alert_shaper",
    "build_detector",
    "build_scorer",
    "int8_reduce_range",
    "quality_monitor",
    "resolve_backend",
    "streaming_threshold",
    "window_store",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DetectorOptions:
    """How a deployment runs the forward pass (docs/operations.md, "GPU inference")."""

    device: str = "auto"
    backend: Literal["auto", "torch", "onnx"] = "torch"  # auto: resolve_backend decides
    precision: Precision | Literal["int8"] = "fp32"  # int8: ONNX Runtime's (int8_graph)
    compile: bool = False
    cuda_graphs: bool = False
    max_batch: int = MAX_BATCH  # most windows per forward pass
    threads: int = 2  # ONNX Runtime's intra-op threads (torch's are set process-wide)

    @classmethod
    def from_settings(cls, service: ServiceSettings) -> DetectorOptions:
        return cls(
            device=service.device,
            backend=service.backend,
            precision=service.precision,
            compile=service.compile,
            # a forward pass per batch: chunks no smaller than a batch
            max_batch=max(MAX_BATCH, service.max_batch_records),
            threads=service.torch_threads,
        )


def resolve_backend(artifact: Artifact, o: DetectorOptions) -> tuple[str, str]:
    """``(backend, why)``: ``o.backend`` unless it is ``auto``, which takes the fastest the
    machine has for this model: PyTorch on a GPU, ONNX Runtime on the CPU where it is installed
    and can run the model, eager PyTorch otherwise."""
    if o.backend != "auto":
        return o.backend, "as configured"
    if artifact.spec.scoring.latent_mode in SAMPLED_MODES:
        return "torch", f"latent_mode {artifact.spec.scoring.latent_mode} samples in PyTorch"
    if o.precision == "int8":
        return "onnx", "precision int8 is ONNX Runtime's dynamic quantisation, on the CPU"
    if pick_device(o.device).type != "cpu":
        return "torch", f"PyTorch on {pick_device(o.device)}"
    if o.precision != "fp32" or o.compile or o.cuda_graphs:
        return "torch", "precision/compile/cuda_graphs are PyTorch's"
    if all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime")):
        return "onnx", "ONNX Runtime on the CPU"
    return "torch", "eager PyTorch on the CPU (pip install 'stream-vae[onnx]' for ORT)"


def int8_reduce_range() -> bool:
    """Whether int8 weights take 7 bits on this CPU (:func:`int8_graph`): on x86 without VNNI
    (AVX2 only), where ONNX Runtime's int8 kernels can saturate. On one such CPU (AMD EPYC,
    AVX2) the test model's hybrid score moved by 0.43 × its threshold with 8 bits and 0.02 ×
    with 7. Unknown (no /proc/cpuinfo) or not x86: 8 bits."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def build_detector(artifact: Artifact, options: DetectorOptions | None = None) -> Detector:
    """The forward pass of ``artifact`` on torch (CPU or CUDA), or on the CPU under ONNX Runtime
    (``backend="auto"``: :func:`resolve_backend`).

    ``precision``, ``compile`` and ``cuda_graphs`` are :class:`TorchBackend`'s options; the onnx
    backend refuses them.
    """
    o = options or DetectorOptions()
    backend, why = resolve_backend(artifact, o)
    if o.backend == "auto":
        log.info(
            "forward pass of %s: %s (%s)",
            artifact.version,
            backend,
            why,
            extra={"model_version": artifact.version},
        )
    impl: Backend
    if backend == "onnx":
        if o.precision not in ("fp32", "int8") or o.compile or o.cuda_graphs:
            raise ConfigError(
                "precision bf16/fp16, compile and cuda_graphs apply to the torch backend only"
            )
        buf = io.BytesIO()
        onnx_graph(artifact.model(), buf)
        reduce_range = o.precision == "int8" and int8_reduce_range()
        if reduce_range:
            log.warning(
                "precision int8 on a CPU without VNNI: weights in 7 bits; on such a CPU int8 "
                "ran at 0.85x fp32 at batch 256 and moved ASD's smoothed scores by up to 0.6x "
                "the threshold (docs/operations.md): fp32 is likely the better choice here"
            )
        try:
            graph = (
                int8_graph(buf.getvalue(), reduce_range=reduce_range)
                if o.precision == "int8"
                else buf.getvalue()
            )
            impl = OrtBackend(graph, o.threads)
        except ImportError:
            raise ArtifactError(
                "the onnx backend needs onnxruntime: pip install 'stream-vae[onnx]'"
            ) from None
    else:
        if o.precision == "int8":
            raise ConfigError("precision int8 is ONNX Runtime's: set backend to onnx or auto")
        impl = TorchBackend(
            artifact.model(),
            pick_device(o.device),
            precision=o.precision,
            compile=o.compile,
            cuda_graphs=o.cuda_graphs,
        )
    return Detector.from_spec(
        impl, artifact.scaler, artifact.spec, o.max_batch, reference=artifact.reference
    )


def window_store(
    artifact: Artifact, *, idle_ttl_s: float | None = None, max_series: int | None = None
) -> WindowStore:
    """An empty window store that cuts the windows ``artifact`` was trained on (size, stride,
    gaps, calendar channels), with the deployment's bounds on the series held."""
    w = artifact.spec.window
    return WindowStore(
        artifact.vae_config.window,
        len(artifact.feature_names),
        stride=w.stride,
        max_gap_s=w.max_gap_s,
        gap_policy=w.gap_policy,
        max_fill=w.max_fill,
        idle_ttl_s=idle_ttl_s,
        max_series=max_series,
        calendar=w.calendar,
    )


def build_scorer(artifact: Artifact, alerts: AlertSettings | None = None) -> Scorer:
    """A fresh per-series scorer for ``artifact``: its score and threshold, the deployment's
    episode shaping."""
    a = alerts or AlertSettings()
    return Scorer(
        artifact.hybrid,
        artifact.threshold,
        artifact.feature_names,
        artifact.version,
        ema_beta=artifact.spec.scoring.ema_beta,
        hysteresis=a.hysteresis,
        close_after=a.close_after,
        cooldown=a.cooldown,
        top_k=a.top_k,
        streaming=None if a.threshold_mode == "static" else streaming_threshold(artifact, a),
        quality=quality_monitor(artifact, a),
        shaper=alert_shaper(a),
        stale=stale_monitor(a),
        clusters=EpisodeClusters(a.cluster_similarity) if a.cluster_similarity > 0 else None,
        novelty=novelty_history(a),
        novelty_gate=a.novelty_gate,
        settle=settle_level(artifact, a),
    )


def settle_level(
    artifact: Artifact, alerts: AlertSettings
) -> tuple[float, npt.NDArray[np.float32]] | None:
    """(level, the features' scale) of the newest-point check that ends an episode when the
    data settles (None: not asked for, or a model trained before it has no level)."""
    settle = artifact.calibration.details.get("settle")
    if not alerts.close_on_settle or settle is None:
        return None
    level = float(settle["level"]) * alerts.settle_factor
    return level, artifact.scaler.std[: len(artifact.feature_names)]


def stale_monitor(alerts: AlertSettings) -> StaleMonitor | None:
    """The ``stale`` check the deployment asks for (None: not asked for), by stream time or by
    the wall clock."""
    if "stale" not in alerts.quality_kinds:
        return None
    clock = time.time if alerts.stale_clock == "wall" else None
    return StaleMonitor(alerts.stale_factor, clock=clock)


def novelty_history(alerts: AlertSettings) -> SeriesNovelty | None:
    """The per-series history the novelty gate measures a rise against (None: no gate)."""
    if alerts.novelty_gate == 0:
        return None
    return SeriesNovelty(alerts.novelty_window, censor=alerts.novelty_censor)


def alert_shaper(alerts: AlertSettings) -> AlertShaper | None:
    """The deployment's fleet incidents and alert budget (None: neither is on)."""
    if alerts.incident_share == 0 and alerts.max_opens_per_hour == 0:
        return None
    return AlertShaper(
        max_opens_per_hour=alerts.max_opens_per_hour,
        incident_share=alerts.incident_share,
        incident_window_s=alerts.incident_window_s,
        incident_min_series=alerts.incident_min_series,
        top_k=alerts.top_k,
    )


def quality_monitor(artifact: Artifact, alerts: AlertSettings) -> QualityMonitor | None:
    """The data-quality checks the deployment asks for, against ``artifact``'s training data
    (None: none asked for, or a model trained before they existed)."""
    ref = artifact.reference.quality
    kinds = [k for k in alerts.quality_kinds if k in QUALITY_KINDS]  # the windows' checks
    if ref is None or not kinds:
        return None
    return QualityMonitor(
        ref,
        kinds=kinds,
        flatline_ratio=alerts.flatline_ratio,
        flatline_windows=alerts.flatline_windows,
        range_margin=alerts.range_margin,
        close_after=alerts.close_after,
    )


def streaming_threshold(artifact: Artifact, alerts: AlertSettings) -> StreamingThreshold:
    """The per-series streaming threshold of ``artifact``, started from its calibration."""
    start = artifact.calibration.details.get("stream")
    if start is None or start.get("units") != UNITS:
        # an ArtifactError: a hot swap to such a model is refused (and logged), not a crash
        raise ArtifactError(
            f"model {artifact.version} has no streaming-threshold start in its calibration "
            "(it was trained before alerts.threshold_mode existed, or had too few held-out "
            "windows to fit one): retrain it, or set alerts.threshold_mode = 'static'"
        )
    tail = artifact.calibration.target_fpr * alerts.threshold_tail_factor
    if tail >= 0.5:  # as above: a swap to such a model is refused, the service goes on
        raise ArtifactError(
            f"model {artifact.version}: its target_fpr {artifact.calibration.target_fpr} × "
            f"alerts.threshold_tail_factor {alerts.threshold_tail_factor} is {tail}, not below 0.5"
        )
    return StreamingThreshold(
        TailStart.from_dict(start),
        artifact.threshold,
        tail,
        depth=alerts.threshold_depth,
        floor=alerts.threshold_floor,
        ceiling=alerts.threshold_ceiling,
    )


class LiveModel:
    """The state and the model that score a stream for one deployment.

    Parameters
    ----------
    artifact
        The version to serve first.
    options
        How the forward pass runs (default: torch on the best device, float32).
    alerts
        The deployment's episode shaping (default: :class:`~stream_vae.config.AlertSettings`).
    idle_ttl_s, max_series
        The deployment's bounds on the series held (see :class:`WindowStore`).
    """

    def __init__(
        self,
        artifact: Artifact,
        options: DetectorOptions | None = None,
        *,
        alerts: AlertSettings | None = None,
        idle_ttl_s: float | None = None,
        max_series: int | None = None,
    ) -> None:
        self.options = options or DetectorOptions()
        self.alerts = alerts or AlertSettings()
        self.store = window_store(artifact, idle_ttl_s=idle_ttl_s, max_series=max_series)
        self.artifact = artifact
        self.detector = build_detector(artifact, self.options)
        self.scorer = build_scorer(artifact, self.alerts)

    @classmethod
    def from_settings(
        cls, artifact: Artifact, service: ServiceSettings, alerts: AlertSettings
    ) -> LiveModel:
        """As a deployment configures it: its device and backend, bounds and episodes."""
        return cls(
            artifact,
            DetectorOptions.from_settings(service),
            alerts=alerts,
            idle_ttl_s=service.idle_ttl_s,
            max_series=service.max_series,
        )

    @property
    def version(self) -> str:
        return self.artifact.version

    # -- the path --------------------------------------------------------------------------
    def prepare(self, batch: RecordBatch) -> ReadyWindows:
        """Records in arrival order → the windows they completed (n, W, c)."""
        return self.store.push_many(batch)

    def infer(self, ready: ReadyWindows) -> ScoreParts:
        """The forward pass (the part a service runs in a worker thread)."""
        return self.detector.infer(ready.values)  # (n, W, c) → ScoreParts

    def score(self, ready: ReadyWindows, parts: ScoreParts) -> ScoredBatch:
        """Scores of the windows, and the alert events they caused."""
        return self.scorer.update(ready.keys, ready.ts, parts, ready.values)

    def step(self, batch: RecordBatch) -> tuple[ReadyWindows, ScoredBatch]:
        """:meth:`prepare`, :meth:`infer` and :meth:`score` in one call: the windows and their
        scores (row-aligned; the retraining policy learns from both)."""
        ready = self.prepare(batch)
        return ready, self.score(ready, self.infer(ready))

    def process(self, batch: RecordBatch) -> ScoredBatch:
        """Records → the scores of the windows they completed, and the alert events."""
        return self.step(batch)[1]

    def steps(
        self, batch: RecordBatch, chunk: int = 2048
    ) -> Iterator[tuple[ReadyWindows, ScoredBatch]]:
        """:meth:`step` over a long batch in arrival-order chunks (one forward pass each)."""
        for i in range(0, len(batch), chunk):
            yield self.step(batch.slice(i, i + chunk))

    def stream(self, batch: RecordBatch, chunk: int = 2048) -> Iterator[ScoredBatch]:
        """Process a long batch in arrival-order chunks (one forward pass each)."""
        for _, scored in self.steps(batch, chunk):
            yield scored

    # -- a new version ---------------------------------------------------------------------
    def install(
        self, artifact: Artifact, ts: float, detector: Detector | None = None
    ) -> tuple[Alert, ...]:
        """Serve ``artifact`` from now on (between two batches); returns the alerts that close
        the old version's episodes at stream time ``ts``.

        An episode and its ``alert_id`` belong to the version that opened it, so open episodes
        close with reason ``model_swap``; the EMA restarts, because the new model's scores are
        on its own scale; each series' streaming threshold carries over, relative to the
        calibration; the windows carry over, so features, window size and calendar must
        match (:class:`ArtifactError` otherwise, and nothing changes). ``detector`` is one
        already built for ``artifact`` (a service builds it off its event loop).
        """
        why = artifact.serves_like(self.artifact)
        if why is not None:
            raise ArtifactError(f"cannot swap {self.version} → {artifact.version}: {why}")
        new_detector = detector or build_detector(artifact, self.options)
        new_scorer = build_scorer(artifact, self.alerts)
        closed = self.scorer.close(ts, "model_swap")
        new_scorer.carry(self.scorer)
        self.artifact, self.detector, self.scorer = artifact, new_detector, new_scorer
        return closed

    # -- per-series state (stream_vae.core.state.SeriesState) ------------------------------
    def open_series(self, *, all_kinds: bool = False) -> frozenset[str]:
        """Series in an anomaly episode now (``all_kinds``: an episode of any kind)."""
        return self.scorer.open_series(all_kinds=all_kinds)

    def series(self) -> frozenset[str]:
        return self.store.series() | self.scorer.series()

    def drop(self, series: Iterable[str]) -> None:
        series = list(series)
        self.store.drop(series)
        self.scorer.drop(series)

    def nbytes(self) -> int:
        return self.store.nbytes() + self.scorer.nbytes()

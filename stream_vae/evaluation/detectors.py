"""The detectors an evaluation compares, each behind one call: learn from a series' training
rows, then score its test rows one after the other (causal: a row's score uses that row and
the rows before it, never a later one).

* ``stream-vae`` — the product: records → :class:`~stream_vae.runtime.live.LiveModel`
  (WindowStore → model → scorer → episodes), exactly the service's path; the score is the
  smoothed hybrid score and the predictions are its alert episodes (calibrated threshold, no
  labels). From the same model and pass, the ablation of the hybrid score:
  ``vae-recon`` (reconstruction term only), ``vae-latent`` (latent term only, in the model's
  ``scoring.latent_mode``) and, for a model with a linear component, ``vae-linear`` (the
  residual off the normal windows' principal subspace), each smoothed by the same per-series
  EMA.
  Beside it, ``stream-vae-dspot`` (or ``stream-vae-static`` when the settings ask for the
  streaming threshold): the same smoothed scores as they alert under the other threshold mode.
* ``stream-vae-modes`` — one training of the product, scored in each latent mode
  (:data:`LATENT_MODES`): ``vae-hybrid-<mode>`` is the product with that mode (its hybrid,
  weights and threshold refitted), ``vae-latent-<mode>`` that latent term alone. Asked for by
  name: the ablation of the latent modes in one command.
* ``stream-vae-retrain`` — the product with drift-triggered retraining on (the service's
  :class:`~stream_vae.lifecycle.policy.RetrainPolicy`, inline); its score is the smoothed
  score over the threshold of the version live at that row.
* ``lstm-ae`` — the same network trained as a plain autoencoder (β = 0), scored by its
  reconstruction error through the same pipeline.
* ``pca`` — reconstruction error of the same windows by the principal components that explain
  90% of the training windows' variance.
* ``hst`` — river's HalfSpaceTrees on each row (features min-max scaled on the training rows),
  learning as it scores.
* ``random`` — uniform noise (the floor every metric should clear).

The pipeline is fed in chunks; the contract suite (``tests/contracts``) checks that chunked and
one-record-at-a-time feeding give the same scores and alerts.

Examples
--------
>>> sorted(DETECTORS)
['hst', 'lstm-ae', 'pca', 'random', 'stream-vae', 'stream-vae-modes', 'stream-vae-retrain']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..config import Settings
from ..core.records import RecordBatch
from ..errors import ArtifactError
from ..lifecycle.policy import RetrainPolicy
from ..runtime.live import DetectorOptions, LiveModel, novelty_history, streaming_threshold
from ..scoring.alerts import Alert
from ..scoring.ema import SeriesEMA
from ..scoring.episodes import EpisodeTracker
from ..storage.artifact import Artifact
from ..training.build import rescore_artifact, train_artifact
from ..training.gate import retrain
from .datasets import LabelledSeries
from .novelty import carry_novelty, novelty_stage

__all__ = [
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "LATENT_MODES",
    "Output",
    "run_detector",
    "score_product",
    "train_product",
]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

# PCA keeps the components that explain this share of the training windows' variance: the
# usual choice (TSB-AD's PCA baseline keeps enough for 90-95%).
_PCA_VARIANCE = 0.9
_PCA_MAX_WINDOWS = 20_000
# HalfSpaceTrees' defaults, except a window of 250 rows (a day of 5-minute data is 288) and
# trees of height 10, not 15: each window swap walks every node, and 25 trees of 2^15 nodes
# cost ~12 ms a row here; it warms up on the last rows of the training part only (it forgets
# beyond its window anyway).
_HST_HEIGHT = 10
_HST_WINDOW = 250
_HST_WARMUP = 4 * _HST_WINDOW
# The test rows are fed in chunks of this many (the contract suite checks that chunking does not
# change a score): one forward pass per chunk.
_CHUNK = 512


@dataclass(frozen=True, slots=True)
class Output:
    """Per test row: ``scores`` (n,), higher = more anomalous; ``predictions`` (n,) at the
    detector's own threshold, when it has one; ``top_features`` (n, k): the feature indices
    the alert episode covering the row blamed when it opened, most to least (−1: none)."""

    scores: F64
    predictions: npt.NDArray[np.bool_] | None = None
    top_features: npt.NDArray[np.int64] | None = None
    threshold: float | None = None  # on ``scores``, where the detector has its own
    # the product's per-row novelty in [0, 1] (stream_vae.evaluation.novelty): what NAB scores
    novelty: F64 | None = None


def _as_batch(series: LabelledSeries, part: str) -> RecordBatch:
    x = series.train if part == "train" else series.test
    ts = series.train_ts if part == "train" else series.ts
    return RecordBatch((series.name,) * len(x), ts, x.astype(np.float32))


class _Episodes:
    """Alert events → per-row predictions (the rows an episode covers) and the features it
    blamed when it opened."""

    def __init__(self, series: LabelledSeries, top_k: int) -> None:
        n = len(series.test)
        self._series = series
        self._index = {f: i for i, f in enumerate(series.feature_names)}
        self.predictions = np.zeros(n, dtype=bool)
        self.top = np.full((n, max(top_k, 1)), -1, dtype=np.int64)
        self._opened: tuple[int, list[int]] | None = None

    def feed(self, alerts: Iterable[Alert]) -> None:
        """The anomaly alerts' episodes (a data-quality alert is of another kind, with episodes
        of its own: not in these predictions)."""
        for a in alerts:
            if a.kind == "anomaly":
                self.event(a.ts, a.event, [self._index[f] for f, _ in a.top_features])

    def event(self, ts: float, event: str, blamed: list[int]) -> None:
        """One open or close at stream time ``ts``; an open blames these feature indices."""
        row = int(self._series.test_rows([ts])[0])
        if event == "open":
            self._opened = (row, blamed[: self.top.shape[1]])
        elif self._opened is not None:
            _mark(self.predictions, self.top, self._opened, row)
            self._opened = None

    def finish(self) -> None:
        if self._opened is not None:
            _mark(self.predictions, self.top, self._opened, len(self.predictions))
            self._opened = None


def _stream_vae(series: LabelledSeries, settings: Settings, seed: int) -> dict[str, Output]:
    return score_product(series, train_product(series, settings, seed), settings)


def _stream_vae_modes(series: LabelledSeries, settings: Settings, seed: int) -> dict[str, Output]:
    """One training, scored in every latent mode: ``vae-hybrid-<mode>`` (the product with that
    mode: its hybrid, weights and threshold refitted on the same training rows) and
    ``vae-latent-<mode>`` (that latent term alone)."""
    art = train_product(series, settings, seed)
    seeded = _seeded(settings, seed)
    modes = [m for m in LATENT_MODES if m != "iwae" or art.spec.model.gaussian_output]
    out: dict[str, Output] = {}
    for mode in modes:
        s = seeded.model_copy(
            update={"scoring": seeded.scoring.model_copy(update={"latent_mode": mode})}
        )
        scored = (
            art
            if mode == art.spec.scoring.latent_mode
            else rescore_artifact(art, _as_batch(series, "train"), s)
        )
        rows = score_product(series, scored, s)
        out[f"vae-hybrid-{mode}"] = rows["stream-vae"]
        out[f"vae-latent-{mode}"] = rows["vae-latent"]
    return out


def score_product(series: LabelledSeries, art: Artifact, settings: Settings) -> dict[str, Output]:
    """The test rows through the service's path for ``art``: the product's row and its
    ablations."""
    n = len(series.test)
    cols = {k: np.full(n, np.nan) for k in ("smoothed", "recon", "latent", "linear", "novelty")}
    live = _live(art, settings)
    novelty = novelty_stage(settings.evaluation)
    episodes = _Episodes(series, settings.alerts.top_k)
    stream_ts, stream_smoothed, stream_settled = [], [], []  # every window, in stream order
    for out in live.stream(_as_batch(series, "test"), _CHUNK):
        stream_ts.append(out.ts)
        stream_smoothed.append(out.smoothed)
        if out.settled is not None:
            stream_settled.append(out.settled)
        rows = series.test_rows(out.ts)
        cols["smoothed"][rows] = out.smoothed
        cols["recon"][rows] = out.recon
        cols["latent"][rows] = out.latent
        if out.linear is not None:
            cols["linear"][rows] = out.linear
        cols["novelty"][rows] = novelty.update(out.keys, out.smoothed)
        episodes.feed(out.alerts)
    episodes.finish()
    stride = art.spec.window.stride
    cols = {k: _newly_covered(v, stride) for k, v in cols.items()}
    beta = art.spec.scoring.ema_beta
    linear = (
        {"vae-linear": Output(_ema(_fill(cols["linear"]), beta))} if art.hybrid.has_linear else {}
    )
    novelty_rows = np.nan_to_num(cols["novelty"])
    return {
        "stream-vae": Output(
            _fill(cols["smoothed"]),
            episodes.predictions,
            episodes.top,
            art.calibration.threshold,
            novelty_rows,
        ),
        **_other_threshold(
            series, art, settings, stream_ts, stream_smoothed, stream_settled, novelty_rows
        ),
        "vae-recon": Output(_ema(_fill(cols["recon"]), beta)),
        "vae-latent": Output(_ema(_fill(cols["latent"]), beta)),
        **linear,
    }


def _other_threshold(
    series: LabelledSeries,
    art: Artifact,
    settings: Settings,
    ts: list[F64],
    smoothed: list[F64],
    settled: list[npt.NDArray[np.bool_]],
    novelty: F64,
) -> dict[str, Output]:
    """The product as it alerts under the other threshold mode (``stream-vae-dspot`` when the
    settings say ``static``, and the reverse): the same smoothed scores and per-row novelty
    (so its swept NAB score is the product's), its own thresholds and episodes. A model with
    no streaming-threshold start (too few held-out windows: a short NAB file) keeps its
    calibrated threshold in the ``dspot`` row, logged, so that the row covers every series
    (NAB scores a detector only on every file)."""
    mode = "dspot" if settings.alerts.threshold_mode == "static" else "static"
    a = settings.alerts.model_copy(update={"threshold_mode": mode})
    t, s = np.concatenate(ts), np.concatenate(smoothed)
    keys = [series.name] * len(t)
    thr = np.full(len(t), art.threshold)
    if mode == "dspot":
        try:
            thr = streaming_threshold(art, a).update(keys, s)
        except ArtifactError as why:
            log.warning("%s: the dspot row keeps the calibrated threshold: %s", series.name, why)
    gate = novelty_history(a)
    may_open = None if gate is None else gate.update(keys, s) >= a.novelty_gate
    episodes = _Episodes(series, a.top_k)
    tracker = EpisodeTracker(a.hysteresis, a.close_after, a.cooldown)
    done = np.concatenate(settled) if settled else None
    for e in tracker.update(keys, t, s, thr, may_open, done):
        episodes.event(e.ts, e.event, [])
    episodes.finish()
    scores = np.full(len(series.test), np.nan)
    scores[series.test_rows(t)] = s
    scores = _newly_covered(scores, art.spec.window.stride)
    return {f"stream-vae-{mode}": Output(_fill(scores), episodes.predictions, novelty=novelty)}


def _stream_vae_retrain(series: LabelledSeries, settings: Settings, seed: int) -> dict[str, Output]:
    """The product with its retraining policy on (the service's
    :class:`~stream_vae.lifecycle.policy.RetrainPolicy`), run inline: drift → retrain → gate →
    swap between chunks (:meth:`LiveModel.install`, the service's swap). The score is the
    smoothed score over the threshold of the version live at that row (threshold 1); the
    novelty history carries over a swap, rescaled to the new threshold."""
    art = train_product(series, settings, seed)
    live = _live(art, settings)
    policy = RetrainPolicy.for_model(
        art, settings.drift, settings.retrain, seed=settings.service.seed
    )
    novelty = novelty_stage(settings.evaluation)
    ratio = np.full(len(series.test), np.nan)
    novelty_rows = np.zeros(len(series.test))
    episodes = _Episodes(series, settings.alerts.top_k)
    n_swaps = 0
    for ready, out in live.steps(_as_batch(series, "test"), _CHUNK):
        rows = series.test_rows(out.ts)
        ratio[rows] = out.smoothed / live.scorer.threshold
        novelty_rows[rows] = novelty.update(out.keys, out.smoothed)
        episodes.feed(out.alerts)
        policy.offer(ready, out, live.scorer, 1)
        policy.watch(ready, out)
        job = policy.due(float(out.ts.max())) if len(out) else None
        if job is None:
            continue
        threads = torch.get_num_threads()
        result = retrain(live.artifact, job.sample, settings, trigger=job.trigger)
        torch.set_num_threads(threads)  # the job sets its own budget (retrain.torch_threads)
        if not result.gate.passed:
            log.info("%s: candidate rejected: %s", series.name, "; ".join(result.gate.reasons))
            policy.rejected(job)
            continue
        old_threshold = live.scorer.threshold
        episodes.feed(live.install(result.candidate, float(out.ts.max())))
        ratio_new = live.scorer.threshold / old_threshold if old_threshold > 0 else math.nan
        novelty = carry_novelty(novelty, ratio_new)
        policy.swapped()
        n_swaps += 1
    episodes.finish()
    log.info("%s: %d model swaps with retraining on", series.name, n_swaps)
    return {
        "stream-vae-retrain": Output(
            _fill(ratio), episodes.predictions, episodes.top, 1.0, novelty_rows
        )
    }


def _lstm_ae(series: LabelledSeries, settings: Settings, seed: int) -> dict[str, Output]:
    ae = settings.model_copy(
        update={
            "train": settings.train.model_copy(update={"beta": 0.0, "free_bits": 0.0}),
            # reconstruction only: no latent reference, no linear component to fit
            "scoring": settings.scoring.model_copy(
                update={"alpha": 1.0, "latent_mode": "kl", "linear_variance": 0.0}
            ),
        }
    )
    art = train_product(series, ae, seed)
    scores = np.full(len(series.test), np.nan)
    for out in _live(art, ae).stream(_as_batch(series, "test"), _CHUNK):
        scores[series.test_rows(out.ts)] = out.smoothed
    return {"lstm-ae": Output(_fill(scores))}


def _pca(series: LabelledSeries, settings: Settings, seed: int) -> dict[str, Output]:
    w = settings.window.size
    mean = series.train.mean(axis=0)
    std = np.maximum(series.train.std(axis=0), settings.train.std_floor)
    train = _windows((series.train - mean) / std, w)  # (m, W·d)
    if len(train) > _PCA_MAX_WINDOWS:
        rng = np.random.default_rng(seed)
        train = train[rng.choice(len(train), _PCA_MAX_WINDOWS, replace=False)]
    centre = train.mean(axis=0)
    _, sv, vt = np.linalg.svd(train - centre, full_matrices=False)
    share = np.cumsum(sv**2) / max(float((sv**2).sum()), 1e-12)
    k = int(np.searchsorted(share, _PCA_VARIANCE) + 1)
    basis = vt[:k]  # (k, W·d)
    # the test rows' windows may reach back into the training rows (the stream is continuous)
    both = (np.concatenate([series.train[-(w - 1) :], series.test]) - mean) / std
    x = _windows(both, w) - centre  # (n, W·d): one window ending at each test row
    err = ((x - (x @ basis.T) @ basis) ** 2).mean(axis=1)
    return {"pca": Output(err)}


def _hst(series: LabelledSeries, settings: Settings, seed: int) -> dict[str, Output]:
    from river.anomaly import HalfSpaceTrees

    lo, hi = series.train.min(axis=0), series.train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    # river's type hints do not cover these methods
    model: Any = HalfSpaceTrees(n_trees=25, height=_HST_HEIGHT, window_size=_HST_WINDOW, seed=seed)
    names = [str(i) for i in range(series.n_features)]

    def row(x: F64) -> dict[str, float]:
        return dict(zip(names, np.clip((x - lo) / span, 0.0, 1.0).tolist(), strict=True))

    for x in series.train[-_HST_WARMUP:]:
        model.learn_one(row(x))
    scores = np.empty(len(series.test))
    for i, x in enumerate(series.test):
        r = row(x)
        scores[i] = model.score_one(r)
        model.learn_one(r)
    return {"hst": Output(scores)}


def _random(series: LabelledSeries, settings: Settings, seed: int) -> dict[str, Output]:
    return {"random": Output(np.random.default_rng(seed).uniform(size=len(series.test)))}


DETECTORS: dict[str, Callable[[LabelledSeries, Settings, int], dict[str, Output]]] = {
    "stream-vae": _stream_vae,
    "stream-vae-retrain": _stream_vae_retrain,
    "stream-vae-modes": _stream_vae_modes,
    "lstm-ae": _lstm_ae,
    "pca": _pca,
    "hst": _hst,
    "random": _random,
}

# What `stream-vae evaluate` runs unless told: the retraining variant costs a training run per
# drift event, and the modes' ablation a rescoring per mode (the sampled ones decode 16 codes a
# window), so they are asked for by name (--detectors stream-vae stream-vae-retrain).
DEFAULT_DETECTORS = tuple(
    d for d in DETECTORS if d not in ("stream-vae-retrain", "stream-vae-modes")
)
# The latent modes `stream-vae-modes` scores (iwae only for a model with the Gaussian head).
LATENT_MODES = ("kl", "aggregate", "knn", "knn_whitened", "recon_prob", "iwae")


def run_detector(
    name: str, series: LabelledSeries, settings: Settings, seed: int = 0
) -> dict[str, Output]:
    """Learn from ``series.train`` and score ``series.test``; ``stream-vae`` also returns its
    ablations (``vae-recon``, ``vae-latent``)."""
    return DETECTORS[name](series, settings, seed)


def _seeded(settings: Settings, seed: int) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update={"seed": seed})})


def train_product(series: LabelledSeries, settings: Settings, seed: int) -> Artifact:
    """Train and calibrate on the series' training rows, as `stream-vae train` does."""
    return train_artifact(
        _as_batch(series, "train"),
        series.feature_names,
        _seeded(settings, seed),
        device=settings.service.device,
        progress=False,
    )


def _live(art: Artifact, settings: Settings) -> LiveModel:
    """The service's path for one series: its forward pass (device, backend, precision), its
    episode shaping."""
    return LiveModel(art, DetectorOptions.from_settings(settings.service), alerts=settings.alerts)


def _windows(x: F64, w: int) -> F64:
    """(n, d) → (n − w + 1, w·d): every window of ``w`` consecutive rows, flattened."""
    view = np.lib.stride_tricks.sliding_window_view(x, w, axis=0)  # (n−w+1, d, w)
    return np.ascontiguousarray(view.transpose(0, 2, 1)).reshape(len(view), -1)


def _mark(
    predictions: npt.NDArray[np.bool_],
    top: npt.NDArray[np.int64],
    opened: tuple[int, list[int]],
    end: int,
) -> None:
    """An episode covers rows [start, end) and blames what it blamed when it opened."""
    start, blamed = opened
    predictions[start:end] = True
    top[start:end, : len(blamed)] = blamed


def _newly_covered(scores: F64, stride: int) -> F64:
    """With ``window.stride`` S > 1, a window is scored every S rows: its score also goes to
    the S − 1 rows before its last, which it is the first window to cover (rows no window has
    covered yet stay NaN).

    >>> _newly_covered(np.array([np.nan, np.nan, 1.0, np.nan, 2.0, np.nan]), 2).tolist()
    [nan, 1.0, 1.0, 2.0, 2.0, nan]
    """
    if stride == 1:
        return scores
    out = scores.copy()
    scored = np.flatnonzero(np.isfinite(scores))
    for back in range(1, stride):
        rows = scored - back
        rows = rows[rows >= 0]
        rows = rows[np.isnan(out[rows])]
        out[rows] = scores[rows + back]
    return out


def _fill(scores: F64) -> F64:
    """Rows with no window yet (the first W − 1) get the lowest score seen."""
    finite = scores[np.isfinite(scores)]
    return np.where(np.isfinite(scores), scores, finite.min() if len(finite) else 0.0)


def _ema(x: F64, beta: float) -> F64:
    return SeriesEMA(beta).update(["s"] * len(x), x)

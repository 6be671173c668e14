"""A deterministic, labelled fleet of multivariate telemetry series.

Every series mixes three latent factors (a "daily" sine with a period of 60-200 steps, a slower
sine 4-8 times longer, and a smooth AR(1) drift) into ``n_features`` channels through its own
random mixing matrix, so channels are cross-correlated. Offsets and scales are drawn per channel
for the whole fleet and perturbed a little per series: series differ, but one model (and one
scaler) can learn the fleet. Gaussian noise of ``noise`` times the channel scale is added last.

Anomalies are injected only at rows ``>= anomaly_start`` (the head is clean training data). Their
number is deterministic: ``round(n_anomalies_per_series * n_series)`` in the fleet, dealt so every
series gets the floor or the ceiling of the rate, with kinds cycled through ``kinds`` (so a fleet
of 10 series at rate 1 holds every kind twice). Within a series, injections never overlap and are
at least :data:`MIN_GAP` rows apart, so each one is its own episode.
Their lengths, magnitudes and effects are in :mod:`stream_vae.demo.faults`.

The normal data depend only on ``seed``, the sizes, ``regime_change_at`` and ``noise``:
``generate_fleet(..., n_anomalies_per_series=0)`` with the same arguments is the clean
counterpart of a fleet, row for row.

Examples
--------
>>> fleet = generate_fleet(n_series=4, n_features=3, n_steps=500, seed=1)
>>> fleet.values.shape, fleet.values.dtype.name, fleet.labels.shape
((4, 500, 3), 'float32', (4, 500))
>>> len(fleet.injections), min(i.start for i in fleet.injections) >= 300
(4, True)
>>> sids, ts, values, labels = fleet.interleaved()
>>> sids[:5], values.shape
(('machine-000', 'machine-001', 'machine-002', 'machine-003', 'machine-000'), (2000, 3))
>>> window_labels(np.array([0, 0, 1, 0, 0], bool), window=2, mode="any").tolist()
[False, True, True, False]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, check_shape
from .faults import MIN_GAP, CleanSeries, inject, place, window_labels

__all__ = ["KINDS", "MIN_GAP", "Fleet", "Injection", "generate_fleet", "window_labels"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

KINDS = ("spike", "level_shift", "variance_burst", "stuck_sensor", "correlation_break")

# Latent weights in the mixing (daily sine, slow sine, AR drift): the daily cycle dominates.
_LATENT_WEIGHTS = np.array([1.0, 0.6, 0.4])
# Per-series deviation from the fleet's mixing matrix (whose entries are ~N(0, 1)).
_MIXING_JITTER = 0.2
_AR_PHI = 0.98  # smooth drift: correlation time ~ 50 rows
_REGIME_SHIFT_STDS = 1.5
_REGIME_PERIOD_CHANGE = 0.2

_FEATURE_BASE = ("temp", "pressure", "vibration", "current", "voltage", "flow", "rpm", "humidity")


@dataclass(frozen=True, slots=True)
class Injection:
    """One injected anomaly: rows ``start:end`` (end exclusive) of one series.

    For ``correlation_break``, ``features[0]`` is the channel whose seasonal part was replaced and
    the others are the partners it used to track.
    """

    series_index: int
    series_id: str
    kind: str
    start: int
    end: int
    features: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Fleet:
    """A labelled fleet: ``values`` (n_series, n_steps, n_features) on shared timestamps ``ts``."""

    series_ids: tuple[str, ...]
    feature_names: tuple[str, ...]
    ts: F64  # (T,) epoch seconds
    values: F32  # (n, T, d)
    labels: Bools  # (n, T) True inside an injection
    injections: tuple[Injection, ...]

    def __post_init__(self) -> None:
        n, d = len(self.series_ids), len(self.feature_names)
        check_shape("Fleet.ts", self.ts.shape, (None,))
        n_steps = self.ts.shape[0]
        check_shape("Fleet.values", self.values.shape, (n, n_steps, d))
        check_shape("Fleet.labels", self.labels.shape, (n, n_steps))

    @property
    def n_series(self) -> int:
        return len(self.series_ids)

    @property
    def n_steps(self) -> int:
        return int(self.ts.shape[0])

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def split(self, row: int) -> tuple[Fleet, Fleet]:
        """Split by time into rows ``[0, row)`` and ``[row, n_steps)`` (copies).

        Injections are re-indexed to their part; one that straddles ``row`` is clipped into both.
        """
        if not 0 <= row <= self.n_steps:
            raise ConfigError(f"Fleet.split: row must be in [0, {self.n_steps}], got {row}")
        return self._rows(0, row), self._rows(row, self.n_steps)

    def _rows(self, lo: int, hi: int) -> Fleet:
        clipped = tuple(
            replace(i, start=max(i.start, lo) - lo, end=min(i.end, hi) - lo)
            for i in self.injections
            if i.start < hi and i.end > lo
        )
        sl = slice(lo, hi)
        return Fleet(
            self.series_ids,
            self.feature_names,
            self.ts[sl].copy(),
            self.values[:, sl].copy(),
            self.labels[:, sl].copy(),
            clipped,
        )

    def interleaved(self) -> tuple[tuple[str, ...], F64, F32, Bools]:
        """All rows in arrival order: every series at ``ts[0]``, then every series at ``ts[1]``...

        Returns ``(series_ids (N,), ts (N,), values (N, d), labels (N,))`` with N = n * T.
        """
        n, n_steps, d = self.values.shape
        sids = self.series_ids * n_steps
        ts = np.repeat(self.ts, n)  # (N,)
        values = np.ascontiguousarray(self.values.transpose(1, 0, 2)).reshape(n * n_steps, d)
        labels = np.ascontiguousarray(self.labels.T).reshape(n * n_steps)  # (N,)
        return sids, ts, values, labels


def generate_fleet(
    n_series: int = 20,
    n_features: int = 8,
    n_steps: int = 2000,
    *,
    seed: int = 0,
    step_s: float = 60.0,
    start_ts: float = 1_700_000_000.0,
    anomaly_start: int | None = None,
    n_anomalies_per_series: float = 1.0,
    kinds: Sequence[str] = KINDS,
    regime_change_at: int | None = None,
    noise: float = 0.1,
) -> Fleet:
    """Generate a labelled fleet (see the module docstring for the model of the data).

    Parameters
    ----------
    n_series, n_features, n_steps
        Sizes. Series are named ``machine-000``...; features ``temp``, ``pressure``, ... (with a
        ``_k`` suffix past the eighth).
    seed
        Non-negative; the only source of randomness.
    step_s, start_ts
        Row spacing and first timestamp (epoch seconds).
    anomaly_start
        First row that may hold an anomaly; default ``int(0.6 * n_steps)``.
    n_anomalies_per_series
        Mean rate; the fleet holds exactly ``round(rate * n_series)`` injections.
    kinds
        Subset of :data:`KINDS`, cycled through in order (repeat a kind to weight it).
    regime_change_at
        From this row on, every series' offsets move by 1.5 scales and its daily period by ±20%.
        Not labelled: it is drift, not an anomaly.
    noise
        Gaussian noise std relative to the channel scale (> 0).

    Returns
    -------
    Fleet
        If the anomaly region is too short for the drawn lengths, they are shrunk to fit.
    """
    start = int(0.6 * n_steps) if anomaly_start is None else anomaly_start
    _validate(n_series, n_features, n_steps, seed, step_s, start, n_anomalies_per_series, kinds)
    if regime_change_at is not None and regime_change_at < 0:
        raise ConfigError(f"regime_change_at must be >= 0, got {regime_change_at}")
    if noise <= 0:
        raise ConfigError(f"noise must be > 0, got {noise}")
    series_ids = tuple(f"machine-{i:03d}" for i in range(n_series))
    base_offset, base_scale, base_mixing = _fleet_channels(seed, n_features)
    plan = _deal_kinds(seed, n_series, n_anomalies_per_series, kinds)
    values = np.empty((n_series, n_steps, n_features), np.float32)
    labels = np.zeros((n_series, n_steps), np.bool_)
    injections: list[Injection] = []
    for i, sid in enumerate(series_ids):
        rng = np.random.default_rng([seed, 0, i])
        normal = _normal_series(
            rng, base_offset, base_scale, base_mixing, n_steps, regime_change_at, noise
        )
        x = normal.values  # (T, d)
        std = _channel_std(x, regime_change_at)
        rng = np.random.default_rng([seed, 2, i])
        for kind, (s, e) in zip(plan[i], place(rng, plan[i], start, n_steps), strict=True):
            feats = inject(rng, kind, x, normal, std, s, e)
            injections.append(Injection(i, sid, kind, s, e, feats))
            labels[i, s:e] = True
        values[i] = x
    ts = start_ts + step_s * np.arange(n_steps, dtype=np.float64)
    return Fleet(series_ids, _feature_names(n_features), ts, values, labels, tuple(injections))


def _validate(
    n_series: int,
    n_features: int,
    n_steps: int,
    seed: int,
    step_s: float,
    anomaly_start: int,
    rate: float,
    kinds: Sequence[str],
) -> None:
    if n_series < 1 or n_features < 1 or n_steps < 1:
        raise ConfigError(f"sizes must be >= 1, got {(n_series, n_features, n_steps)}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if not step_s > 0:
        raise ConfigError(f"step_s must be > 0, got {step_s}")
    if not 0 <= anomaly_start <= n_steps:
        raise ConfigError(f"anomaly_start must be in [0, {n_steps}], got {anomaly_start}")
    if not rate >= 0:
        raise ConfigError(f"n_anomalies_per_series must be >= 0, got {rate}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or (rate > 0 and not kinds):
        raise ConfigError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
    if "correlation_break" in kinds and n_features < 2:
        raise ConfigError("correlation_break needs n_features >= 2; leave it out of kinds")


def _feature_names(d: int) -> tuple[str, ...]:
    base = len(_FEATURE_BASE)
    return tuple(_FEATURE_BASE[j % base] + (f"_{j // base}" if j >= base else "") for j in range(d))


def _fleet_channels(seed: int, d: int) -> tuple[F64, F64, F64]:
    """Per-channel offset, scale and latent mixing shared by the fleet.

    Machines of one type share their physics: how temperature follows load is the same on every
    unit, give or take. So the mixing of latent factors into channels is drawn once for the
    fleet and only perturbed per series (``_MIXING_JITTER``); that shared structure is what lets
    one model see a stuck sensor or a broken correlation on any machine.
    """
    rng = np.random.default_rng([seed, 3])
    offset = rng.uniform(0.0, 50.0, d)
    scale = np.exp(rng.uniform(math.log(0.5), math.log(5.0), d))
    mixing = rng.normal(size=(3, d))
    return offset, scale, mixing


def _deal_kinds(seed: int, n_series: int, rate: float, kinds: Sequence[str]) -> list[list[str]]:
    """Kinds per series: round(rate * n) in all, cycled through ``kinds``, dealt at random."""
    rng = np.random.default_rng([seed, 1])
    total = round(rate * n_series)
    counts = np.full(n_series, total // n_series)
    counts[rng.choice(n_series, total % n_series, replace=False)] += 1
    cycled = [kinds[j % len(kinds)] for j in range(total)] if total else []
    order = rng.permutation(total)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [[cycled[k] for k in order[bounds[i] : bounds[i + 1]]] for i in range(n_series)]


def _normal_series(
    rng: np.random.Generator,
    base_offset: F64,
    base_scale: F64,
    base_mixing: F64,
    n_steps: int,
    regime_change_at: int | None,
    noise: float,
) -> CleanSeries:
    d = base_offset.shape[0]
    # Always draw the regime parameters, so the stream of draws (and the data before the change)
    # is the same with and without a regime change.
    shift = rng.choice([-1.0, 1.0], d) * _REGIME_SHIFT_STDS
    period_factor = 1.0 + rng.choice([-1.0, 1.0]) * _REGIME_PERIOD_CHANGE
    after = np.zeros(n_steps, np.bool_)
    if regime_change_at is not None:
        after[regime_change_at:] = True
    p1 = rng.uniform(60.0, 200.0)
    p2 = p1 * rng.uniform(4.0, 8.0)
    freq = np.where(after, 1.0 / (p1 * period_factor), 1.0 / p1)  # (T,) cycles per row
    phase1 = rng.uniform(0, 2 * math.pi) + 2 * math.pi * (np.cumsum(freq) - freq)  # continuous
    phase2 = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(n_steps) / p2
    latents = np.stack(
        [math.sqrt(2) * np.sin(phase1), math.sqrt(2) * np.sin(phase2), _ar1(rng, n_steps)], axis=1
    )  # (T, 3), each about unit variance
    mixing = (base_mixing + _MIXING_JITTER * rng.normal(size=(3, d))) * _LATENT_WEIGHTS[:, None]
    mixing /= np.linalg.norm(mixing, axis=0, keepdims=True)
    scale = base_scale * rng.uniform(0.8, 1.25, d)
    offset = base_offset + rng.normal(0.0, 0.3, d) * base_scale
    offsets = offset + np.outer(after, shift * scale)  # (T, d)
    eps = rng.normal(0.0, noise, (n_steps, d))
    return CleanSeries(offsets, scale, latents @ mixing, eps)


def _ar1(rng: np.random.Generator, n_steps: int) -> F64:
    """Stationary AR(1) with unit variance."""
    innov = rng.normal(0.0, math.sqrt(1 - _AR_PHI**2), n_steps)
    out = np.empty(n_steps)
    prev = rng.normal()
    for t in range(n_steps):
        prev = _AR_PHI * prev + innov[t]
        out[t] = prev
    return out


def _channel_std(x: F64, regime_change_at: int | None) -> F64:
    """Std per channel of the clean series, before the regime change when there is one."""
    if regime_change_at is not None and regime_change_at >= 2:
        x = x[:regime_change_at]
    return np.asarray(x.std(axis=0), np.float64)

"""Calibrate an alert threshold on held-out normal scores to a target false-positive rate.

Two estimators of the ``(1 - q)`` quantile of the normal score distribution:

* ``quantile``: the empirical quantile; fine while the sample holds many scores above it
  (``n * q`` of them);
* ``pot``: Peaks-Over-Threshold (Siffer et al., KDD 2017): a generalised Pareto distribution
  fitted to the excesses over a high initial quantile, extrapolated to ``q``; it reaches rates
  like 1e-4 that a few thousand scores cannot show directly.

With ``contamination = c > 0`` (training data that holds some anomalies), the top ``c`` of the
scores are not trusted as normal: they are set aside, and the threshold comes from a
generalised Pareto tail fitted to the scores just below them, truncated where they were set
aside (:func:`trimmed_tail_threshold`). On contaminated data the empirical quantile sits among
the anomalies; the truncated fit follows the normal tail instead.

Examples
--------
>>> import numpy as np
>>> scores = np.random.default_rng(0).exponential(size=20_000)
>>> cal = calibrate(scores, 1e-4)
>>> cal.method, cal.n
('pot', 20000)
>>> bool(8.0 < cal.threshold < 10.5)  # the true quantile is ln(1e4) = 9.21
True
>>> Calibration.from_dict(cal.to_dict()) == cal
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import optimize

from ..errors import StreamVAEError, check_shape

log = logging.getLogger(__name__)

__all__ = [
    "SETTLE_QUANTILE",
    "Calibration",
    "CalibrationError",
    "PotFit",
    "calibrate",
    "fit_gpd",
    "newest_point_error",
    "pot_threshold",
    "quantile_threshold",
    "trimmed_tail_threshold",
    "with_settle_level",
]

F64 = npt.NDArray[np.float64]
Method = Literal["quantile", "pot", "auto"]

# A two-parameter tail fit on fewer peaks is noise: at 10 peaks the shape estimate alone has a
# standard error of about (1 + ξ)/√10 ≈ 0.3.
_MIN_PEAKS = 10
# The shape is kept in [-0.5, 2]. Below -1 the GPD likelihood is unbounded and below -0.5 the MLE
# is irregular; clipping there only raises the extrapolated endpoint (a conservative threshold).
# Above 2 the tail is heavier than any score we expect; the bound only keeps the search finite.
_XI_MIN, _XI_MAX = -0.5, 2.0
# Peaks are the scores above this quantile (Siffer et al.'s choice): high enough for the tail to
# look like a GPD, low enough to leave 2% of the sample to fit it on.
_POT_INITIAL_QUANTILE = 0.98
# |ξ| below this uses the exponential limit of the quantile formula.
_XI_ZERO = 1e-12
# The trimmed fit's peaks: the scores in this share of the sample just below the set-aside top
# (so with 5% contaminated, the scores between the 0.80 and 0.95 quantiles). On a narrower slice
# the truncated density is nearly flat and its scale poorly identified: at 0.05, over 10 samples
# of 20,000 exponential scores, a 1% target gave 0.02-2.8%; at 0.15, 0.8-1.4% (0.2: 0.8-1.3%,
# but reaching further into the bulk, where a score's tail is least exponential).
_TRIMMED_PEAK_SHARE = 0.15


class CalibrationError(StreamVAEError, ValueError):
    """The scores or the target cannot give a threshold (empty, non-finite, too few peaks)."""


@dataclass(frozen=True, slots=True)
class PotFit:
    """Result of a Peaks-Over-Threshold fit.

    Examples
    --------
    >>> PotFit(9.2, 3.9, 0.0, 1.0, 400, 20000).n_peaks
    400
    """

    threshold: float  # z_q: the score exceeded with probability target_fpr
    initial_threshold: float  # t: the initial quantile the peaks are measured from
    shape: float  # ξ of the generalised Pareto distribution of the excesses
    scale: float  # σ of that distribution (score units)
    n_peaks: int  # N_t: scores above t
    n: int  # all scores


@dataclass(frozen=True, slots=True)
class Calibration:
    """A calibrated threshold and how it was obtained (stored in the model manifest).

    Examples
    --------
    >>> c = Calibration(1.5, "quantile", 0.01, 1000, {"quantile": 0.99})
    >>> Calibration.from_dict(c.to_dict()) == c
    True
    """

    threshold: float
    method: str  # the method actually used: "quantile" or "pot" (never "auto")
    target_fpr: float
    n: int  # number of calibration scores
    details: dict[str, Any] = field(default_factory=dict)  # JSON-ready: POT parameters etc.

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; :meth:`from_dict` inverts it."""
        return {
            "threshold": self.threshold,
            "method": self.method,
            "target_fpr": self.target_fpr,
            "n": self.n,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            threshold=float(d["threshold"]),
            method=str(d["method"]),
            target_fpr=float(d["target_fpr"]),
            n=int(d["n"]),
            details=dict(d.get("details", {})),
        )


def _check_scores(scores: npt.ArrayLike) -> F64:
    a = np.asarray(scores, dtype=np.float64)
    check_shape("calibration scores", a.shape, (None,))
    if a.size == 0:
        raise CalibrationError("no calibration scores")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise CalibrationError(f"{bad} of {a.size} calibration scores are not finite")
    return a


def _check_rate(name: str, q: float) -> float:
    if not 0.0 < q < 1.0:  # also rejects NaN
        raise CalibrationError(f"{name} must be in (0, 1), got {q!r}")
    return float(q)


def quantile_threshold(scores: npt.ArrayLike, target_fpr: float) -> float:
    """Empirical ``(1 - target_fpr)`` quantile, rounded up to an observed score.

    ``"higher"`` interpolation: at most ``target_fpr`` of the calibration scores lie strictly
    above the threshold. With fewer than ``1 / target_fpr`` scores this is the maximum.

    Examples
    --------
    >>> import numpy as np
    >>> quantile_threshold(np.arange(1.0, 101.0), 0.05)
    96.0
    """
    s = _check_scores(scores)
    q = _check_rate("target_fpr", target_fpr)
    return float(np.quantile(s, 1.0 - q, method="higher"))


def pot_threshold(
    scores: npt.ArrayLike, target_fpr: float, *, initial_quantile: float = _POT_INITIAL_QUANTILE
) -> PotFit:
    """Peaks-Over-Threshold estimate of the ``(1 - target_fpr)`` quantile.

    ``t`` is the ``initial_quantile`` of the scores; the ``N_t`` excesses ``s - t`` of the scores
    above it are fitted with a generalised Pareto distribution (maximum likelihood, Grimshaw's
    one-parameter profile) and ``z_q = t + (σ/ξ)·((q·n / N_t)^(−ξ) − 1)`` (``t − σ·ln(q·n/N_t)``
    for ξ = 0).

    Raises
    ------
    CalibrationError
        Bad scores or rates, fewer than 10 peaks, or a target not inside the tail
        above ``t`` (``target_fpr >= N_t / n``).

    Examples
    --------
    >>> import numpy as np
    >>> fit = pot_threshold(np.random.default_rng(1).exponential(size=50_000), 1e-4)
    >>> fit.n_peaks, abs(fit.shape) < 0.05, round(fit.scale, 1)
    (1000, True, 1.0)
    """
    s = _check_scores(scores)
    q = _check_rate("target_fpr", target_fpr)
    _check_rate("initial_quantile", initial_quantile)
    n = s.size
    t = float(np.quantile(s, initial_quantile))
    y = s[s > t] - t  # (N_t,), all > 0
    k = y.size
    if k < _MIN_PEAKS:
        raise CalibrationError(
            f"POT needs at least {_MIN_PEAKS} scores above the initial threshold "
            f"(the {initial_quantile:g} quantile) to fit a tail, got {k} of {n}: give it at "
            f"least ~{math.ceil(_MIN_PEAKS / (1.0 - initial_quantile))} calibration scores, "
            f"or use method='quantile'"
        )
    if q * n >= k:
        raise CalibrationError(
            f"target_fpr {q:g} is not in the tail POT models: it must be below the "
            f"exceedance rate of the initial threshold ({k}/{n} = {k / n:.3g}); "
            f"use method='quantile' or raise initial_quantile"
        )
    xi, sigma = fit_gpd(y)
    log_r = math.log(q * n / k)  # < 0
    if abs(xi) < _XI_ZERO:  # the exponential limit of the formula below
        return PotFit(t - sigma * log_r, t, xi, sigma, k, n)
    z = t + sigma / xi * math.expm1(-xi * log_r)  # expm1: accurate for small |ξ| too
    return PotFit(float(z), t, xi, sigma, k, n)


def _profile_loglik(theta: float, z: F64) -> tuple[float, float]:
    """GPD log-likelihood per peak, maximised over ξ for fixed ``θ = ξ/σ``; and that ξ.

    For fixed θ the MLE is ``ξ(θ) = mean(log1p(θ·z))`` and the log-likelihood per peak is
    ``−ln(ξ/θ) − 1 − ξ``; θ = 0 is the exponential limit (σ = mean(z)).
    """
    if theta == 0.0:
        return -math.log(float(z.mean())) - 1.0, 0.0
    xi = float(np.mean(np.log1p(theta * z)))
    return -math.log(xi / theta) - 1.0 - xi, xi


def fit_gpd(y: F64) -> tuple[float, float]:
    """Maximum-likelihood (ξ, σ) of a GPD with location 0 for excesses ``y > 0``.

    Grimshaw (1993) reduces the fit to one parameter θ = ξ/σ > −1/max(y). The profile
    likelihood is evaluated on a grid dense near 0 and near −1/max(y), then refined by bounded
    Brent search around the best grid point. Deterministic, and unlike a generic 2-d optimiser
    it does not stall on the flat likelihood of small samples.
    """
    ybar = float(y.mean())
    z = y / ybar  # unit mean: θ below is in units of 1/ȳ
    zmax = float(z.max())
    s = np.concatenate([np.geomspace(1e-8, 0.5, 60), 1.0 - np.geomspace(1e-12, 0.5, 60)])
    thetas = np.unique(np.concatenate([-s / zmax, [0.0], np.geomspace(1e-8, 1e6, 160)]))
    prof = [_profile_loglik(float(th), z) for th in thetas]
    ok = [i for i, (_, xi) in enumerate(prof) if _XI_MIN <= xi <= _XI_MAX]
    best = max(ok, key=lambda i: prof[i][0])
    lo_i = max((i for i in ok if i < best), default=best)
    hi_i = min((i for i in ok if i > best), default=best)
    theta, (ll, xi) = float(thetas[best]), prof[best]
    if hi_i > lo_i:
        res = optimize.minimize_scalar(
            lambda th: -_profile_loglik(float(th), z)[0],
            bounds=(float(thetas[lo_i]), float(thetas[hi_i])),
            method="bounded",
            options={"xatol": 1e-12},
        )
        th_r = float(res.x)
        ll_r, xi_r = _profile_loglik(th_r, z)
        if ll_r > ll and _XI_MIN <= xi_r <= _XI_MAX:
            theta, ll, xi = th_r, ll_r, xi_r
    sigma_unit = 1.0 if theta == 0.0 else xi / theta
    return xi, sigma_unit * ybar


def _truncated_exp_loglik(y: F64, cut: float, sigma: float) -> float:
    """Log-likelihood of excesses ``y`` under an exponential tail of scale ``sigma`` observed
    only below ``cut`` (truncated there)."""
    below = -math.expm1(-cut / sigma)  # the tail's mass below the cut
    return -float(y.sum()) / sigma - y.size * (math.log(sigma) + math.log(below))


def trimmed_tail_threshold(
    scores: npt.ArrayLike, target_fpr: float, contamination: float
) -> PotFit:
    """The ``(1 - target_fpr)`` quantile of the normal scores when the top ``contamination``
    of ``scores`` may be anomalies.

    The scores above the ``1 - contamination`` quantile ``u`` are set aside. An exponential tail
    is fitted by maximum likelihood to the excesses over ``t`` (the quantile
    ``_TRIMMED_PEAK_SHARE`` lower) of the scores in ``(t, u]``, *truncated* at ``u``: the normal
    tail is read from the shape of the scores below the set-aside ones, and its mass beyond
    ``u`` is extrapolated, not counted. So a clean sample keeps about its ``target_fpr`` (the
    set-aside top was normal tail, and the fit puts it back), and a sample whose top holds
    anomalies gets the threshold of its normal part.

    The shape is fixed at ξ = 0: a generalised Pareto shape is not identified from a slice of a
    truncated tail. With it free, thresholds for a 1% target ranged from 0.6× to 250× the true
    quantile on exponential, log-normal, Gaussian and Pareto samples; fixed, the rate on fresh
    normal scores was 0.6-1.6% on exponential and log-normal ones (bench/trimmed_threshold.py).
    A lighter tail (Gaussian) makes the threshold conservative, a heavier one (Pareto) lets
    more through (up to 4%).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.exponential(size=19_000)  # the 0.99 quantile of the normal scores is 4.6
    >>> dirty = np.concatenate([normal, rng.uniform(20, 40, size=1000)])  # 5% anomalies
    >>> quantile_threshold(dirty, 0.01) > 20  # the plain quantile: among the anomalies
    True
    >>> bool(4.0 < trimmed_tail_threshold(dirty, 0.01, 0.05).threshold < 5.5)
    True
    """
    s = _check_scores(scores)
    q = _check_rate("target_fpr", target_fpr)
    c = _check_rate("contamination", contamination)
    n = s.size
    cut_q = 1.0 - c
    t = float(np.quantile(s, max(cut_q - _TRIMMED_PEAK_SHARE, 0.5)))
    u = float(np.quantile(s, cut_q))
    y = s[(s > t) & (s <= u)] - t
    if y.size < _MIN_PEAKS or u <= t:
        raise CalibrationError(
            f"the trimmed tail fit needs at least {_MIN_PEAKS} distinct scores between the "
            f"{cut_q - _TRIMMED_PEAK_SHARE:g} and {cut_q:g} quantiles, got {y.size} of {n}: "
            f"give it at least ~{math.ceil(_MIN_PEAKS / _TRIMMED_PEAK_SHARE)} held-out windows, "
            "or set train.contamination = 0"
        )
    cut = u - t
    mean = max(float(y.mean()), 1e-12 * cut)
    res = optimize.minimize_scalar(  # the MLE lies above the sample mean (truncation)
        lambda ls: -_truncated_exp_loglik(y, cut, math.exp(ls)),
        bounds=(math.log(mean) - 1.0, math.log(mean) + 12.0),
        method="bounded",
    )
    sigma = math.exp(float(res.x))
    k = y.size / -math.expm1(-cut / sigma)  # normal scores above t, the set-aside extrapolated
    n_normal = int((s <= t).sum()) + k
    z = t - sigma * math.log(min(q * n_normal / k, 1.0))
    return PotFit(z, t, 0.0, sigma, round(k), n)


def calibrate(
    scores: npt.ArrayLike,
    target_fpr: float,
    method: Method = "auto",
    *,
    min_exceedances: int = 20,
    contamination: float = 0.0,
) -> Calibration:
    """Threshold with about ``target_fpr`` of normal scores at or above it.

    ``"auto"`` uses the empirical quantile when the sample holds at least ``min_exceedances``
    expected exceedances (``n * target_fpr``), Peaks-Over-Threshold otherwise. With
    ``contamination > 0`` the top share of the scores is set aside and the threshold comes from
    :func:`trimmed_tail_threshold` (method ``"trimmed"``), whatever ``method`` asks for.

    Examples
    --------
    >>> import numpy as np
    >>> scores = np.random.default_rng(0).normal(size=5000)
    >>> cal = calibrate(scores, 0.01)
    >>> cal.method, cal.details["requested"]
    ('quantile', 'auto')
    >>> bool(2.1 < cal.threshold < 2.6)  # the true 0.99 quantile of N(0, 1) is 2.33
    True
    """
    s = _check_scores(scores)
    q = _check_rate("target_fpr", target_fpr)
    if method not in ("quantile", "pot", "auto"):
        raise CalibrationError(f"unknown calibration method {method!r}")
    if min_exceedances < 1:
        raise CalibrationError(f"min_exceedances must be >= 1, got {min_exceedances!r}")
    n = s.size
    if contamination > 0:
        return _calibrate_trimmed(s, q, method, contamination)
    used = method
    if method == "auto":
        used = "quantile" if n * q >= min_exceedances else "pot"
    details: dict[str, Any] = {"requested": method, "expected_exceedances": n * q}
    fit: PotFit | None = None
    if used == "pot":
        try:
            fit = pot_threshold(s, q)
        except CalibrationError as exc:
            if method != "auto":
                raise
            # Too little calibration data for a tail fit: the best the sample supports is its
            # own quantile (the maximum, for a small sample). Say so rather than fail training.
            used = "quantile"
            details["fallback"] = str(exc)
            log.warning("threshold calibration fell back to the sample quantile: %s", exc)
    if fit is None:
        thr = quantile_threshold(s, q)
        details["quantile"] = 1.0 - q
    else:
        thr = fit.threshold
        details.update(
            initial_quantile=_POT_INITIAL_QUANTILE,
            initial_threshold=fit.initial_threshold,
            shape=fit.shape,
            scale=fit.scale,
            n_peaks=fit.n_peaks,
        )
    return Calibration(thr, used, q, n, details)


def _calibrate_trimmed(s: F64, q: float, method: str, contamination: float) -> Calibration:
    fit = trimmed_tail_threshold(s, q, contamination)
    details: dict[str, Any] = {
        "requested": method,
        "contamination": contamination,
        "set_aside_above": float(np.quantile(s, 1.0 - contamination)),
        "initial_threshold": fit.initial_threshold,
        "scale": fit.scale,
        "n_peaks": fit.n_peaks,  # with the set-aside normal tail extrapolated
    }
    return Calibration(fit.threshold, "trimmed", q, s.size, details)


# The newest point of a window "looks normal again" below this quantile of the validation
# windows' newest-point errors (alerts.close_on_settle).
SETTLE_QUANTILE = 0.99


def newest_point_error(
    windows: npt.NDArray[np.floating[Any]],
    expected: npt.NDArray[np.floating[Any]],
    scale: npt.NDArray[np.floating[Any]],
) -> F64:
    """Each window's error at its newest point: the mean over the d features of the squared
    difference between the value and the model's reconstruction of it (``expected``, data
    units), in units of the features' training ``scale`` (d,), as the model sees them.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros((2, 4, 2)); w[1, -1] = [2.0, 0.0]
    >>> newest_point_error(w, np.zeros((2, 2)), np.array([1.0, 1.0])).tolist()
    [0.0, 2.0]
    """
    d = len(scale)
    diff = (np.asarray(windows[:, -1, :d], np.float64) - expected[:, :d]) / scale
    return (diff * diff).mean(axis=1)  # type: ignore[no-any-return]


def with_settle_level(calibration: Calibration, errors: npt.ArrayLike) -> Calibration:
    """``calibration`` with the level below which a window's newest point looks normal: the
    :data:`SETTLE_QUANTILE` of the validation windows' :func:`newest_point_error`
    (``details["settle"]``). Unchanged where there are none."""
    e = np.asarray(errors, dtype=np.float64)
    e = e[np.isfinite(e)]
    if not e.size:
        return calibration
    level = float(np.quantile(e, SETTLE_QUANTILE))
    settle = {"level": level, "quantile": SETTLE_QUANTILE}
    return replace(calibration, details={**calibration.details, "settle": settle})

"""Anomaly-score thresholds from normal (and optionally anomalous) scores — numpy only.

Used by BOTH the exporter (validation scores) and ``edge-calibrate`` (known-good line frames).
Decision rule everywhere: a frame is anomalous when ``score > threshold``.

Modes
-----
``fpr`` (default): the threshold whose false-positive rate on normal scores is ``target_fpr``.
  * Enough data (expected exceedances ``n·target_fpr >= min_exceedances``): the empirical
    (1 − target_fpr) quantile (numpy "linear" interpolation).
  * Too few: peaks-over-threshold extrapolation of the normal-score tail.  A high quantile
    ``u`` (``tail_quantile``, default 0.9, lowered so at least ``min_tail_excesses`` scores
    exceed it) is chosen and the excesses ``y = s − u`` are modelled as generalised Pareto,
    P(S > u + y | S > u) = (1 + ξ y/σ)^(−1/ξ)  (exponential for ξ = 0).  Then
        x_p = u + σ/ξ · ((p_u/p)^ξ − 1)   (ξ ≠ 0),   x_p = u + σ ln(p_u/p)   (ξ = 0),
    with p_u = k/n the fraction of scores above u and p = target_fpr.  The exponential MLE is
    closed-form (σ = mean excess).  With at least ``gpd_min_excesses`` excesses the GPD is
    fitted by profile-likelihood MLE (Grimshaw 1993: for θ = ξ/σ, ξ(θ) = mean log(1 + θy))
    and kept only if a likelihood-ratio test rejects ξ = 0 at 5 % (χ²₁ > 3.84), because ξ is
    very noisy on few excesses.  When ``target_fpr < 1/n`` the threshold is never below the
    largest observed normal score (the data themselves show that score occurs).
``f1``: the threshold maximising F1 on labelled normal + anomalous scores (midpoint between
  the lowest score predicted anomalous and the next lower score).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

MODES = ("fpr", "f1")
CHI2_1_95 = 3.841458820694124  # 95 % quantile of χ² with 1 degree of freedom


class CalibrationError(ValueError):
    """Invalid scores / options for threshold calibration."""


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration options (defaults: 1 false alarm per 1000 normal frames)."""

    mode: str = "fpr"
    target_fpr: float = 0.001
    # Below this many expected exceedances the empirical quantile is too noisy → tail fit.
    min_exceedances: float = 10.0
    # Peaks-over-threshold base quantile (80th–90th percentile is the usual range).
    tail_quantile: float = 0.9
    min_tail_excesses: int = 10
    # A GPD shape is only estimated with this many excesses; below, the exponential tail.
    gpd_min_excesses: int = 50


@dataclass
class ThresholdResult:
    """One calibrated threshold and how it was obtained."""

    threshold: float
    mode: str
    target_fpr: float | None
    fit: str
    statistics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "mode": self.mode, "target_fpr": self.target_fpr, "fit": self.fit,
                "statistics": self.statistics}


def _as_scores(x: Iterable[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(a)):
        raise CalibrationError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite score(s); "
                               f"expected finite anomaly scores")
    return a


def summary_statistics(scores: np.ndarray) -> dict[str, float | int]:
    """n, mean, std, min, max and a few percentiles of a score sample."""
    p50, p90, p99 = np.percentile(scores, [50, 90, 99])
    return {"n": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std()),
            "min": float(scores.min()), "max": float(scores.max()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def exponential_tail_fit(excess: np.ndarray) -> tuple[float, float]:
    """Closed-form exponential MLE of excesses: (σ = mean excess, log-likelihood)."""
    k = excess.size
    sigma = float(excess.mean())
    return sigma, -k * math.log(sigma) - k


def _gpd_profile_loglik(theta: np.ndarray, excess: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Grimshaw's reduction: for fixed θ = ξ/σ the MLE of ξ is mean(log1p(θ y)) and
    # l(θ) = −k − k ξ(θ) − k log(ξ(θ)/θ).
    k = excess.size
    xi = np.log1p(np.outer(theta, excess)).mean(axis=1)
    return -k - k * xi - k * np.log(xi / theta), xi


def gpd_tail_fit(excess: np.ndarray) -> tuple[float, float, float]:
    """Generalised-Pareto MLE of excesses by profile likelihood: (ξ, σ, log-likelihood).

    ξ is restricted to >= −0.5 (the regular-MLE domain); the search is a log-spaced grid over
    θ on both sides of 0 followed by two refinements around the best grid point.
    """
    ymax, ymean = float(excess.max()), float(excess.mean())
    lo = -1.0 / ymax
    neg = lo * (1.0 - np.logspace(-6, 0, 200, endpoint=False))          # θ in (−1/ymax, 0)
    pos = np.logspace(-4, 4, 400) / ymean                               # θ > 0
    theta = np.concatenate([neg, pos])
    for _ in range(3):
        ll, xi = _gpd_profile_loglik(theta, excess)
        ll = np.where((xi >= -0.5) & np.isfinite(ll), ll, -np.inf)
        i = int(np.argmax(ll))
        # Refine between the neighbours of the best grid point.
        a, b = theta[max(i - 1, 0)], theta[min(i + 1, theta.size - 1)]
        best_theta, best_ll, best_xi = theta[i], ll[i], xi[i]
        theta = np.linspace(a, b, 201)
        theta = theta[(theta > lo) & (theta != 0.0)]
    return float(best_xi), float(best_xi / best_theta), float(best_ll)


def tail_quantile_from_fit(u: float, p_u: float, sigma: float, xi: float, target_fpr: float) -> float:
    """x_p = u + σ/ξ((p_u/p)^ξ − 1), or u + σ ln(p_u/p) for ξ = 0 (the POT quantile)."""
    r = p_u / target_fpr
    if abs(xi) < 1e-9:
        return u + sigma * math.log(r)
    return u + sigma / xi * (float(r ** xi) - 1.0)


def fpr_threshold(normal: np.ndarray, target_fpr: float, cfg: CalibrationConfig) -> tuple[float, str, dict[str, Any]]:
    """Threshold with false-positive rate ``target_fpr`` on the normal-score distribution."""
    n = normal.size
    stats: dict[str, Any] = {"expected_exceedances": n * target_fpr}
    if n * target_fpr >= cfg.min_exceedances:
        return float(np.quantile(normal, 1.0 - target_fpr)), "empirical-quantile", stats
    smax = float(normal.max())
    if n < 2 or float(normal.min()) == smax:
        stats["warning"] = "fewer than 2 distinct normal scores: threshold is their maximum"
        return smax, "max (degenerate sample)", stats
    q = min(cfg.tail_quantile, 1.0 - cfg.min_tail_excesses / n)
    q = max(q, 0.5)  # never below the median: the fit describes the tail only
    u = float(np.quantile(normal, q))
    excess = normal[normal > u] - u
    k = excess.size
    p_u = k / n
    stats.update({"tail_base_quantile": q, "u": u, "n_excess": k, "p_u": p_u})
    if target_fpr >= p_u:
        # The requested quantile lies below u: no extrapolation needed.
        return float(np.quantile(normal, 1.0 - target_fpr)), "empirical-quantile", stats
    sigma, ll_exp = exponential_tail_fit(excess)
    xi, fit = 0.0, "pot-exponential"
    stats.update({"sigma_exponential": sigma, "loglik_exponential": ll_exp})
    if k >= cfg.gpd_min_excesses:
        xi_g, sigma_g, ll_g = gpd_tail_fit(excess)
        lr = 2.0 * (ll_g - ll_exp)
        stats.update({"xi_gpd": xi_g, "sigma_gpd": sigma_g, "loglik_gpd": ll_g, "lr_statistic": lr})
        if lr > CHI2_1_95:
            xi, sigma, fit = xi_g, sigma_g, "pot-gpd"
    stats.update({"xi": xi, "sigma": sigma})
    if k < 5:
        stats["warning"] = f"only {k} tail excesses: the extrapolated threshold is uncertain; calibrate on more frames"
    thr = tail_quantile_from_fit(u, p_u, sigma, xi, target_fpr)
    stats["fit_threshold"] = thr
    if target_fpr < 1.0 / n and thr < smax:
        # An observed normal score has empirical rate >= 1/n > target: it must not alarm.
        thr, stats["clamped_to_max"] = smax, True
    return thr, fit, stats


def f1_threshold(normal: np.ndarray, anomalous: np.ndarray) -> tuple[float, dict[str, Any]]:
    """F1-optimal threshold for the rule ``score > threshold`` (and its precision/recall/F1).

    ``edge.metrics.f1_max`` finds the best cut t for ``score >= t``; the midpoint between t and
    the next lower score gives the same partition under ``score > threshold``.
    """
    from edge.metrics import f1_max
    scores = np.concatenate([normal, anomalous])
    labels = np.concatenate([np.zeros(normal.size, np.int64), np.ones(anomalous.size, np.int64)])
    f1, t = f1_max(labels, scores)
    below = scores[scores < t]
    lower = below.max() if below.size else t - max(abs(t) * 1e-6, 1e-12)
    thr = float((t + lower) / 2.0)
    tp = int((anomalous > thr).sum())
    fp = int((normal > thr).sum())
    stats = {"f1": float(f1), "precision": tp / max(tp + fp, 1), "recall": tp / anomalous.size}
    return thr, stats


def calibrate_threshold(normal_scores: Iterable[float] | np.ndarray,
                        anomalous_scores: Iterable[float] | np.ndarray | None = None,
                        mode: str = "fpr", target_fpr: float | None = 0.001,
                        config: CalibrationConfig | None = None) -> ThresholdResult:
    """Threshold from normal (and optionally anomalous) scores; see the module docstring.

    Statistics always include a summary of the normal scores and the empirical FPR at the
    threshold; with anomalous scores also their recall (TPR) at the threshold.
    """
    cfg = config or CalibrationConfig()
    if mode not in MODES:
        raise CalibrationError(f"threshold mode {mode!r}: expected one of {list(MODES)}")
    normal = _as_scores(normal_scores, "normal scores")
    anomalous = _as_scores([] if anomalous_scores is None else anomalous_scores, "anomalous scores")
    if normal.size == 0:
        raise CalibrationError("normal scores: none given; calibration needs scores of known-good images")
    stats: dict[str, Any] = {"normal": summary_statistics(normal)}
    if mode == "fpr":
        if target_fpr is None or not (0.0 < target_fpr < 1.0):
            raise CalibrationError(f"target_fpr {target_fpr!r}: expected a rate in (0, 1), e.g. 0.001")
        thr, fit, fit_stats = fpr_threshold(normal, float(target_fpr), cfg)
    else:
        if anomalous.size == 0:
            raise CalibrationError("threshold mode f1 needs anomalous scores; use mode 'fpr' with normal data only")
        target_fpr = None
        thr, fit_stats = f1_threshold(normal, anomalous)
        fit = "f1-optimal"
    stats.update(fit_stats)
    stats["empirical_fpr"] = float((normal > thr).mean())
    if anomalous.size:
        stats["anomalous"] = summary_statistics(anomalous)
        stats["recall"] = float((anomalous > thr).mean())
    return ThresholdResult(threshold=float(thr), mode=mode, target_fpr=target_fpr, fit=fit, statistics=stats)


def calibrate_thresholds(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                         categories: Sequence[str], mode: str = "fpr", target_fpr: float | None = 0.001,
                         config: CalibrationConfig | None = None) -> dict[str, Any]:
    """Global + per-category thresholds: ``{"global": ThresholdResult, "per_category": {cat: ThresholdResult}}``.

    ``labels`` are 0 (normal) / 1 (anomalous).  In ``f1`` mode a category without anomalous
    samples falls back to ``fpr`` (its result says so); a category without normal samples
    gets no per-category threshold (the runtime then uses the global one).
    """
    s = _as_scores(scores, "scores")
    y = np.asarray(labels).ravel()
    cats = np.asarray(list(categories), dtype=object).ravel()
    if not (s.size == y.size == cats.size):
        raise CalibrationError(f"scores ({s.size}), labels ({y.size}) and categories ({cats.size}) differ in length")
    if not np.isin(y, [0, 1]).all():
        raise CalibrationError("labels: expected 0 (normal) or 1 (anomalous)")
    tfpr = 0.001 if target_fpr is None else target_fpr

    def one(mask: np.ndarray) -> ThresholdResult | None:
        normal, anomalous = s[mask & (y == 0)], s[mask & (y == 1)]
        if normal.size == 0:
            return None
        m = mode if (mode != "f1" or anomalous.size) else "fpr"
        return calibrate_threshold(normal, anomalous, mode=m, target_fpr=tfpr if m == "fpr" else None, config=config)

    everything = np.ones(s.size, bool)
    glob = one(everything)
    if glob is None:
        raise CalibrationError("scores: no normal (label 0) samples; calibration needs known-good images")
    per = {}
    for cat in sorted(set(cats.tolist())):
        r = one(cats == cat)
        if r is not None:
            per[str(cat)] = r
    return {"global": glob, "per_category": per}


def threshold_section(results: Mapping[str, Any], source: str, calibrated_at: str | None = None) -> dict[str, Any]:
    """Manifest "threshold" section from ``calibrate_thresholds`` output (``global`` optional).

    Top-level mode/target_fpr/fit describe the global threshold; per-category details are in
    ``statistics.per_category[cat]``.  Pass the result to ``edge.manifest.update_threshold``
    (or put it in the manifest dict given to ``write_manifest``).
    """
    when = calibrated_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    section: dict[str, Any] = {"per_category": {}, "statistics": {"per_category": {}}}
    glob: ThresholdResult | None = results.get("global")
    if glob is not None:
        section.update({"global": glob.threshold, "mode": glob.mode, "target_fpr": glob.target_fpr, "fit": glob.fit,
                        "source": source, "calibrated_at": when, "rule": "score > threshold"})
        section["statistics"]["global"] = glob.statistics
    for cat, r in (results.get("per_category") or {}).items():
        section["per_category"][cat] = r.threshold
        section["statistics"]["per_category"][cat] = {"mode": r.mode, "target_fpr": r.target_fpr, "fit": r.fit,
                                                      "source": source, "calibrated_at": when, **r.statistics}
    return section

"""Anomaly-detection metrics in numpy only (no sklearn / scipy / torch), so bench and edge can use them.

Image level: AUROC, ROC curve, F1-max. Pixel level: AUROC, ROC curve, PRO curve and AU-PRO.

* AUROC is the Mann–Whitney statistic P(s_anomalous > s_normal) + ½·P(tie), which is exactly the
  trapezoid area under the ROC curve that sklearn's ``roc_auc_score`` integrates (ties score ½).
  Counts are accumulated as int64, so the result is exact up to the final division.
* The PRO curve follows the official MVTec AD evaluation code (Bergmann et al., "The MVTec Anomaly
  Detection Dataset", IJCV 2021, §4.2 and ``pro_curve_util.compute_pro``): for every threshold t over
  the sorted anomaly scores, PRO(t) = (1/K) Σ_k |{p ∈ C_k : a(p) ≥ t}| / |C_k| over all K connected
  components C_k (8-connectivity) of all ground-truth masks, and FPR(t) = |{p normal : a(p) ≥ t}| /
  |normal pixels| over all images. AU-PRO = ∫₀^limit PRO d(FPR) / limit (trapezoids, PRO
  linearly interpolated at the limit, ``generic_util.trapezoid``).

Pixel metrics never sort or copy the full N×H×W score array: only the anomalous pixels (a small
fraction) are sorted; normal pixels are streamed image by image against them with ``searchsorted``.
Degenerate inputs (a single class, no anomalous pixels) return nan with a ``MetricWarning``.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

__all__ = [
    "MetricInputError", "MetricWarning", "image_auroc", "pixel_auroc", "roc_curve", "pixel_roc_curve",
    "f1_max", "pro_curve", "aupro", "trapezoid",
]


class MetricInputError(ValueError):
    """Arrays passed to a metric have the wrong shape, length or values."""


class MetricWarning(UserWarning):
    """A metric is undefined for the given input (e.g. only one class) and was returned as nan."""


# ----------------------------------------------------------------------------------------------------
# input checks


def _scores_1d(scores: np.ndarray, name: str) -> np.ndarray:
    s = np.asarray(scores)
    if s.dtype.kind not in "fiub":
        raise MetricInputError(f"{name}: expected numeric values, got dtype {s.dtype}")
    if s.dtype.kind != "f":
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise MetricInputError(f"{name}: contains NaN")
    return s


def _labels_and_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = _scores_1d(scores, "scores")
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise MetricInputError(f"labels and scores: expected two 1-D arrays of equal length, "
                               f"got shapes {y.shape} and {s.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise MetricInputError("labels: expected binary values 0 (normal) / 1 (anomalous)")
    return y.astype(bool), s


def _as_image_stack(a: np.ndarray, name: str) -> np.ndarray:
    """(H,W) | (N,H,W) | (N,1,H,W) → (N,H,W) view."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise MetricInputError(f"{name}: expected shape (H,W), (N,H,W) or (N,1,H,W), got {a.shape}")
    return a


def _masks_and_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = _as_image_stack(masks, "masks")
    a = _as_image_stack(maps, "maps")
    if m.shape != a.shape:
        raise MetricInputError(f"masks and maps: shapes differ, {m.shape} vs {a.shape}")
    if a.dtype.kind not in "fiu":
        raise MetricInputError(f"maps: expected numeric values, got dtype {a.dtype}")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return m, a


def _undefined(metric: str, why: str) -> float:
    warnings.warn(f"{metric} is undefined: {why}; returning nan", MetricWarning, stacklevel=3)
    return float("nan")


# ----------------------------------------------------------------------------------------------------
# AUROC (Mann–Whitney U with half-credit ties)


def _mann_whitney_twice(positives_sorted: np.ndarray, negatives: np.ndarray) -> int:
    """Σ over negatives of 2·#{pos > n} + #{pos == n}, as an exact integer."""
    p = positives_sorted.size
    left = np.searchsorted(positives_sorted, negatives, side="left")
    right = np.searchsorted(positives_sorted, negatives, side="right")
    # 2·(p − right) + (right − left) = 2p − right − left
    return int(2 * p * negatives.size - int(left.sum(dtype=np.int64)) - int(right.sum(dtype=np.int64)))


def _auroc_from_stream(positives: np.ndarray, negative_chunks: Iterator[np.ndarray], metric: str) -> float:
    pos = np.sort(positives)
    twice, n_neg = 0, 0
    for chunk in negative_chunks:
        if chunk.size:
            if np.isnan(chunk).any():
                raise MetricInputError(f"{metric}: scores contain NaN")
            twice += _mann_whitney_twice(pos, chunk)
            n_neg += chunk.size
    if pos.size == 0 or n_neg == 0:
        which = "anomalous" if pos.size == 0 else "normal"
        return _undefined(metric, f"there are no {which} samples")
    return twice / (2.0 * pos.size * n_neg)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level AUROC (label 1 = anomalous, higher score = more anomalous); equals sklearn's roc_auc_score."""
    y, s = _labels_and_scores(labels, scores)
    return _auroc_from_stream(s[y], iter([s[~y]]), "image AUROC")


def _image_chunks(masks: np.ndarray, maps: np.ndarray, anomalous: bool) -> Iterator[np.ndarray]:
    # One image at a time keeps the working set at H×W regardless of N.
    for m, a in zip(masks, maps):
        yield a[(m != 0) == anomalous]


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel-level AUROC over all pixels of all images (mask ≠ 0 = anomalous); equals sklearn's
    roc_auc_score(masks.ravel(), maps.ravel()) without sorting or copying the whole map stack."""
    m, a = _masks_and_maps(masks, maps)
    positives = np.concatenate([np.empty(0, a.dtype), *_image_chunks(m, a, True)])
    if np.isnan(positives).any():
        raise MetricInputError("maps: contains NaN")
    return _auroc_from_stream(positives, _image_chunks(m, a, False), "pixel AUROC")


# ----------------------------------------------------------------------------------------------------
# image-level curves


def _distinct_threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) when predicting 'anomalous' for score ≥ t, at every distinct t (descending)."""
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    # The last position of each run of equal scores includes all tied samples (sklearn's convention).
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1] if s_sorted.size else np.empty(0, int)
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return tps, fps, s_sorted[last]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score: (fpr, tpr, thresholds), like
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` (first point (0, 0) at threshold +inf).
    A sample is predicted anomalous when score ≥ threshold. An undefined rate (one class only) is nan."""
    y, s = _labels_and_scores(labels, scores)
    tps, fps, thresholds = _distinct_threshold_counts(y, s)
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        _undefined("ROC curve " + ("TPR" if n_pos == 0 else "FPR"), "only one class in labels")
    fpr = fps / n_neg if n_neg else np.full(fps.shape, np.nan)
    tpr = tps / n_pos if n_pos else np.full(tps.shape, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, thresholds.astype(np.float64)]


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 = 2TP / (2TP + FP + FN) over all thresholds t (anomalous ⇔ score ≥ t) and the t reaching it
    (the highest such t on ties). Undefined (nan, nan) without anomalous samples."""
    y, s = _labels_and_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return _undefined("F1-max", "there are no anomalous samples"), float("nan")
    tps, fps, thresholds = _distinct_threshold_counts(y, s)
    # 2TP + FP + FN = (TP + FP) + P, since FN = P − TP
    f1 = 2.0 * tps / ((tps + fps) + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# ----------------------------------------------------------------------------------------------------
# pixel-level curves (ROC and PRO share one weighted-threshold sweep)


def _component_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per anomalous pixel (in row-major order of mask ≠ 0): 1 / |its 8-connected component|, and #components."""
    fg = (mask != 0).astype(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    return 1.0 / areas[labels[fg != 0]], n_labels - 1


def _weighted_curve(masks: np.ndarray, maps: np.ndarray, per_region: bool, metric: str
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Vertices (x = FPR, y) of the curve swept over every distinct score threshold (score ≥ t).

    y = TPR (each anomalous pixel weighs 1/P) or PRO (each weighs 1/(|C_k|·K)). Only thresholds equal to
    an anomalous score change y, so the polyline is fully described by two vertices per distinct
    anomalous score u (just above u, and at u) plus (0,0) and (1,1); the dropped points are collinear
    horizontal ones, so areas and interpolations equal those of the official full-resolution curve.
    """
    m, a = _masks_and_maps(masks, maps)
    pos_scores, pos_weights, n_regions = [], [], 0
    for mask, amap in zip(m, a):
        fg = mask != 0
        if per_region:
            w, k = _component_weights(mask)
            pos_weights.append(w)
            n_regions += k
        pos_scores.append(amap[fg])
    pos = np.concatenate([np.empty(0, a.dtype), *pos_scores])
    if pos.size == 0:
        _undefined(metric, "the ground-truth masks contain no anomalous pixels")
        return None
    if np.isnan(pos).any():
        raise MetricInputError("maps: contains NaN")
    weights = (np.concatenate(pos_weights) / n_regions) if per_region else np.full(pos.size, 1.0 / pos.size)

    uniq, inverse = np.unique(pos, return_inverse=True)  # ascending distinct anomalous scores
    k = uniq.size
    y_ge = np.cumsum(np.bincount(inverse.ravel(), weights=weights, minlength=k)[::-1])[::-1]  # Σw over pos ≥ u_j
    y_gt = np.r_[y_ge[1:], 0.0]                                                             # Σw over pos > u_j
    # count_r[i] = #normal pixels with exactly i distinct anomalous scores ≤ it (and count_l for <)
    count_r = np.zeros(k + 1, np.int64)
    count_l = np.zeros(k + 1, np.int64)
    n_neg = 0
    for neg in _image_chunks(m, a, False):
        if neg.size:
            if np.isnan(neg).any():
                raise MetricInputError("maps: contains NaN")
            count_r += np.bincount(np.searchsorted(uniq, neg, side="right"), minlength=k + 1)
            count_l += np.bincount(np.searchsorted(uniq, neg, side="left"), minlength=k + 1)
            n_neg += neg.size
    if n_neg == 0:
        _undefined(metric, "the ground-truth masks contain no normal pixels")
        return None
    neg_ge = np.cumsum(count_r[::-1])[::-1][1:]  # #normal ≥ u_j  ⇔  #{u ≤ n} ≥ j+1
    neg_gt = np.cumsum(count_l[::-1])[::-1][1:]  # #normal > u_j  ⇔  #{u < n} ≥ j+1

    # Descending thresholds: for each u_j (largest first) the vertex just above it, then at it.
    x = np.empty(2 * k + 2)
    y = np.empty(2 * k + 2)
    x[0], y[0], x[-1], y[-1] = 0.0, 0.0, 1.0, 1.0
    x[1:-1:2], x[2:-1:2] = neg_gt[::-1] / n_neg, neg_ge[::-1] / n_neg
    y[1:-1:2], y[2:-1:2] = y_gt[::-1], y_ge[::-1]
    # Float sums of 1/|C_k| can overshoot 1 by an ulp; the official code clips the same way.
    np.clip(y, None, 1.0, out=y)
    return x, y


def pixel_roc_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level ROC curve vertices (fpr, tpr), memory-light (for plots); nan arrays if undefined."""
    curve = _weighted_curve(masks, maps, per_region=False, metric="pixel ROC curve")
    return curve if curve is not None else (np.full(1, np.nan), np.full(1, np.nan))


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-Region-Overlap curve (fpr, pro) of the MVTec AD evaluation (``compute_pro``): starts at (0, 0),
    ends at (1, 1), non-decreasing in both. Components are 8-connected, per image; FPR counts normal
    pixels of all images. Returns nan arrays (with a warning) without anomalous or normal pixels."""
    curve = _weighted_curve(masks, maps, per_region=True, metric="PRO curve")
    return curve if curve is not None else (np.full(1, np.nan), np.full(1, np.nan))


def trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """∫ y dx by trapezoids over x sorted ascending, optionally up to x_max with y linearly interpolated
    at x_max (MVTec ``generic_util.trapezoid``). Non-finite points are dropped."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    correction = 0.0
    if x_max is not None:
        if not (x.size and x[0] <= x_max <= x[-1]):
            raise MetricInputError(f"x_max={x_max} lies outside the curve's x range")
        if not np.any(x == x_max):
            i = int(np.searchsorted(x, x_max, side="right"))  # x[i-1] < x_max < x[i]
            y_at = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
            correction = 0.5 * (y_at + y[i - 1]) * (x_max - x[i - 1])
        keep = x <= x_max
        x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction)


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to FPR = fpr_limit (MVTec AD: 0.3), in [0, 1]."""
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricInputError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    curve = _weighted_curve(masks, maps, per_region=True, metric="AU-PRO")
    if curve is None:
        return float("nan")
    fpr, pro = curve
    return trapezoid(fpr, pro, x_max=fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------------------------------
# MVTec LOCO's saturated per-region overlap


def spro(regions: Sequence[Sequence[tuple[np.ndarray, float]]], anomalous_maps: Sequence[np.ndarray],
         normal_maps: np.ndarray, fpr_limit: float = 0.05, n_thresholds: int = 200) -> float:
    """Normalised area under the sPRO curve up to FPR = fpr_limit (MVTec LOCO AD, Bergmann et al. IJCV 2022).

    regions[i]: the defect regions of anomalous image i, each (boolean mask like its map, saturation s in
    pixels); sPRO(t) = mean over all regions of min(1, |{map ≥ t} ∩ region| / s); FPR(t) is the share of the
    normal images' pixels ≥ t (LOCO counts false positives on anomaly-free images only). Thresholds: the normal
    pixels' quantiles at n_thresholds FPRs evenly spaced in [0, fpr_limit].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricInputError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    normal = np.sort(np.asarray(normal_maps, np.float64).ravel())
    region_scores = [np.sort(np.asarray(amap, np.float64)[mask]) for masks, amap in zip(regions, anomalous_maps)
                     for mask, _ in masks]
    saturation = np.array([s for masks in regions for _, s in masks], np.float64)
    if normal.size == 0 or not region_scores:
        return _undefined("sPRO", "no normal pixels" if normal.size == 0 else "no defect regions")
    if np.any(saturation <= 0):
        raise MetricInputError("spro: every region needs a saturation threshold > 0")
    quantiles = np.linspace(0.0, fpr_limit, n_thresholds + 1)[1:]
    thresholds = np.r_[np.nextafter(normal[-1], np.inf), np.quantile(normal, 1.0 - quantiles)]
    fpr = np.asarray(normal.size - np.searchsorted(normal, thresholds, side="left"), np.float64) / normal.size
    covered = np.stack([scores.size - np.searchsorted(scores, thresholds, side="left") for scores in region_scores])
    overlap: np.ndarray = np.minimum(1.0, covered / saturation[:, None]).mean(axis=0)
    order = np.argsort(fpr, kind="stable")
    fpr, overlap = fpr[order], overlap[order]
    x = np.r_[0.0, fpr] if fpr[0] > 0 else fpr
    y = np.r_[overlap[0], overlap] if fpr[0] > 0 else overlap
    if x[-1] < fpr_limit:  # a map with many tied normal scores: the curve ends early; extend it flat
        x, y = np.r_[x, fpr_limit], np.r_[y, y[-1]]
    return trapezoid(x, y, x_max=fpr_limit) / fpr_limit

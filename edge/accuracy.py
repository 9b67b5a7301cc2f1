"""Accuracy of an anomaly detector as every program reports it (dcam-eval, dcam-export, bench-latency, edge-run).

numpy only, on top of the primitives of ``edge.metrics``:

* **Metric table** — per category: image AUROC, pixel AUROC, AU-PRO up to FPR 0.3 and image F1-max, plus
  the mean row: the unweighted mean over the categories where a metric is defined, as MVTec AD reports it
  (Bergmann et al., IJCV 2021). An undefined metric (one class only, a category without ground-truth
  masks) is nan, and its warning names the category.
* **Correlations** — Pearson's r = Σ(a−ā)(b−b̄) / √(Σ(a−ā)² Σ(b−b̄)²); Spearman's ρ = Pearson's r of the
  ranks, tied values sharing the average of the ranks they span (the definition ``scipy.stats.spearmanr``
  implements). Undefined (a constant input, fewer than two pairs) is nan.
* **int8 accuracy guard** — an int8 file must lose at most ``max_image_auroc_drop`` / ``max_pixel_auroc_drop``
  of image / pixel AUROC against its fp32 counterpart and reach a score Spearman ρ ≥ ``min_score_spearman``.
  AUROC drops are in **AUROC points** throughout (1 point = 0.01 AUROC; the unit of ``dcam-export
  --max-image-auroc-drop``), compared with one tolerance, ``GUARD_TOLERANCE_POINTS``. A figure that was not
  measured (None) is not checked; one that was measured but is NaN fails (e.g. constant int8 scores).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.metrics import MetricInputError, MetricWarning, aupro, f1_max, image_auroc, pixel_auroc

__all__ = [
    "AUPRO_FPR_LIMIT", "METRIC_KEYS", "COUNT_KEYS", "category_metrics", "category_table", "category_means",
    "defined", "average_ranks", "pearson", "spearman", "POINTS_PER_AUROC", "GUARD_TOLERANCE_POINTS",
    "GuardLimits", "to_auroc_points", "auroc_drop_points", "guard_failures", "GuardRecord", "recorded_guard",
]

AUPRO_FPR_LIMIT = 0.3  # MVTec AD's integration limit of the PRO curve
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
COUNT_KEYS = ("n_images", "n_anomalous")


# ----------------------------------------------------------------------------------------------------
# per-category metric table

_IMAGE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "image_auroc": image_auroc,
    "image_f1_max": lambda labels, scores: f1_max(labels, scores)[0],
}
_PIXEL_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, float], float]] = {
    "pixel_auroc": lambda masks, maps, _limit: pixel_auroc(masks, maps),
    "aupro": aupro,
}


def _check_metric_names(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in _IMAGE_METRICS and m not in _PIXEL_METRICS]
    if unknown:
        raise MetricInputError(f"metrics: unknown {unknown}, expected some of {list(METRIC_KEYS)}")


def category_metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None = None,
                     maps: np.ndarray | None = None, metrics: Sequence[str] = METRIC_KEYS,
                     fpr_limit: float = AUPRO_FPR_LIMIT, category: str | None = None) -> dict[str, Any]:
    """One category's row: ``metrics`` (names from ``METRIC_KEYS``, in the order given), then ``COUNT_KEYS``.

    Pixel metrics are nan without masks and maps (image-level data sets); undefined metrics are nan with a
    ``MetricWarning``, prefixed with ``category`` when given.
    """
    _check_metric_names(metrics)
    labels = np.asarray(labels).astype(np.int64)

    def compute(name: str) -> float:
        if name in _IMAGE_METRICS:
            return _IMAGE_METRICS[name](labels, scores)
        if masks is None or maps is None:  # image-level labels only
            return float("nan")
        return _PIXEL_METRICS[name](masks, maps, fpr_limit)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        row: dict[str, Any] = {name: compute(name) for name in metrics}
    for w in caught:
        warnings.warn(f"{category}: {w.message}" if category is not None else w.message, w.category, stacklevel=2)
    row.update(n_images=int(labels.size), n_anomalous=int(labels.sum()))
    return row


def category_table(sample_categories: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                   masks: np.ndarray | None = None, maps: np.ndarray | None = None,
                   metrics: Sequence[str] = METRIC_KEYS, fpr_limit: float = AUPRO_FPR_LIMIT
                   ) -> dict[str, dict[str, Any]]:
    """``category_metrics`` of every category, in first-seen order; sample i belongs to sample_categories[i].

    masks / maps (N×H×W or N×1×H×W) are optional, as for ``category_metrics``.
    """
    cats = np.asarray(list(sample_categories), dtype=object)
    labels, scores = np.asarray(labels), np.asarray(scores)
    if not (cats.shape[0] == labels.shape[0] == scores.shape[0]):
        raise MetricInputError(f"sample_categories, labels and scores: lengths differ "
                               f"({cats.shape[0]}, {labels.shape[0]}, {scores.shape[0]})")
    table: dict[str, dict[str, Any]] = {}
    for cat in dict.fromkeys(cats.tolist()):
        idx = np.flatnonzero(cats == cat)
        table[cat] = category_metrics(labels[idx], scores[idx], _take(masks, idx), _take(maps, idx), metrics,
                                      fpr_limit, cat)
    return table


def _take(images: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if images is None else np.asarray(images)[idx]


def defined(value: float | None) -> float | None:
    """The value as a float, or None when it is missing or nan (how JSON rows and manifests say 'n/a')."""
    return None if value is None or math.isnan(value) else float(value)


def category_means(per_category: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = METRIC_KEYS
                   ) -> dict[str, float]:
    """The mean row: each key's unweighted mean over the categories where it is defined (a missing key,
    None and nan are skipped), nan where no category defines it."""
    means = {}
    for key in keys:
        values = [float(row[key]) for row in per_category.values() if defined(row.get(key)) is not None]
        means[key] = float(np.mean(values)) if values else float("nan")
    return means


# ----------------------------------------------------------------------------------------------------
# correlations


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of the flattened values; tied values share the mean of the ranks they span
    (``scipy.stats.rankdata(method="average")``), e.g. [1, 2, 2, 3] → [1, 2.5, 2.5, 4]."""
    _, inverse, counts = np.unique(np.asarray(values, np.float64).ravel(), return_inverse=True,
                                   return_counts=True)
    last = np.cumsum(counts)          # 1-based rank of each distinct value's last occurrence
    first = last - counts + 1
    return ((first + last) / 2.0)[inverse.ravel()]


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Pearson's r of two equally long arrays (flattened); nan for fewer than two pairs or a constant input."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    if x.size != y.size:
        raise MetricInputError(f"correlation: expected two arrays of equal size, got {x.size} and {y.size}")
    if x.size < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's ρ: Pearson's r of the average ranks; nan when undefined (a constant input, < 2 pairs)."""
    return pearson(average_ranks(a), average_ranks(b))


# ----------------------------------------------------------------------------------------------------
# int8 accuracy guard

POINTS_PER_AUROC = 100.0  # 1 AUROC point = 0.01 AUROC
# "within 1.0 point" includes a drop of exactly 1.0 point computed with float noise.
GUARD_TOLERANCE_POINTS = 1e-9


@dataclass(frozen=True)
class GuardLimits:
    """Limits of the int8 guard; the defaults are dcam-export's (README "Export"). Drops in AUROC points."""

    max_image_auroc_drop: float = 1.0
    max_pixel_auroc_drop: float = 1.0
    min_score_spearman: float = 0.95


def to_auroc_points(auroc_difference: float) -> float:
    """An AUROC difference in AUROC points (0.01 AUROC → 1.0)."""
    return POINTS_PER_AUROC * auroc_difference


def auroc_drop_points(reference: float | None, value: float | None) -> float | None:
    """How far ``value`` lies below ``reference`` in AUROC points (negative: it is higher); None if either
    is missing."""
    if reference is None or value is None:
        return None
    return to_auroc_points(reference - value)


def guard_failures(image_auroc_drop: float | None, pixel_auroc_drop: float | None,
                   score_spearman: float | None, limits: GuardLimits = GuardLimits()) -> dict[str, float]:
    """The int8 guard's failed checks: {"image_auroc_drop" | "pixel_auroc_drop" | "score_spearman": value}.

    Drops in AUROC points (see ``auroc_drop_points``), ρ of the file's image scores against fp32's. Empty:
    the file passes. None = not measured, not checked; NaN = undefined, fails (nothing shows it is within).
    """
    bounds = {"image_auroc_drop": (image_auroc_drop, limits.max_image_auroc_drop),
              "pixel_auroc_drop": (pixel_auroc_drop, limits.max_pixel_auroc_drop)}
    # `not value <= bound` (not `value > bound`): a comparison with NaN is False, so NaN is never within.
    failed = {name: float(drop) for name, (drop, bound) in bounds.items()
              if drop is not None and not drop <= bound + GUARD_TOLERANCE_POINTS}
    if score_spearman is not None and not score_spearman >= limits.min_score_spearman:
        failed["score_spearman"] = float(score_spearman)
    return failed


@dataclass(frozen=True)
class GuardRecord:
    """dcam-export's guard verdict for one file as its manifest records it (``accuracy.guard``)."""

    passed: bool
    violations: tuple[str, ...]
    allowed_by_flag: bool  # the drop was accepted with dcam-export --allow-accuracy-drop

    @property
    def refuses(self) -> bool:
        """Whether the file must not run: it failed the guard and the drop was not accepted."""
        return not self.passed and not self.allowed_by_flag


def recorded_guard(accuracy: Mapping[str, Any] | None) -> GuardRecord | None:
    """The verdict in a manifest's ``accuracy`` section; None when it records none (no boolean ``passed``)."""
    guard = (accuracy or {}).get("guard")
    if not isinstance(guard, Mapping) or not isinstance(guard.get("passed"), bool):
        return None
    return GuardRecord(guard["passed"], tuple(str(v) for v in guard.get("violations") or ()),
                       bool(guard.get("allowed_by_flag")))

"""Evaluation figures: per test image "image | ground truth | heatmap overlay", per category ROC and PRO curves.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed).
Heatmaps of one category share one colour range, taken from normal images (see ``heatmap_range``),
so colours mean the same anomaly level in every figure of that category.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from edge.metrics import f1_max, image_auroc, pixel_auroc, pixel_roc_curve, pro_curve, roc_curve, trapezoid
from edge.preprocess import PreprocessSpec, load_image

HEATMAP_CMAP = "jet"
# Overlay opacity ramps from MIN (at vmin) to MAX (at vmax) so normal regions keep the image visible.
OVERLAY_ALPHA_MIN, OVERLAY_ALPHA_MAX = 0.1, 0.65


def unnormalize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Model input float32 3×S×S → displayable H×W×3 RGB in [0, 1] (inverse of edge.preprocess.normalize)."""
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    return np.clip(image * std + mean, 0.0, 1.0).transpose(1, 2, 0)


def heatmap_range(normal_maps: np.ndarray) -> tuple[float, float]:
    """Colour range from anomaly maps of normal images: (median pixel, max pixel).

    Below the median of normal pixels is "typical background" (bottom colour); the top colour means
    "as anomalous as the worst pixel of any normal image" and saturates beyond it.
    """
    values = np.asarray(normal_maps, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = float(np.median(values)), float(values.max())
    if vmax <= vmin:  # flat maps: any non-empty range keeps the colour scale well defined
        vmax = vmin + max(abs(vmin), 1.0) * 1e-3
    return vmin, vmax


def _overlay(rgb: np.ndarray, amap: np.ndarray, norm: Normalize) -> np.ndarray:
    level = np.clip(norm(amap), 0.0, 1.0)
    rgba = colormaps[HEATMAP_CMAP](level)
    rgba[..., 3] = OVERLAY_ALPHA_MIN + (OVERLAY_ALPHA_MAX - OVERLAY_ALPHA_MIN) * level
    return rgba


def save_sample_figure(path: str | Path, image: np.ndarray, mask: np.ndarray | None, anomaly_map: np.ndarray,
                       spec: PreprocessSpec, value_range: tuple[float, float], title: str = "") -> Path:
    """One PNG: model input (un-normalised) | ground-truth mask | anomaly map over the image (fixed range)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = unnormalize(image, spec)
    norm = Normalize(vmin=value_range[0], vmax=value_range[1])
    fig = Figure(figsize=(9.6, 3.4), dpi=100)
    axes = fig.subplots(1, 3)
    axes[0].imshow(rgb)
    axes[0].set_title("image")
    axes[1].imshow(np.zeros(rgb.shape[:2]) if mask is None else mask, cmap="gray", vmin=0, vmax=1,
                   interpolation="nearest")
    axes[1].set_title("ground truth")
    axes[2].imshow(rgb)
    axes[2].imshow(_overlay(rgb, anomaly_map, norm))
    axes[2].set_title("anomaly map")
    fig.colorbar(ScalarMappable(norm=norm, cmap=HEATMAP_CMAP), ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    return path


def save_roc_figure(path: str | Path, labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None = None,
                    maps: np.ndarray | None = None, title: str = "") -> Path:
    """Image-level ROC (and pixel-level ROC when masks/maps are given), AUROC in the legend."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.subplots()
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, label=f"image (AUROC {image_auroc(labels, scores):.3f})")
    if masks is not None and maps is not None:
        pfpr, ptpr = pixel_roc_curve(masks, maps)
        ax.plot(pfpr, ptpr, label=f"pixel (AUROC {pixel_auroc(masks, maps):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=title or "ROC")
    ax.legend(loc="lower right")
    fig.savefig(path)
    return path


def save_pro_figure(path: str | Path, masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3,
                    title: str = "") -> Path:
    """PRO curve over the full FPR range with the AU-PRO integration limit marked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fpr, pro = pro_curve(masks, maps)
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.subplots()
    if np.isfinite(fpr).all():
        area = trapezoid(fpr, pro, x_max=fpr_limit) / fpr_limit
        ax.plot(fpr, pro, label=f"AU-PRO@{fpr_limit:g} {area:.3f}")
        ax.legend(loc="lower right")
    ax.axvline(fpr_limit, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate (pixels)", ylabel="per-region overlap", xlim=(0, 1), ylim=(0, 1.01),
           title=title or "PRO")
    fig.savefig(path)
    return path


def sample_figure_name(path: str | Path, defect: str) -> str:
    """MVTec file names repeat across defect folders (000.png), so prefix the defect."""
    return f"{defect}_{Path(path).stem}.png"


def visualize_category(out_dir: str | Path, category: str, samples: Sequence, maps: np.ndarray,
                       scores: np.ndarray, masks: np.ndarray, spec: PreprocessSpec,
                       value_range: tuple[float, float], fpr_limit: float = 0.3) -> list[Path]:
    """Write OUT/<category>/images/<defect>_<name>.png for every sample plus OUT/<category>/roc.png, pro.png.

    samples: train.data Sample objects (path, label, defect) in the order of maps/scores/masks.
    """
    cat_dir = Path(out_dir) / category
    labels = np.array([s.label for s in samples], dtype=np.int64)
    written = []
    for sample, amap, score, mask in zip(samples, maps, scores, masks):
        image = load_image(sample.path, spec)  # the exact model input, so the figure shows what was scored
        name = sample_figure_name(sample.path, sample.defect)
        title = f"{category}/{sample.defect}/{Path(sample.path).name}  score {float(score):.4g}"
        written.append(save_sample_figure(cat_dir / "images" / name, image, mask, amap, spec, value_range, title))
    f1, threshold = f1_max(labels, scores) if labels.any() else (float("nan"), float("nan"))
    roc_title = f"{category} ROC (F1-max {f1:.3f} at {threshold:.4g})"
    written.append(save_roc_figure(cat_dir / "roc.png", labels, scores, masks, maps, title=roc_title))
    written.append(save_pro_figure(cat_dir / "pro.png", masks, maps, fpr_limit, title=f"{category} PRO"))
    return written

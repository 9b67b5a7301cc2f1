"""``dcam-eval``: score a run's model on MVTec-layout test sets and report the standard metrics.

Per category: image AUROC, pixel AUROC, AU-PRO up to FPR 0.3 (MVTec AD, Bergmann et al. IJCV 2021),
image F1-max, and the measured inference time. The metric table is edge.accuracy's (numpy only), the one
dcam-export and bench-latency report too; ``evaluate_scores`` applies it to any scorer's outputs.

ms_per_image: wall time of the inference model's forward pass (attention-free graph incl. the distance
head: upsample, sum, blur, max), including the host→device copy of the batch and the device→host copy
of the outputs, at --batch-size, after one untimed warm-up forward; divided by the number of images.
Image decoding, resizing, normalisation and metric computation are NOT included.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from edge.accuracy import AUPRO_FPR_LIMIT, COUNT_KEYS, METRIC_KEYS, category_means, category_metrics, category_table
from edge.cliconfig import ConfigCli, option, run_cli
from edge.jsonsafe import write_json as write_strict_json
from edge.metrics import MetricWarning, image_auroc, spro
from edge.preprocess import PreprocessSpec
from train.device import resolve_device

RESULT_KEYS = METRIC_KEYS + ("ms_per_image",) + COUNT_KEYS
SPRO_FPR_LIMIT = 0.05  # MVTec LOCO AD reports sPRO up to this false positive rate


class EvalError(ValueError):
    """Bad evaluation input (missing directory, unavailable device, unsupported option)."""


@dataclass
class EvalConfig:
    """dcam-eval options (one field per CLI flag and ``--config`` key)."""

    run: str = option("", "run directory written by dcam-train (config.json, best.pt)")
    data: str = option("", "dataset root in MVTec AD layout")
    categories: str | None = option(None, "'all' or comma-separated names (default: the run's categories)")
    json: str | None = option(None, "write the results as JSON", metavar="OUT.json")
    visualize: str | None = option(None, "write per-image figures and per-category ROC/PRO curves to DIR",
                                   metavar="DIR")
    scores: str | None = option(None, "write every test image's score (path, category, defect, label, score) as CSV",
                                metavar="OUT.csv")
    batch_size: int = option(8, "images per forward pass")
    device: str = option("auto", "auto | cpu | cuda")
    blur_sigma: float | None = option(None, "override the run's Gaussian blur σ of the anomaly map (0 = off)")
    level_scale: tuple[float, float, float] | None = option(
        None, "override the run's --level-scale (three factors, stride 4, 8, 16) on its normalised level maps")

    def __post_init__(self) -> None:
        if not self.run:
            raise EvalError("--run: expected a dcam-train run directory")
        if not self.data:
            raise EvalError("--data: expected a dataset root in MVTec AD layout")
        if self.batch_size <= 0:
            raise EvalError(f"--batch-size: expected a positive integer, got {self.batch_size}")
        if self.blur_sigma is not None and self.blur_sigma < 0:
            raise EvalError(f"--blur-sigma: expected a value >= 0, got {self.blur_sigma}")


@dataclass
class _Scored:
    maps: np.ndarray        # N×S×S float32
    scores: np.ndarray      # N float32
    masks: np.ndarray | None  # N×S×S uint8 {0,1}
    labels: np.ndarray      # N int64
    forward_s: float        # summed timed forward wall time


def _timed_forward(model: nn.Module, images: torch.Tensor, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    anomaly_map, score = model(images.to(device, non_blocking=False))
    maps = anomaly_map.detach().float().cpu().numpy()
    scores = score.detach().float().cpu().numpy()
    sync()
    return maps, scores, time.perf_counter() - start


@torch.no_grad()
def _score(model: nn.Module, samples: Sequence, spec: PreprocessSpec, batch_size: int, device: torch.device,
           with_masks: bool, desc: str = "score", progress: bool = True) -> _Scored:
    from train.data import ImageDataset  # the data layer imports torch lazily; keep edge-free imports cheap

    if batch_size <= 0:
        raise EvalError(f"--batch-size: expected a positive integer, got {batch_size}")
    n, size = len(samples), spec.image_size
    maps = np.empty((n, size, size), np.float32)
    scores = np.empty(n, np.float32)
    masks = np.empty((n, size, size), np.uint8) if with_masks else None
    labels = np.empty(n, np.int64)
    if n == 0:
        return _Scored(maps, scores, masks, labels, 0.0)
    model = model.eval()
    loader = DataLoader(ImageDataset(list(samples), spec, with_masks=with_masks), batch_size=batch_size,
                        shuffle=False, num_workers=0)
    total_s, i = 0.0, 0
    warmed = False
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, file=sys.stderr, leave=False):
        images = batch["image"]
        if not warmed:  # first call pays one-time allocation / kernel selection: keep it out of the timing
            _timed_forward(model, images[:1], device)
            warmed = True
        batch_maps, batch_scores, seconds = _timed_forward(model, images, device)
        total_s += seconds
        b = images.shape[0]
        if batch_maps.shape != (b, 1, size, size) or batch_scores.shape != (b,):
            raise EvalError(f"inference model returned anomaly_map {batch_maps.shape} and score {batch_scores.shape}; "
                            f"expected ({b}, 1, {size}, {size}) and ({b},)")
        maps[i:i + b] = batch_maps[:, 0]
        scores[i:i + b] = batch_scores
        labels[i:i + b] = np.asarray(batch["label"])
        if masks is not None:
            masks[i:i + b] = np.asarray(batch["mask"])[:, 0]
        i += b
    return _Scored(maps, scores, masks, labels, total_s)


def score_samples(inference_model: nn.Module, samples: Sequence, spec: PreprocessSpec, batch_size: int = 8,
                  device: str | torch.device = "cpu", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run the inference graph over samples (train.data.Sample) → (maps float32 N×S×S, scores float32 N)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    scored = _score(inference_model.to(dev), samples, spec, batch_size, dev, with_masks=False, progress=progress)
    return scored.maps, scored.scores


def summarize(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The "mean" row: edge.accuracy's metric means over categories, ms_per_image averaged per image
    (total time / total images), n_images / n_anomalous summed."""
    rows = list(per_category.values())
    mean = category_means(per_category, METRIC_KEYS)
    timed = [(float(r["ms_per_image"]), int(r["n_images"])) for r in rows if math.isfinite(float(r["ms_per_image"]))]
    n_timed = sum(n for _, n in timed)
    mean["ms_per_image"] = sum(ms * n for ms, n in timed) / n_timed if n_timed else float("nan")
    for key in COUNT_KEYS:
        mean[key] = int(sum(int(r[key]) for r in rows))
    return mean


def evaluate_scores(sample_categories: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                    masks: np.ndarray | None = None, maps: np.ndarray | None = None,
                    ms_per_image: float | Mapping[str, float] | None = None,
                    fpr_limit: float = AUPRO_FPR_LIMIT) -> dict[str, Any]:
    """Per-category table + mean from per-sample arrays (any scorer: torch model, ONNX, OpenVINO, TFLite).

    sample_categories[i] names the category of sample i; masks/maps (N×S×S) are optional (pixel metrics
    nan without them); ms_per_image is one figure for all categories or a per-category mapping.
    Returns {"categories": {cat: {...RESULT_KEYS}}, "mean": {...}}; categories in first-seen order.
    """
    per_category: dict[str, dict[str, Any]] = {}
    for cat, row in category_table(sample_categories, labels, scores, masks, maps, fpr_limit=fpr_limit).items():
        ms = ms_per_image.get(cat) if isinstance(ms_per_image, Mapping) else ms_per_image
        row["ms_per_image"] = float("nan") if ms is None else float(ms)
        per_category[cat] = {k: row[k] for k in RESULT_KEYS}
    return {"categories": per_category, "mean": summarize(per_category)}


def evaluate_model(inference_model: nn.Module, spec: PreprocessSpec, data: str | Path, categories: Sequence[str],
                   batch_size: int = 8, device: str | torch.device = "auto", visualize_dir: str | Path | None = None,
                   val_fraction: float = 0.2, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Evaluate an inference graph (forward(x) → (map B×1×S×S, score B)) category by category.

    One category's maps are in memory at a time. With visualize_dir, heatmaps use one colour range per
    category from the run's validation images (the same seeded split of train/good as training, via
    val_fraction/seed), falling back to the normal test images when the dataset has no train/good.
    """
    from train.data import MVTecLayoutError, list_test_samples, training_split
    from train.visualize import heatmap_range, visualize_category

    dev = resolve_device(device) if isinstance(device, str) else device
    model = inference_model.to(dev).eval()
    test_samples = {cat: list_test_samples(data, [cat]) for cat in categories}  # layout errors before any work
    per_category: dict[str, dict[str, Any]] = {}
    images: list[dict[str, Any]] = []
    for cat in categories:
        samples = test_samples[cat]
        with_masks = has_masks(samples)
        if not with_masks:
            print(f"note: {cat}: no ground_truth/ masks; image metrics only (pixel AUROC and AUPRO n/a)",
                  file=sys.stderr)
        scored = _score(model, samples, spec, batch_size, dev, with_masks=with_masks, desc=f"{cat}",
                        progress=progress)
        row = category_metrics(scored.labels, scored.scores, scored.masks, scored.maps, category=cat)
        row["ms_per_image"] = 1000.0 * scored.forward_s / max(len(samples), 1)
        per_category[cat] = {k: row[k] for k in RESULT_KEYS}
        per_category[cat]["defects"] = defect_aurocs(samples, scored.labels, scored.scores)
        if with_masks and any(s.mask_path is not None and s.mask_path.is_dir() for s in samples):
            per_category[cat]["spro"] = loco_spro(samples, scored.maps, scored.labels, spec, Path(data) / cat)
        images.extend({"path": str(s.path), "category": cat, "defect": s.defect, "label": int(label),
                       "score": float(score)} for s, label, score in zip(samples, scored.labels, scored.scores))
        if visualize_dir is None:
            continue
        if scored.masks is None:
            print(f"note: {cat}: no masks, no figures", file=sys.stderr)
            continue
        try:
            _, val = training_split(data, [cat], val_fraction, seed)
        except MVTecLayoutError:
            val = []
        if val:
            normal_maps = score_samples(model, val, spec, batch_size, dev, progress=False)[0]
        else:
            print(f"note: {cat}: no train/good images; heatmap range from the normal test images", file=sys.stderr)
            normal_maps = scored.maps[scored.labels == 0] if (scored.labels == 0).any() else scored.maps
        visualize_category(visualize_dir, cat, samples, scored.maps, scored.scores, scored.masks, spec,
                           heatmap_range(normal_maps), AUPRO_FPR_LIMIT)
    return {"categories": per_category, "mean": summarize(per_category), "images": images}


def loco_spro(samples: Sequence, maps: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
              category_dir: Path) -> float:
    """MVTec LOCO's sPRO up to FPR 0.05 (its own metric; defects_config.json's saturation thresholds)."""
    from train.data.loco import defect_regions, load_saturations

    saturations = load_saturations(category_dir)
    anomalous = [i for i, s in enumerate(samples) if labels[i] == 1]
    regions = [defect_regions(samples[i], spec, saturations) for i in anomalous]
    return spro(regions, [maps[i] for i in anomalous], maps[labels == 0], SPRO_FPR_LIMIT)


def has_masks(samples: Sequence) -> bool:
    """Whether every anomalous sample has a ground-truth mask (data sets with image-level labels have none)."""
    return all(s.mask_path is not None for s in samples if s.label == 1)


def defect_aurocs(samples: Sequence, labels: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float]]:
    """Image AUROC of each defect type against the category's normal test images: which defects a model misses."""
    defects = np.asarray([s.defect for s in samples], dtype=object)
    normal = labels == 0
    result: dict[str, dict[str, float]] = {}
    for defect in dict.fromkeys(defects[labels == 1].tolist()):
        pick = normal | (defects == defect)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)  # no normal test image: nan, reported as n/a
            auroc = image_auroc(labels[pick], scores[pick])
        result[defect] = {"image_auroc": auroc, "n_images": int((defects == defect).sum())}
    return result


def write_scores_csv(result: Mapping[str, Any], path: str | Path) -> Path:
    """One row per test image: path, category, defect, label, score (sorted as evaluated)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "category", "defect", "label", "score"])
        writer.writeheader()
        writer.writerows(result.get("images", []))
    return path


def _set_blur_sigma(model: nn.Module, sigma: float) -> None:
    from train.models.head import DistanceHead

    if sigma < 0:
        raise EvalError(f"--blur-sigma: expected a value >= 0, got {sigma}")
    head = getattr(model, "head", None)
    if not isinstance(head, DistanceHead):
        raise EvalError(f"--blur-sigma: {type(model).__name__} has no DistanceHead 'head' to override")
    head.set_blur_sigma(sigma)


def _set_level_scale(model: nn.Module, cfg: Any, scale: Sequence[float]) -> None:
    """Re-weight a level-normalised run's maps as if it had been fitted with ``scale`` (w_k · new_k / old_k): the
    same trained student scored both ways (a paired comparison)."""
    head = getattr(model, "head", None)
    if head is None or not cfg.model.level_normalize or not hasattr(head, "level_weights"):
        raise EvalError(f"--level-scale: the run was trained without --level-normalize ({cfg.model.method})")
    try:  # ModelConfig's own check of the factors
        new = dataclasses.replace(cfg.model, level_scale=tuple(float(x) for x in scale))
    except ValueError as e:
        raise EvalError(str(e)) from None
    pairs = list(zip(cfg.model.scored_level_scale, new.scored_level_scale))
    if any(o == 0 and n != 0 for o, n in pairs):
        raise EvalError("--level-scale: the run scored a level at 0; its normal spread was not kept to re-weight it")
    factors = [n / o if o else 0.0 for o, n in pairs]
    with torch.no_grad():
        head.level_weights.mul_(torch.tensor(factors, dtype=head.level_weights.dtype))
    cfg.model.level_scale = new.level_scale


def evaluate_run(run_dir: str | Path, data: str | Path, categories: str | Sequence[str] | None = None,
                 batch_size: int = 8, device: str = "auto", blur_sigma: float | None = None,
                 visualize_dir: str | Path | None = None, progress: bool = True,
                 level_scale: Sequence[float] | None = None) -> dict[str, Any]:
    """Load a dcam-train run (best.pt) and evaluate it on data's test sets.

    categories: None → the run's own categories; "all" → every category in data; "a,b" or a list.
    Returns {"categories": {...}, "mean": {...}, "run", "method", "backbone", "image_size", "device",
    "batch_size", "blur_sigma", "level_scale", "aupro_fpr_limit"}.
    """
    from train.data import parse_categories
    from train.runs import load_config, load_run, preprocess_spec

    run_dir, data = Path(run_dir), Path(data)
    cfg = load_config(run_dir)  # fails fast (RunError naming the file) before any heavy work
    if not data.is_dir():
        raise EvalError(f"--data {data}: dataset directory not found")
    cats = parse_categories(cfg.categories if categories is None else categories, data)
    dev = resolve_device(device)
    model, cfg = load_run(run_dir, dev)
    if blur_sigma is not None:
        _set_blur_sigma(model, blur_sigma)
        cfg.model.blur_sigma = blur_sigma
    if level_scale is not None:
        _set_level_scale(model, cfg, level_scale)
    result = evaluate_model(model.inference_model(), preprocess_spec(cfg), data, cats, batch_size, dev,
                            visualize_dir, cfg.val_fraction, cfg.seed, progress)
    result.update({"run": str(run_dir), "method": cfg.model.method, "backbone": cfg.model.backbone,
                   "image_size": cfg.image_size, "device": str(dev), "batch_size": batch_size,
                   "blur_sigma": cfg.model.blur_sigma, "level_scale": list(cfg.model.level_scale),
                   "aupro_fpr_limit": AUPRO_FPR_LIMIT})
    return result


def write_json(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write an evaluation result as strict JSON (nan → null)."""
    return write_strict_json(path, result)


def _metric_cell(value: Any) -> str:
    """A metric as a 7-wide table cell; n/a where it is undefined (nan)."""
    return "    n/a" if not math.isfinite(float(value)) else f"{float(value):7.4f}"


def format_table(result: Mapping[str, Any]) -> str:
    """Plain-text table: one row per category plus the mean row."""
    header = f"{'category':<16}{'images':>7}{'anom':>6}{'img AUROC':>11}{'px AUROC':>10}{'AUPRO':>8}" \
             f"{'F1max':>8}{'ms/img':>9}"
    fmt = _metric_cell
    lines = [header, "-" * len(header)]
    rows = list(result["categories"].items()) + [("mean", result["mean"])]
    for i, (name, r) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(header))
        ms = float(r["ms_per_image"])
        lines.append(f"{name:<16}{int(r['n_images']):>7}{int(r['n_anomalous']):>6}{fmt(r['image_auroc']):>11}"
                     f"{fmt(r['pixel_auroc']):>10}{fmt(r['aupro']):>8}{fmt(r['image_f1_max']):>8}"
                     f"{(f'{ms:9.2f}' if math.isfinite(ms) else '      n/a')}")
    defect_rows = [(cat, defect, r) for cat, row in result["categories"].items()
                   for defect, r in row.get("defects", {}).items()]
    if defect_rows:
        lines += ["", f"{'category':<16}{'defect':<20}{'images':>7}{'img AUROC':>11}"]
        lines += [f"{cat:<16}{defect:<20}{int(r['n_images']):>7}{fmt(r['image_auroc']):>11}"
                  for cat, defect, r in defect_rows]
    spro_rows = [(cat, row["spro"]) for cat, row in result["categories"].items() if "spro" in row]
    if spro_rows:
        lines += ["", f"{'category':<16}{'sPRO@0.05':>10}"] + [f"{cat:<16}{fmt(v):>10}" for cat, v in spro_rows]
    return "\n".join(lines)


CLI = ConfigCli(EvalConfig, "dcam-eval", "Evaluate a dcam-train run on MVTec-layout test sets "
                "(image/pixel AUROC, AU-PRO@0.3, F1-max, ms per image).")


def _print_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                   line: str | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr)  # one line, without the source location


def _evaluate(argv: Sequence[str] | None) -> int:
    with warnings.catch_warnings():  # restores showwarning on exit
        warnings.simplefilter("always", MetricWarning)
        warnings.showwarning = _print_warning
        cfg = CLI.parse(argv)
        result = evaluate_run(cfg.run, cfg.data, cfg.categories, cfg.batch_size, cfg.device, cfg.blur_sigma,
                              cfg.visualize, level_scale=cfg.level_scale)
    print(f"{result['method']} / {result['backbone']}  ({result['run']}, device {result['device']})")
    print(format_table(result))
    if cfg.json:
        print(f"wrote {write_json(result, cfg.json)}")
    if cfg.scores:
        print(f"wrote {write_scores_csv(result, cfg.scores)}")
    if cfg.visualize:
        print(f"figures in {cfg.visualize}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``dcam-eval``: RunError, MVTecLayoutError, ImageReadError, EvalError (ValueErrors) → one error line."""
    return run_cli(lambda: _evaluate(argv))


if __name__ == "__main__":
    sys.exit(main())

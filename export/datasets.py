"""Images for export: int8 calibration (training normals), validation normals and the labelled test split.

Every image goes through edge.preprocess — load_view here, preprocess_rgb per batch — so
calibration ranges and export-time accuracy figures are measured on exactly the tensors the edge runtime
builds.  Decoded images are cached as resized uint8 (4× smaller than the float tensors).

Split (the one dcam-train used): train.data.training_split(data, categories, cfg.val_fraction, cfg.seed) →
calibration draws from the training part, thresholds / Spearman / map correlation use the validation
part (images the student never saw).  ``--calib-data DIR`` replaces the calibration images with every
image under DIR; when the run's dataset is not reachable, 20 % of DIR (seeded) becomes the validation set.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.preprocess import (
    IMAGE_SUFFIXES,
    ImageReadError,
    PreprocessSpec,
    load_view,
    preprocess_rgb,
)

from .config import RECOMMENDED_CALIB_SAMPLES, ExportError

HELD_OUT_FRACTION = 0.2  # validation share of --calib-data when the run's dataset is unavailable


class CalibrationWarning(UserWarning):
    """Fewer calibration images than post-training quantisation wants."""


@dataclass
class ImageSet:
    """Decoded, resized images (N×S×S×3 uint8 RGB) with labels, categories and optional masks (N×S×S)."""

    rgb: np.ndarray
    paths: list[str]
    categories: list[str]
    labels: np.ndarray
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, spec: PreprocessSpec, batch_size: int = 16, limit: int | None = None) -> Iterator[np.ndarray]:
        """Normalised float32 B×3×S×S batches (edge.preprocess.preprocess_rgb per image) of the first ``limit``
        images (all by default)."""
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(0, n, batch_size):
            yield np.stack([preprocess_rgb(rgb, spec) for rgb in self.rgb[i:min(i + batch_size, n)]])

    def arrays(self, spec: PreprocessSpec, limit: int | None = None) -> np.ndarray:
        """The first ``limit`` images (all by default) as one normalised float32 N×3×S×S array."""
        batches = list(self.batches(spec, limit=limit))
        return np.concatenate(batches) if batches else np.zeros((0, 3, spec.image_size, spec.image_size), np.float32)


@dataclass
class ExportData:
    """What export needs besides the model."""

    calibration: ImageSet
    validation: ImageSet
    test: ImageSet | None
    sources: dict[str, Any] = field(default_factory=dict)


def load_image_set(paths: Sequence[Path], categories: Sequence[str], labels: Sequence[int], spec: PreprocessSpec,
                   mask_paths: Sequence[Path | None] | None = None, desc: str = "images",
                   progress: bool = True) -> ImageSet:
    """Decode and fit images (and masks) to the spec with edge.preprocess; ExportError naming a bad file."""
    s = spec.image_size
    rgb = np.empty((len(paths), s, s, 3), np.uint8)
    masks = np.zeros((len(paths), s, s), np.uint8) if mask_paths is not None else None
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False, disable=not progress)):
        try:
            view, mask = load_view(path, spec, mask_paths[i] if mask_paths is not None else None)
            rgb[i] = view
            if masks is not None and mask is not None:
                masks[i] = mask
        except ImageReadError as exc:
            raise ExportError(str(exc)) from None
    return ImageSet(rgb, [str(p) for p in paths], [str(c) for c in categories], np.asarray(labels, np.int64), masks)


def list_images(directory: str | Path) -> list[Path]:
    """Every image file under ``directory`` (recursive, sorted); ExportError if none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"--calib-data {directory}: directory not found")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportError(f"--calib-data {directory}: no images found (expected {', '.join(IMAGE_SUFFIXES)})")
    return files


def _subset(items: list, n: int, seed: int) -> list:
    """A seeded random subset of at most n items, in their original order."""
    if len(items) <= n:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def _dataset_available(data: str, categories: Sequence[str]) -> bool:
    root = Path(data) if data else None
    return bool(root and categories and all((root / c / "train" / "good").is_dir() for c in categories))


Item = tuple[Any, str]  # (image path, category)


def _dataset_normals(cfg: Any, categories: Sequence[str]) -> tuple[list[Item], list[Item]]:
    """The run's own train/good split: (training part, validation part), as dcam-train split it."""
    from train.data.mvtec import MVTecLayoutError, training_split

    try:
        train_part, val_part = training_split(cfg.data, list(categories), cfg.val_fraction, cfg.seed)
    except MVTecLayoutError as exc:
        raise ExportError(str(exc)) from None
    return [(s.path, s.category) for s in train_part], [(s.path, s.category) for s in val_part]


def _hold_out(items: list[Item], seed: int) -> tuple[list[Item], list[Item]]:
    """Seeded split of --calib-data into (calibration, validation = HELD_OUT_FRACTION of it)."""
    n_val = max(1, round(HELD_OUT_FRACTION * len(items))) if len(items) > 1 else 0
    chosen = set(random.Random(f"{seed}:calib-val").sample(range(len(items)), n_val))
    return [it for i, it in enumerate(items) if i not in chosen], [items[i] for i in sorted(chosen)]


def _select_normals(cfg: Any, categories: Sequence[str], calib_data: str | None,
                    seed: int) -> tuple[list[Item], list[Item], dict[str, Any]]:
    """(calibration items, validation items, where each came from) — see the module docstring."""
    have_dataset = _dataset_available(cfg.data, categories)
    if not have_dataset and calib_data is None:
        raise ExportError(f"the run's dataset {cfg.data or '(none)'} is not reachable for categories "
                          f"{list(categories) or '?'}; pass --calib-data DIR with normal images")
    sources: dict[str, Any] = {}
    train_items: list[Item] = []
    val_items: list[Item] = []
    if have_dataset:
        train_items, val_items = _dataset_normals(cfg, categories)
        sources["validation"] = (f"{cfg.data}: train/good validation split "
                                 f"(val_fraction {cfg.val_fraction}, seed {cfg.seed})")
    if calib_data is None:
        calib_items = train_items
        sources["calibration"] = f"{cfg.data}: train/good training split"
    else:
        single = categories[0] if len(categories) == 1 else "all"
        calib_items = [(p, single) for p in list_images(calib_data)]
        if not have_dataset:
            calib_items, val_items = _hold_out(calib_items, seed)
            sources["validation"] = f"--calib-data {calib_data}: seeded {HELD_OUT_FRACTION:.0%} hold-out"
        sources["calibration"] = f"--calib-data {calib_data}"
    if not val_items:
        raise ExportError("no validation normals: thresholds and the accuracy guard need at least one held-out "
                          "normal image (check the run's --val-fraction or --calib-data)")
    return calib_items, val_items, sources


def _load_normals(items: list[Item], spec: PreprocessSpec, desc: str, progress: bool) -> ImageSet:
    return load_image_set([p for p, _ in items], [c for _, c in items], [0] * len(items), spec, desc=desc,
                          progress=progress)


def _load_test_set(cfg: Any, categories: Sequence[str], spec: PreprocessSpec,
                   progress: bool) -> tuple[ImageSet | None, str | None]:
    """The run's labelled test split and its description, or (None, None) when the dataset has none here."""
    from train.data.mvtec import MVTecLayoutError, list_test_samples

    if not (_dataset_available(cfg.data, categories)
            and all((Path(cfg.data) / c / "test").is_dir() for c in categories)):
        return None, None
    try:
        samples = list_test_samples(cfg.data, list(categories))
    except MVTecLayoutError as exc:
        raise ExportError(str(exc)) from None
    # Image-level labels only (no mask for some anomalous image): no pixel metrics.
    masks = [s.mask_path for s in samples] if all(s.mask_path for s in samples if s.label) else None
    test = load_image_set([s.path for s in samples], [s.category for s in samples], [s.label for s in samples],
                          spec, desc="test images", mask_paths=masks, progress=progress)
    return test, f"{cfg.data}: test split ({len(samples)} images)"


def load_export_data(cfg: Any, categories: Sequence[str], spec: PreprocessSpec, calib_data: str | None = None,
                     calib_samples: int = RECOMMENDED_CALIB_SAMPLES, seed: int = 0,
                     progress: bool = True) -> ExportData:
    """Calibration, validation and test images for a run (``cfg``: its TrainConfig), fitted as ``spec`` says."""
    calib_items, val_items, sources = _select_normals(cfg, categories, calib_data, seed)
    calib_items = _subset(calib_items, calib_samples, seed)
    if len(calib_items) < RECOMMENDED_CALIB_SAMPLES:
        warnings.warn(f"int8 calibration uses {len(calib_items)} normal images (< {RECOMMENDED_CALIB_SAMPLES} "
                      f"recommended); activation ranges may be unrepresentative", CalibrationWarning, stacklevel=2)
    sources["calibration_images"] = len(calib_items)
    calibration = _load_normals(calib_items, spec, "calibration images", progress)
    validation = _load_normals(val_items, spec, "validation normals", progress)
    test, sources["test"] = _load_test_set(cfg, categories, spec, progress)
    return ExportData(calibration, validation, test, sources)

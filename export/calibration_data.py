"""Images for export: int8 calibration (training normals), validation normals and the labelled test split.

Every image goes through edge.preprocess — decode_image → resize_rgb here, preprocess_rgb per batch — so
calibration ranges and export-time accuracy figures are measured on exactly the tensors the edge runtime
builds.  Decoded images are cached as resized uint8 (4× smaller than the float tensors).

Split (the one dcam-train used): train.data.split_train_val(train/good, cfg.val_fraction, cfg.seed) →
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

from edge.preprocess import ImageReadError, PreprocessSpec, decode_image, load_mask, preprocess_rgb, resize_rgb

from .config import RECOMMENDED_CALIB_SAMPLES, ExportError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
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

    def batches(self, spec: PreprocessSpec, batch_size: int = 16) -> Iterator[np.ndarray]:
        """Normalised float32 B×3×S×S batches (edge.preprocess.preprocess_rgb per image)."""
        for i in range(0, len(self), batch_size):
            yield np.stack([preprocess_rgb(rgb, spec) for rgb in self.rgb[i:i + batch_size]])

    def arrays(self, spec: PreprocessSpec) -> np.ndarray:
        return np.concatenate(list(self.batches(spec))) if len(self) else np.zeros((0, 3, spec.image_size,
                                                                                   spec.image_size), np.float32)


@dataclass
class ExportData:
    """What export needs besides the model."""

    calibration: ImageSet
    validation: ImageSet
    test: ImageSet | None
    sources: dict[str, Any] = field(default_factory=dict)


def load_image_set(paths: Sequence[Path], categories: Sequence[str], labels: Sequence[int], image_size: int,
                   mask_paths: Sequence[Path | None] | None = None, desc: str = "images",
                   progress: bool = True, resize: str = "area") -> ImageSet:
    """Decode and resize images (and masks) with edge.preprocess; ExportError naming a bad file."""
    s = image_size
    rgb = np.empty((len(paths), s, s, 3), np.uint8)
    masks = np.zeros((len(paths), s, s), np.uint8) if mask_paths is not None else None
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False, disable=not progress)):
        try:
            image = decode_image(path)
            rgb[i] = resize_rgb(image, s, resize)
            if masks is not None and mask_paths[i] is not None:
                masks[i] = load_mask(mask_paths[i], image.shape[:2], s)
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
        raise ExportError(f"--calib-data {directory}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
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


def load_export_data(cfg: Any, categories: Sequence[str], image_size: int, calib_data: str | None = None,
                     calib_samples: int = RECOMMENDED_CALIB_SAMPLES, seed: int = 0,
                     progress: bool = True) -> ExportData:
    """Calibration, validation and test images for a run (``cfg``: its TrainConfig)."""
    from train.data.mvtec import MVTecLayoutError, list_test_samples, list_train_samples, split_train_val

    sources: dict[str, Any] = {}
    have_dataset = _dataset_available(cfg.data, categories)
    train_part: list = []
    val_part: list = []
    val_items: list = []
    if have_dataset:
        try:
            train_part, val_part = split_train_val(list_train_samples(cfg.data, list(categories)),
                                                   cfg.val_fraction, cfg.seed)
        except MVTecLayoutError as exc:
            raise ExportError(str(exc)) from None
        sources["validation"] = (f"{cfg.data}: train/good validation split "
                                 f"(val_fraction {cfg.val_fraction}, seed {cfg.seed})")
    elif calib_data is None:
        raise ExportError(f"the run's dataset {cfg.data or '(none)'} is not reachable for categories "
                          f"{list(categories) or '?'}; pass --calib-data DIR with normal images")
    if calib_data is not None:
        files = list_images(calib_data)
        single = categories[0] if len(categories) == 1 else "all"
        calib_items = [(p, single) for p in files]
        if not have_dataset:
            n_val = max(1, round(HELD_OUT_FRACTION * len(files))) if len(files) > 1 else 0
            chosen = set(random.Random(f"{seed}:calib-val").sample(range(len(files)), n_val))
            val_items = [calib_items[i] for i in sorted(chosen)]
            calib_items = [it for i, it in enumerate(calib_items) if i not in chosen]
            sources["validation"] = f"--calib-data {calib_data}: seeded {HELD_OUT_FRACTION:.0%} hold-out"
        sources["calibration"] = f"--calib-data {calib_data}"
    else:
        calib_items = [(s.path, s.category) for s in train_part]
        sources["calibration"] = f"{cfg.data}: train/good training split"
    if have_dataset:
        val_items = [(s.path, s.category) for s in val_part]
    if not val_items:
        raise ExportError("no validation normals: thresholds and the accuracy guard need at least one held-out "
                          "normal image (check the run's --val-fraction or --calib-data)")
    calib_items = _subset(calib_items, calib_samples, seed)
    if len(calib_items) < RECOMMENDED_CALIB_SAMPLES:
        warnings.warn(f"int8 calibration uses {len(calib_items)} normal images (< {RECOMMENDED_CALIB_SAMPLES} "
                      f"recommended); activation ranges may be unrepresentative", CalibrationWarning, stacklevel=2)
    sources["calibration_images"] = len(calib_items)
    resize = getattr(cfg, "resize", "area")  # the run's resize policy (runs saved before it: "linear")
    calibration = load_image_set([p for p, _ in calib_items], [c for _, c in calib_items], [0] * len(calib_items),
                                 image_size, desc="calibration images", progress=progress, resize=resize)
    validation = load_image_set([p for p, _ in val_items], [c for _, c in val_items], [0] * len(val_items),
                                image_size, desc="validation normals", progress=progress, resize=resize)
    test = None
    if have_dataset and all((Path(cfg.data) / c / "test").is_dir() for c in categories):
        try:
            samples = list_test_samples(cfg.data, list(categories))
        except MVTecLayoutError as exc:
            raise ExportError(str(exc)) from None
        test = load_image_set([s.path for s in samples], [s.category for s in samples], [s.label for s in samples],
                              image_size, desc="test images",
                              mask_paths=([s.mask_path for s in samples]  # image-level labels only: no pixel metrics
                                          if all(s.mask_path for s in samples if s.label) else None),
                              progress=progress, resize=resize)
        sources["test"] = f"{cfg.data}: test split ({len(samples)} images)"
    else:
        sources["test"] = None
    return ExportData(calibration, validation, test, sources)

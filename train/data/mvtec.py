"""MVTec AD directory layout: category discovery, sample lists and the seeded train/validation split.

Layout (Bergmann et al., MVTec AD, CVPR 2019)::

    <root>/<category>/train/good/*.png|jpg
    <root>/<category>/test/<defect>/*.png|jpg          (test/good = normal test images)
    <root>/<category>/ground_truth/<defect>/<name>_mask.png   (anomalous test images only)

MVTec LOCO AD (Bergmann et al., IJCV 2022) is read too: ``ground_truth/<defect>/<name>/000.png, 001.png …``
(one mask per defect region, unioned for pixel metrics, kept apart for sPRO), ``<category>/validation/good``
as the validation split, and ``defects_config.json`` (saturation thresholds) beside them.

This module needs only numpy/OpenCV (no torch), so evaluation and benchmarking can list samples
without the training stack. Every layout problem raises one line naming the offending file or
directory, before any training or evaluation time is spent.
"""
from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.preprocess import IMAGE_SUFFIXES, ImageReadError, decode_image, jpeg_hw, mask_files

GOOD = "good"
MASK_SUFFIX = "_mask.png"

__all__ = [
    "GOOD", "IMAGE_SUFFIXES", "MVTecLayoutError", "Sample", "discover_categories", "parse_categories",
    "list_train_samples", "list_test_samples", "list_validation_samples", "split_train_val", "image_hw",
    "ground_truth_path", "mask_files", "training_split",
]


class MVTecLayoutError(ValueError):
    """The dataset directory does not follow the MVTec AD layout; the message names the file/dir."""


@dataclass(frozen=True)
class Sample:
    """One image of the dataset. label: 0 = normal ("good"), 1 = anomalous; mask_path only for label 1."""

    path: Path
    category: str
    label: int
    defect: str
    mask_path: Path | None = None


def discover_categories(root: str | Path) -> list[str]:
    """Sorted category names: sub-directories of root that contain a train/ or test/ directory."""
    root = Path(root)
    if not root.is_dir():
        raise MVTecLayoutError(f"{root}: dataset root directory not found")
    cats = sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and ((p / "train").is_dir() or (p / "test").is_dir()))
    if not cats:
        # A common mistake is to pass one category directory instead of the dataset root.
        hint = "; this looks like a single category, pass its parent" if (root / "train").is_dir() else ""
        raise MVTecLayoutError(f"{root}: no category directories found (expected <root>/<category>/train/good){hint}")
    return cats


def parse_categories(arg: str | Sequence[str], root: str | Path) -> list[str]:
    """'all' → every discovered category; 'a,b' (or a list) → those names, de-duplicated, in the given order."""
    root = Path(root)
    names = [arg] if isinstance(arg, str) else list(arg)
    names = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if not names:
        raise MVTecLayoutError(
            f"--categories: expected 'all' or a comma-separated list of names under {root}, got {arg!r}")
    if names == ["all"]:
        return discover_categories(root)
    if not root.is_dir():
        raise MVTecLayoutError(f"{root}: dataset root directory not found")
    out: list[str] = []
    for name in names:
        if name in out:
            continue
        if name == "all" or "/" in name or "\\" in name or name.startswith(".") or not (root / name).is_dir():
            available = ", ".join(p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))
            raise MVTecLayoutError(f"{root / name}: unknown category {name!r} (available: {available or 'none'})")
        out.append(name)
    return out


def image_hw(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its PNG/JPEG header (full decode only for other formats).

    Reading headers lets the layout checks cover every mask of MVTec in well under a second.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(height), int(width)
    if head[:2] == b"\xff\xd8":
        hw = jpeg_hw(path.read_bytes())
        if hw is not None:
            return hw
    height, width = decode_image(path).shape[:2]
    return int(height), int(width)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MVTecLayoutError(f"{path}: {what} directory not found")
    return path


def _list_images(directory: Path) -> list[Path]:
    """Image files in a directory, sorted by name; each must at least have a readable header."""
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    for p in files:
        image_hw(p)  # fail now (naming the file) rather than inside a DataLoader worker mid-epoch
    return files


def _resolve(root: Path, categories: str | Sequence[str]) -> list[str]:
    names = parse_categories(categories, root)
    for name in names:
        _require_dir(root / name, f"category {name!r}")
    return names


def list_train_samples(root: str | Path, categories: str | Sequence[str]) -> list[Sample]:
    """All <root>/<cat>/train/good images (label 0), category by category, sorted by file name."""
    root = Path(root)
    samples: list[Sample] = []
    for cat in _resolve(root, categories):
        good = _require_dir(root / cat / "train" / GOOD, "training images (train/good)")
        files = _list_images(good)
        if not files:
            raise MVTecLayoutError(f"{good}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files)")
        samples.extend(Sample(path=p, category=cat, label=0, defect=GOOD) for p in files)
    return samples


def list_test_samples(root: str | Path, categories: str | Sequence[str]) -> list[Sample]:
    """All <root>/<cat>/test/<defect> images; anomalous ones get their ground-truth mask, checked eagerly.

    Each mask must exist at ground_truth/<defect>/<name>_mask.png and have its image's height and width.
    A category without a ground_truth/ directory has image-level labels only: its anomalous samples get
    mask_path None (image metrics only; pixel metrics are reported as undefined).
    """
    root = Path(root)
    samples: list[Sample] = []
    for cat in _resolve(root, categories):
        test_dir = _require_dir(root / cat / "test", "test images")
        defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        cat_samples: list[Sample] = []
        for ddir in defect_dirs:
            for img in _list_images(ddir):
                if ddir.name == GOOD:
                    cat_samples.append(Sample(path=img, category=cat, label=0, defect=GOOD))
                    continue
                if not (root / cat / "ground_truth").is_dir():
                    cat_samples.append(Sample(path=img, category=cat, label=1, defect=ddir.name))
                    continue
                mask = ground_truth_path(root / cat / "ground_truth" / ddir.name, img)
                img_hw = image_hw(img)
                for part in mask_files(mask):
                    if image_hw(part) != img_hw:
                        mask_hw = image_hw(part)
                        raise MVTecLayoutError(f"{part}: mask is {mask_hw[1]}x{mask_hw[0]} but its image {img} "
                                               f"is {img_hw[1]}x{img_hw[0]}")
                cat_samples.append(Sample(path=img, category=cat, label=1, defect=ddir.name, mask_path=mask))
        if not cat_samples:
            raise MVTecLayoutError(f"{test_dir}: no test images found (expected test/<defect>/*.png)")
        samples.extend(cat_samples)
    return samples


def ground_truth_path(defect_dir: Path, image: Path) -> Path:
    """An anomalous image's mask: MVTec AD's ``<name>_mask.png`` or MVTec LOCO's directory ``<name>/`` of masks."""
    mask = defect_dir / f"{image.stem}{MASK_SUFFIX}"
    if mask.is_file():
        return mask
    if (defect_dir / image.stem).is_dir() and mask_files(defect_dir / image.stem):
        return defect_dir / image.stem
    raise MVTecLayoutError(f"{mask}: ground-truth mask not found for anomalous test image {image} "
                           f"(nor a LOCO mask directory {defect_dir / image.stem}/)")


def list_validation_samples(root: str | Path, categories: str | Sequence[str]) -> list[Sample] | None:
    """The data set's own validation normals (``<cat>/validation/good``, MVTec LOCO), or None when a category
    has none (then a seeded share of train/good is held out: split_train_val)."""
    root = Path(root)
    names = _resolve(root, categories)
    if not all((root / cat / "validation" / GOOD).is_dir() for cat in names):
        return None
    samples = [Sample(path=p, category=cat, label=0, defect=GOOD)
               for cat in names for p in _list_images(root / cat / "validation" / GOOD)]
    return samples or None


def training_split(root: str | Path, categories: str | Sequence[str], val_fraction: float = 0.2,
                   seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(training normals, validation normals) of a run, as training, export and evaluation all take them:
    every train/good image and the data set's own validation/good where it ships one (MVTec LOCO), else a seeded
    share of train/good held out (split_train_val)."""
    samples = list_train_samples(root, categories)
    own_validation = list_validation_samples(root, categories)
    return (samples, own_validation) if own_validation is not None else split_train_val(samples, val_fraction, seed)


def split_train_val(samples: Sequence[Sample], val_fraction: float = 0.2,
                    seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of normal training images into (train, validation), separately per category.

    Each category keeps round(val_fraction · n) images for validation (at least one when n ≥ 2 and
    val_fraction > 0, never all of them). The result depends only on the seed, the category name and
    the set of paths — not on input order or on which other categories are present.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction: expected a value in [0, 1), got {val_fraction}")
    by_cat: dict[str, list[Sample]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for cat, items in by_cat.items():
        items = sorted(items, key=lambda s: str(s.path))
        n = len(items)
        n_val = min(max(round(val_fraction * n), 1 if val_fraction > 0 and n >= 2 else 0), n - 1) if n else 0
        # A string seed is hashed with SHA-512 by random.Random: stable across processes and Python runs.
        chosen = set(random.Random(f"{seed}:{cat}").sample(range(n), n_val))
        train.extend(s for i, s in enumerate(items) if i not in chosen)
        val.extend(s for i, s in enumerate(items) if i in chosen)
    return train, val

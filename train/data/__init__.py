"""Data layer: MVTec AD layout (torch-free, train.data.mvtec) and the torch ImageDataset (train.data.dataset)."""
from __future__ import annotations

from typing import Any

from train.data.mvtec import (
    GOOD,
    IMAGE_SUFFIXES,
    MVTecLayoutError,
    Sample,
    discover_categories,
    ground_truth_path,
    image_hw,
    list_test_samples,
    list_train_samples,
    list_validation_samples,
    mask_files,
    parse_categories,
    split_train_val,
    training_split,
)

__all__ = [
    "GOOD", "IMAGE_SUFFIXES", "ImageDataset", "MVTecLayoutError", "Sample", "discover_categories", "image_hw",
    "list_test_samples", "list_train_samples", "list_validation_samples", "parse_categories", "split_train_val",
    "ground_truth_path", "mask_files", "training_split",
]


def __getattr__(name: str) -> Any:
    # Imported lazily so listing samples (eval/bench) does not pull in torch.
    if name == "ImageDataset":
        from train.data.dataset import ImageDataset
        return ImageDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

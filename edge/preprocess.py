"""The one preprocessing path: decode → RGB → resize → normalise → NCHW float32.

Training, export calibration, evaluation, benchmarking and the edge runtime all call
these functions, so a frame scores the same everywhere (numpy + OpenCV only, no torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Per-backbone input normalisation in [0, 1] pixel units.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # EfficientNet-Lite was trained on (x/255 - 0.5)/0.5.
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


# "area": cv2.INTER_AREA along an axis that shrinks (antialiased: a thin scratch survives a 4× reduction),
# bilinear along one that grows; "linear": bilinear both ways (runs made before the resize policy existed).
RESIZE_METHODS = ("area", "linear")


class ImageReadError(ValueError):
    """An image file is missing, unreadable or not an image."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn an image into the model input; stored in the manifest."""

    image_size: int = 256
    mean: tuple[float, float, float] = NORMALIZATIONS["imagenet"][0]
    std: tuple[float, float, float] = NORMALIZATIONS["imagenet"][1]
    resize: str = "area"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"resize: expected one of {', '.join(RESIZE_METHODS)}, got {self.resize!r}")

    @classmethod
    def for_normalization(cls, name: str, image_size: int = 256, resize: str = "area") -> PreprocessSpec:
        if name not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {name!r}; expected one of {sorted(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[name]
        return cls(image_size=image_size, mean=mean, std=std, resize=resize)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "layout": "NCHW", "dtype": "float32", "color": "RGB", "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        # Manifests written before the resize policy say "cv2.INTER_LINEAR" (or nothing): bilinear.
        resize = d.get("resize", "linear")
        return cls(image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize="linear" if resize == "cv2.INTER_LINEAR" else resize)


def _read_file(path: str | Path, flags: int, what: str) -> np.ndarray:
    """Decode an image file with OpenCV; ImageReadError naming the file when missing or undecodable."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: {what} file not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    # cv2.imdecode asserts (cv2.error) on an empty buffer instead of returning None.
    decoded = cv2.imdecode(data, flags) if data.size else None
    if decoded is None:
        raise ImageReadError(f"{path}: cannot decode {what} (corrupt or not an image)")
    return decoded


def decode_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; raise ImageReadError naming the file otherwise."""
    return cv2.cvtColor(_read_file(path, cv2.IMREAD_COLOR, "image"), cv2.COLOR_BGR2RGB)


def bgr_to_rgb(frame_bgr: np.ndarray) -> np.ndarray:
    """Camera frames from OpenCV are BGR (or grey); return HxWx3 uint8 RGB."""
    if frame_bgr.ndim == 2:
        return cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)


def resize_rgb(rgb: np.ndarray, image_size: int, method: str = "area") -> np.ndarray:
    """Resize to image_size × image_size (square, as the model was trained); method: see RESIZE_METHODS."""
    height, width = rgb.shape[:2]
    if height == image_size and width == image_size:
        return rgb
    if method == "linear" or (height <= image_size and width <= image_size):
        return cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    if height >= image_size and width >= image_size:
        return cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA)
    # One axis shrinks, the other grows: area-average the shrinking axis first, then stretch the other.
    if height > image_size:
        return cv2.resize(cv2.resize(rgb, (width, image_size), interpolation=cv2.INTER_AREA),
                          (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(cv2.resize(rgb, (image_size, height), interpolation=cv2.INTER_AREA),
                      (image_size, image_size), interpolation=cv2.INTER_LINEAR)


def normalize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxWx3 RGB → float32 3xHxW, (x/255 − mean)/std."""
    x: np.ndarray = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_rgb(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 RGB image of any size → float32 3×S×S model input."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    return normalize(resize_rgb(rgb, spec.image_size, spec.resize), spec)


def load_image(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Image file → float32 3×S×S model input (decode + resize + normalise)."""
    return preprocess_rgb(decode_image(path), spec)


def load_mask(path: str | Path, expected_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """Ground-truth mask file → uint8 {0,1} S×S, nearest-neighbour resized.

    The mask must have the same height and width as its image (MVTec convention);
    anything else is an error naming the file.
    """
    mask = _read_file(path, cv2.IMREAD_GRAYSCALE, "mask")
    if tuple(mask.shape[:2]) != tuple(expected_hw):
        raise ImageReadError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]}")
    mask = cv2.resize(mask, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
    return (mask > 127).astype(np.uint8)

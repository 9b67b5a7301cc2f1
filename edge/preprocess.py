"""The one preprocessing path: decode → RGB → resize → normalise → NCHW float32.

Training, export calibration, evaluation, benchmarking and the edge runtime all call
these functions, so a frame scores the same everywhere (numpy + OpenCV only, no torch).
"""
from __future__ import annotations

import math
import struct
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
# bilinear along one that grows; "pyramid": halve every axis still ≥ 2× its target with a 2-pixel box, then
# bilinear (antialiased like "area", ~1 grey level from it on average, 2–9× faster on camera frames: OpenCV's
# INTER_AREA is only vectorised for 2× steps); "linear": bilinear both ways (runs made before the resize policy).
RESIZE_METHODS = ("area", "pyramid", "linear")
# How a non-square image becomes the square model input: "stretch" (squash, every pixel kept), "letterbox"
# (keep the aspect ratio, pad with the normalisation mean, which the model sees as 0) or "center-crop" (keep the
# aspect ratio, drop the sides of the longer axis). Grey images are replicated to three channels in every case.
FITS = ("stretch", "letterbox", "center-crop")
# How an image FILE is decoded: "reduced" lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 of its size (its scaled
# IDCT: a box-like average, about a grey level from a full decode + INTER_AREA on average, more on sharp edges)
# whenever the result still covers the model input (a 1024² JPEG → 256 px view: 16.7 → 4.1 ms on a Zen 3 core);
# "full" decodes every pixel (manifests and runs written before this field). Other formats and camera frames are
# never reduced.
DECODES = ("reduced", "full")
# OpenCV's colour decode at 1/f of the size (JPEG: libjpeg's scaled IDCT), by reduction factor f.
_REDUCED_COLOR_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                        8: cv2.IMREAD_REDUCED_COLOR_8}
# Files read as images (OpenCV decodes them all): data sets, calibration folders, --source folders, LOCO masks.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file is missing, unreadable or not an image."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn an image into the model input; stored in the manifest."""

    image_size: int = 256
    mean: tuple[float, float, float] = NORMALIZATIONS["imagenet"][0]
    std: tuple[float, float, float] = NORMALIZATIONS["imagenet"][1]
    # The default of new runs (bench/results/quality-ablation6-photoset4-6ep.md: area 0.866 / 0.930 vs pyramid
    # 0.837 / 0.920); manifests keep whatever their run used.
    resize: str = "area"
    fit: str = "stretch"
    decode: str = "reduced"

    def __post_init__(self) -> None:
        if self.decode not in DECODES:
            raise ValueError(f"decode: expected one of {', '.join(DECODES)}, got {self.decode!r}")
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"resize: expected one of {', '.join(RESIZE_METHODS)}, got {self.resize!r}")
        if self.fit not in FITS:
            raise ValueError(f"fit: expected one of {', '.join(FITS)}, got {self.fit!r}")

    @classmethod
    def for_normalization(cls, name: str, image_size: int = 256, resize: str = "area",
                          fit: str = "stretch", decode: str = "reduced") -> PreprocessSpec:
        if name not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {name!r}; expected one of {sorted(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[name]
        return cls(image_size=image_size, mean=mean, std=std, resize=resize, fit=fit, decode=decode)

    @property
    def pad_rgb(self) -> tuple[int, int, int]:
        """The letterbox border: the normalisation mean as uint8 RGB (≈ 0 after normalising)."""
        r, g, b = (int(round(m * 255.0)) for m in self.mean)
        return r, g, b

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "layout": "NCHW", "dtype": "float32", "color": "RGB", "resize": self.resize, "fit": self.fit,
                "decode": self.decode}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        # Manifests written before the resize policy say "cv2.INTER_LINEAR" (or nothing): bilinear; before the fit
        # policy every image was stretched; before the decode policy every file was decoded in full.
        resize = d.get("resize", "linear")
        return cls(image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize="linear" if resize == "cv2.INTER_LINEAR" else resize, fit=d.get("fit", "stretch"),
                   decode=d.get("decode", "full"))


@dataclass(frozen=True)
class FitGeometry:
    """Where the model input comes from: the source rows/columns used (``crop``: y0, y1, x0, x1), the size they are
    resized to (``content``: h, w) and where that lands in the S×S input (``offset``: y, x)."""

    crop: tuple[int, int, int, int]
    content: tuple[int, int]
    offset: tuple[int, int]


def fit_geometry(height: int, width: int, image_size: int, fit: str = "stretch") -> FitGeometry:
    """The geometry of FITS' policy for an height×width image; a square image maps onto the input whole."""
    s = image_size
    if fit == "center-crop":
        side = min(height, width)
        y0, x0 = (height - side) // 2, (width - side) // 2
        return FitGeometry((y0, y0 + side, x0, x0 + side), (s, s), (0, 0))
    if fit == "letterbox":
        scale = s / max(height, width)
        h, w = min(s, max(1, round(height * scale))), min(s, max(1, round(width * scale)))
        return FitGeometry((0, height, 0, width), (h, w), ((s - h) // 2, (s - w) // 2))
    if fit != "stretch":
        raise ValueError(f"fit: expected one of {', '.join(FITS)}, got {fit!r}")
    return FitGeometry((0, height, 0, width), (s, s), (0, 0))


def map_to_frame(anomaly_map: np.ndarray, frame_hw: tuple[int, int], fit: str = "stretch") -> np.ndarray:
    """The S×S anomaly map back onto the frame's pixels (the inverse of fit_geometry); pixels the model did not
    see (cropped sides) are 0."""
    s = anomaly_map.shape[0]
    height, width = frame_hw
    g = fit_geometry(height, width, s, fit)
    (oy, ox), (h, w) = g.offset, g.content
    content = np.ascontiguousarray(anomaly_map[oy:oy + h, ox:ox + w], dtype=np.float32)
    y0, y1, x0, x1 = g.crop
    if (y0, y1, x0, x1) == (0, height, 0, width):
        return cv2.resize(content, (width, height), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((height, width), np.float32)
    out[y0:y1, x0:x1] = cv2.resize(content, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


def jpeg_hw(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's first SOFn frame header (before any EXIF rotation); None if ``data`` is not a
    well-formed JPEG up to that header."""
    if bytes(data[:2]) != b"\xff\xd8":  # before any copy: most non-JPEG files are large
        return None
    data = data.tobytes() if isinstance(data, np.ndarray) else data
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # stand-alone markers carry no length
            i += 2
            continue
        if marker in sof:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return int(height), int(width)
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def decode_reduction(height: int, width: int, spec: PreprocessSpec) -> int:
    """The largest f in 8, 4, 2 (else 1) for which a height×width image decoded at 1/f still gives the fit's crop
    at least the model's content size along both axes, in either orientation (EXIF may turn it): the resize that
    follows never enlarges what full resolution would have shrunk."""
    def fits(h: int, w: int, f: int) -> bool:
        g = fit_geometry(h // f, w // f, spec.image_size, spec.fit)
        y0, y1, x0, x1 = g.crop
        return y1 - y0 >= g.content[0] and x1 - x0 >= g.content[1]

    for f in (8, 4, 2):
        if height // f >= 1 and width // f >= 1 and fits(height, width, f) and fits(width, height, f):
            return f
    return 1


def decode_frame(data: np.ndarray, spec: PreprocessSpec | None = None) -> tuple[np.ndarray | None, int]:
    """Encoded image bytes → (BGR uint8 frame or None if undecodable, reduction factor f): a JPEG at 1/f of its size
    when ``spec.decode`` is "reduced" (decode_reduction), anything else in full (f = 1). OpenCV's own errors
    (cv2.error, e.g. a header claiming 40000×30000 px) propagate."""
    if not data.size:  # cv2.imdecode asserts (cv2.error) on an empty buffer instead of returning None
        return None, 1
    factor = 1
    if spec is not None and spec.decode == "reduced":
        # The frame header follows the EXIF/ICC segments: usually in the first 64 KiB, else read the whole file.
        hw = jpeg_hw(data[:65536]) or jpeg_hw(data)
        factor = decode_reduction(*hw, spec) if hw else 1
    return cv2.imdecode(data, _REDUCED_COLOR_FLAGS[factor]), factor


def _read_bytes(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: {what} file not found")
    return np.fromfile(str(path), dtype=np.uint8)


def _read_file(path: str | Path, flags: int, what: str) -> np.ndarray:
    """Decode an image file with OpenCV; ImageReadError naming the file when missing or undecodable."""
    data = _read_bytes(path, what)
    decoded = cv2.imdecode(data, flags) if data.size else None
    if decoded is None:
        raise ImageReadError(f"{path}: cannot decode {what} (corrupt or not an image)")
    return decoded


def read_frame(path: str | Path, spec: PreprocessSpec | None = None) -> tuple[np.ndarray, int]:
    """An image file → (HxWx3 uint8 BGR, as OpenCV and edge-run's file source read it, reduction factor) through
    decode_frame; ImageReadError naming the file when missing or undecodable."""
    try:
        frame, factor = decode_frame(_read_bytes(path, "image"), spec)
    except cv2.error as e:
        raise ImageReadError(f"{path}: cannot decode image ({str(e).strip().splitlines()[-1]})") from None
    if frame is None:
        raise ImageReadError(f"{path}: cannot decode image (corrupt or not an image)")
    return frame, factor


def decode_bgr(path: str | Path, spec: PreprocessSpec | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 BGR, at the size ``spec.decode`` asks for (full without a spec)."""
    return read_frame(path, spec)[0]


def decode_image(path: str | Path, spec: PreprocessSpec | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (decode_bgr); raise ImageReadError naming the file otherwise."""
    return cv2.cvtColor(decode_bgr(path, spec), cv2.COLOR_BGR2RGB)


def bgr_to_rgb(frame_bgr: np.ndarray) -> np.ndarray:
    """Camera frames from OpenCV are BGR (or grey); return HxWx3 uint8 RGB."""
    if frame_bgr.ndim == 2:
        return cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)


def box_pyramid(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Halve each axis that is still at least twice its target (bilinear at exactly 2× averages each pixel pair:
    a 2-pixel box, the mip-map step), then bilinear to height × width. Every source pixel contributes at every
    step (no stride beyond 2), so a 1-pixel scratch survives; the geometry is the plain resize's (no cropping)."""
    h, w = image.shape[:2]
    while h >= 2 * height or w >= 2 * width:
        h, w = (h // 2 if h >= 2 * height else h), (w // 2 if w >= 2 * width else w)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if (h, w) == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _resize_to(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """Resize to height × width; "area" and "pyramid" antialias an axis that shrinks (RESIZE_METHODS)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if method == "pyramid":
        return box_pyramid(image, height, width)
    if method == "linear" or (h <= height and w <= width):
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if h >= height and w >= width:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    # One axis shrinks, the other grows: area-average the shrinking axis first, then stretch the other.
    if h > height:
        return cv2.resize(cv2.resize(image, (w, height), interpolation=cv2.INTER_AREA), (width, height),
                          interpolation=cv2.INTER_LINEAR)
    return cv2.resize(cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA), (width, height),
                      interpolation=cv2.INTER_LINEAR)


def resize_rgb(rgb: np.ndarray, image_size: int, method: str = "area", fit: str = "stretch",
               pad_rgb: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """The image_size × image_size model view of an RGB image: FITS' geometry, then RESIZE_METHODS' resize."""
    g = fit_geometry(rgb.shape[0], rgb.shape[1], image_size, fit)
    y0, y1, x0, x1 = g.crop
    content = _resize_to(rgb[y0:y1, x0:x1], *g.content, method)
    if g.content == (image_size, image_size):
        return content
    out = np.empty((image_size, image_size, 3), np.uint8)
    out[...] = np.asarray(pad_rgb, np.uint8)
    (oy, ox), (h, w) = g.offset, g.content
    out[oy:oy + h, ox:ox + w] = content
    return out


def fit_image(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 RGB of any size → uint8 S×S×3 RGB, as the spec says (fit, resize, letterbox border)."""
    return resize_rgb(rgb, spec.image_size, spec.resize, spec.fit, spec.pad_rgb)


def normalisation_affine(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), float32 3×1×1 each: (x/255 − mean)/std = x·a + b per channel (a = 1/(255·std), b = −mean/std, folded
    in float64)."""
    std = np.asarray(spec.std, np.float64)
    return ((1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1),
            (-np.asarray(spec.mean, np.float64) / std).astype(np.float32).reshape(3, 1, 1))


def normalize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxWx3 RGB → float32 3xHxW, (x/255 − mean)/std computed as x·a + b per channel.

    One multiply straight into the CHW output and one in-place add (a = 1/(255·std), b = −mean/std, folded in
    float64): equal to the formula within float32 rounding, and ~10× faster than the four full-size
    temporaries of writing it out (measured 1.99 → 0.19 ms at 256 px on a 2-core EPYC).
    """
    scale, offset = normalisation_affine(spec)
    out = np.empty((3, *rgb.shape[:2]), np.float32)
    np.multiply(rgb.transpose(2, 0, 1), scale, out=out)
    out += offset
    return out


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")


def fit_frame(frame_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A frame as OpenCV decodes it (BGR, or grey) → uint8 S×S×3 RGB: the same numbers as
    ``fit_image(bgr_to_rgb(frame))``, with the resize done first, so the colour conversion touches S×S pixels
    instead of the whole frame (resizing and padding act on each channel alike: the order changes no value)."""
    if frame_bgr.ndim == 2 or frame_bgr.dtype != np.uint8 or frame_bgr.shape[2] != 3:
        rgb = bgr_to_rgb(frame_bgr)
        _check_rgb(rgb)
        return fit_image(rgb, spec)
    r, g, b = spec.pad_rgb
    small = resize_rgb(frame_bgr, spec.image_size, spec.resize, spec.fit, (b, g, r))
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def preprocess_frame(frame_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A camera frame (OpenCV BGR, or grey) → float32 3×S×S: ``preprocess_rgb(bgr_to_rgb(frame))`` via
    fit_frame."""
    return normalize(fit_frame(frame_bgr, spec), spec)


def preprocess_rgb(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 RGB image of any size → float32 3×S×S model input."""
    _check_rgb(rgb)
    return normalize(fit_image(rgb, spec), spec)


def load_view(path: str | Path, spec: PreprocessSpec, mask_path: str | Path | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file (and its ground-truth mask, if given) → (uint8 S×S×3 RGB model view, uint8 {0,1} S×S mask or
    None): decoded as the spec says, the mask checked against the file and fitted to the decoded image's
    geometry (read_frame, fit_frame, load_mask) — what data sets, export and bench read."""
    frame, reduction = read_frame(path, spec)
    mask = (load_mask(mask_path, frame.shape[:2], spec.image_size, spec.fit, reduction) if mask_path is not None
            else None)
    return fit_frame(frame, spec), mask


def load_image(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Image file → float32 3×S×S model input (decode as the spec says + resize + normalise)."""
    return preprocess_frame(decode_bgr(path, spec), spec)


def load_mask(path: str | Path, expected_hw: tuple[int, int], image_size: int, fit: str = "stretch",
              reduction: int = 1) -> np.ndarray:
    """Ground-truth mask file → uint8 {0,1} S×S through the image's geometry (``fit``), nearest-neighbour resized;
    a letterbox border is 0 (normal).

    The mask must have the same height and width as its image (MVTec convention) — ``expected_hw`` is the decoded
    image's, at 1/``reduction`` of the file's size (read_frame; libjpeg rounds up) — anything else is an error
    naming the file.
    """
    path = Path(path)
    if path.is_dir():  # MVTec LOCO: one mask file per defect region, their union is the image's mask
        parts = mask_files(path)
        if not parts:
            raise ImageReadError(f"{path}: mask directory holds no mask images")
        union: np.ndarray = np.maximum.reduce([load_mask(p, expected_hw, image_size, fit, reduction)
                                               for p in parts])
        return union
    mask = _read_file(path, cv2.IMREAD_GRAYSCALE, "mask")
    if tuple(math.ceil(n / reduction) for n in mask.shape[:2]) != tuple(expected_hw):
        h, w = (n * reduction for n in expected_hw)
        size = f"{w}x{h}" if reduction == 1 else f"about {w}x{h} (decoded at 1/{reduction})"
        raise ImageReadError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size}")
    # A reduced image's fit geometry is its own (libjpeg rounds the size up), so the mask follows that one.
    return fit_mask(mask, image_size, fit, expected_hw if reduction > 1 else None)


def mask_files(mask_path: Path) -> list[Path]:
    """The mask images of a ground-truth path: itself, or every image in a LOCO mask directory (one per region)."""
    if mask_path.is_dir():
        return sorted(p for p in mask_path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [mask_path]


def fit_mask(mask: np.ndarray, image_size: int, fit: str = "stretch",
             image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded grey mask (values > 127 = defect) → uint8 {0,1} S×S through the fit geometry, nearest-neighbour.
    ``image_hw``: the decoded image's size where it is not the mask's (a reduced decode): the geometry is the
    image's, its crop scaled onto the mask, so mask and image land on the same model pixels."""
    mh, mw = mask.shape[:2]
    ih, iw = image_hw if image_hw is not None else (mh, mw)
    g = fit_geometry(ih, iw, image_size, fit)
    y0, y1 = (min(mh, round(v * mh / ih)) for v in g.crop[:2])
    x0, x1 = (min(mw, round(v * mw / iw)) for v in g.crop[2:])
    (oy, ox), (h, w) = g.offset, g.content
    out = np.zeros((image_size, image_size), np.uint8)
    out[oy:oy + h, ox:ox + w] = cv2.resize(mask[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_NEAREST) > 127
    return out

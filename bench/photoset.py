"""A real-photograph anomaly benchmark in MVTec AD layout, built from photos that Python packages ship.

    python -m bench.photoset --out /tmp/photoset            # 7 categories, ~20 s

Normal parts are jittered views of one real photograph per category (textures: random crops at random
rotation; objects: the whole object with small pose jitter), with the photometric jitter and sensor noise
a line camera gives. Defects are painted or pasted onto held-out views, each with its exact mask:
``scratch`` (thin bright/dark polyline), ``stain`` (soft irregular discolouration), ``foreign`` (a patch of
another photograph in an irregular shape) and ``crack`` (a dark random-walk line). The synthetic set
(``python -m train.synthetic``) draws its textures itself and every method scores ~0.98 on it; these are
real photographs with real fine structure, where methods differ. Nothing is written to the repository.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.cliconfig import ConfigCli, option, run_cli

DEFECTS = ("scratch", "stain", "foreign", "crack")


@dataclass(frozen=True)
class PhotoSource:
    """One category: the package that ships the photo, the file inside it, and how parts are viewed."""

    package: str
    relative_path: str
    kind: str  # "texture": random crops anywhere; "object": the whole frame, small pose jitter


CATEGORIES: dict[str, PhotoSource] = {
    "brick": PhotoSource("skimage", "data/brick.png", "texture"),
    "grass": PhotoSource("skimage", "data/grass.png", "texture"),
    "gravel": PhotoSource("skimage", "data/gravel.png", "texture"),
    "tissue": PhotoSource("skimage", "data/ihc.png", "texture"),
    "fundus": PhotoSource("skimage", "data/retina.jpg", "texture"),
    "coffee": PhotoSource("skimage", "data/coffee.png", "object"),
    "flower": PhotoSource("sklearn", "datasets/images/flower.jpg", "object"),
}


class PhotoSetError(RuntimeError):
    """A source photo is missing (its package is not installed)."""


def source_path(source: PhotoSource) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise PhotoSetError(f"package {source.package!r} is not installed; it ships {source.relative_path} "
                            f"(pip install -e '.[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / source.relative_path
    if not path.is_file():
        raise PhotoSetError(f"{path}: source photo not found in package {source.package!r}")
    return path


def load_photo(source: PhotoSource) -> np.ndarray:
    """The photo as BGR uint8 (grey photos become 3 equal channels, alpha dropped)."""
    image = cv2.imread(str(source_path(source)), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotoSetError(f"{source_path(source)}: not a readable image")
    return image


def view(photo: np.ndarray, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One normal part: a jittered view of the photo (geometry, exposure, white balance, sensor noise)."""
    h, w = photo.shape[:2]
    if kind == "texture":
        side = rng.uniform(0.42, 0.52) * min(h, w)
        angle = rng.uniform(0, 360)
        cx, cy = rng.uniform(side * 0.72, w - side * 0.72), rng.uniform(side * 0.72, h - side * 0.72)
    else:
        side = min(h, w) * rng.uniform(0.95, 1.02)
        angle = rng.uniform(-4, 4)
        cx, cy = w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2 + rng.uniform(-0.03, 0.03) * h
    scale = size / side
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out: np.ndarray = cv2.warpAffine(photo, matrix, (size, size), flags=interpolation,
                                     borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
    gain = rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, size=3)  # exposure and white balance
    out = out * gain + rng.uniform(-6, 6)
    out += rng.normal(0, 2.0, out.shape)  # sensor noise
    return np.clip(out, 0, 255).astype(np.uint8)


def blob_mask(size: int, rng: np.random.Generator, radius: float) -> np.ndarray:
    """A soft irregular blob (float 0..1): a random ellipse whose edge is perturbed by smooth noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    a, b = radius * rng.uniform(0.6, 1.4, 2)
    theta = rng.uniform(0, np.pi)
    x, y = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta), -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    noise = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    field = (x / a) ** 2 + (y / b) ** 2 + 0.35 * noise
    return np.clip((1.15 - field) / 0.3, 0, 1)


def polyline(size: int, rng: np.random.Generator, length: float, wiggle: float) -> np.ndarray:
    """Points of a random-walk line starting inside the image."""
    n = 24
    start = rng.uniform(0.2, 0.8, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    steps = np.cumsum(rng.normal(0, wiggle, n)) + heading
    step = length / n
    points = start + np.cumsum(np.stack([np.cos(steps), np.sin(steps)], 1) * step, 0)
    return np.round(np.clip(points, 0, size - 1)).astype(np.int32)


def add_defect(image: np.ndarray, defect: str, other: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Paint/paste one defect; returns (image, mask uint8 {0,255}) with the mask where the part changed."""
    size = image.shape[0]
    out: np.ndarray = image.astype(np.float32)
    if defect in ("scratch", "crack"):
        layer = np.zeros((size, size), np.uint8)
        if defect == "scratch":
            points = polyline(size, rng, rng.uniform(0.25, 0.5) * size, 0.04)
            cv2.polylines(layer, [points], False, 255, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
            tone = 255.0 if rng.random() < 0.5 else 0.0
            strength = rng.uniform(0.5, 0.8)
        else:
            points = polyline(size, rng, rng.uniform(0.2, 0.4) * size, 0.35)
            cv2.polylines(layer, [points], False, 255, thickness=int(rng.integers(2, 4)), lineType=cv2.LINE_AA)
            tone, strength = 15.0, rng.uniform(0.6, 0.85)
        alpha = layer.astype(np.float32)[..., None] / 255.0 * strength
        out = out * (1 - alpha) + tone * alpha
        mask = cv2.dilate((layer > 64).astype(np.uint8), np.ones((3, 3), np.uint8))
    elif defect == "stain":
        alpha = blob_mask(size, rng, rng.uniform(0.05, 0.11) * size)[..., None] * rng.uniform(0.35, 0.6)
        tint = rng.uniform(0.35, 0.7, 3) * (0.7 if rng.random() < 0.5 else 1.25)
        out = out * (1 - alpha) + np.clip(out * tint, 0, 255) * alpha
        mask = (alpha[..., 0] > 0.1).astype(np.uint8)
    elif defect == "foreign":
        alpha = blob_mask(size, rng, rng.uniform(0.05, 0.1) * size)[..., None]
        patch = cv2.resize(other, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
        out = out * (1 - alpha) + patch * alpha
        mask = (alpha[..., 0] > 0.5).astype(np.uint8)
    else:
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(DEFECTS)}")
    return np.clip(out, 0, 255).astype(np.uint8), mask * 255


def write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write image")


def build(out: str | Path, categories: list[str] | None = None, size: int = 320, n_train: int = 120,
          n_test_good: int = 30, n_per_defect: int = 10, seed: int = 0) -> Path:
    """Write <out>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>} PNGs."""
    out = Path(out)
    names = categories or list(CATEGORIES)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise PhotoSetError(f"--categories: unknown {', '.join(unknown)}; expected {', '.join(CATEGORIES)}")
    photos = {name: load_photo(CATEGORIES[name]) for name in CATEGORIES}
    for name in names:
        rng = np.random.default_rng([seed, list(CATEGORIES).index(name)])  # a subset holds the full set's images
        source, photo = CATEGORIES[name], photos[name]
        others = [p for n, p in photos.items() if n != name]
        for i in range(n_train):
            write(out / name / "train" / "good" / f"{i:03d}.png", view(photo, source.kind, size, rng))
        for i in range(n_test_good):
            write(out / name / "test" / "good" / f"{i:03d}.png", view(photo, source.kind, size, rng))
        for defect in DEFECTS:
            for i in range(n_per_defect):
                other = others[int(rng.integers(len(others)))]
                image, mask = add_defect(view(photo, source.kind, size, rng), defect,
                                         view(other, "texture", size, rng), rng)
                write(out / name / "test" / defect / f"{i:03d}.png", image)
                write(out / name / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return out


@dataclass
class PhotoSetOptions:
    """Options of ``python -m bench.photoset`` (one field per flag and ``--config`` key)."""

    out: str = option("", "output root (MVTec AD layout)")
    categories: str = option("", f"comma-separated subset of {', '.join(CATEGORIES)}")
    size: int = option(320, "image side in pixels")
    seed: int = option(0, "seed of the views and defects")

    def __post_init__(self) -> None:
        if not self.out:
            raise PhotoSetError("--out: expected an output root")


CLI = ConfigCli(PhotoSetOptions, "python -m bench.photoset", __doc__.split("\n\n")[0])


def _build(argv: list[str] | None) -> int:
    options = CLI.parse(argv)
    root = build(options.out, [c for c in options.categories.split(",") if c] or None, options.size,
                 seed=options.seed)
    print(f"wrote {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Bad options, an unknown category or an unwritable output root → one error line, exit status 2."""
    return run_cli(lambda: _build(argv), errors=(PhotoSetError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())

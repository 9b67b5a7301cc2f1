"""Procedural MVTec-layout dataset for tests, demos and smoke runs (no download needed).

    python -m train.synthetic --out DIR [--categories 3 | fabric,wood,...] [--image-size 128]
        [--train 60] [--test-good 10] [--test-defect 20] [--seed 0] [--overwrite]

Kinds: "fabric" (plain-weave cloth), "wood" (grain), "washer" (steel ring on a dark backdrop), "metal"
(brushed plate). Normal images vary in phase, rotation, pitch, pose, colour, illumination and sensor
noise; each defect image carries exactly one local defect. The ground-truth mask is, by construction,
exactly the set of pixels that differ from the defect-free rendering of the same part
(render_sample(kind, size, seed) with defect=None), and every painted pixel (except where a hole/cut
reveals a backing of similar colour) differs by at least MIN_DELTA grey levels so the defect is visible.
numpy + OpenCV only; each image is drawn from its own seed, so any single file can be re-rendered.
"""
from __future__ import annotations

import shutil
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.cliconfig import ConfigCli, option, run_cli

MIN_DELTA = 24  # least per-pixel change (max over channels) of painted defects: visible, not just "different"

# Stain colours chosen away from every kind's normal palette.
_STAIN_COLOURS = np.array([(170, 35, 35), (40, 140, 60), (40, 70, 175), (215, 190, 30), (125, 45, 145)],
                          np.float32)


@dataclass
class SyntheticConfig:
    """Options of `python -m train.synthetic` (one field per flag and ``--config`` key)."""

    out: str = option("", "dataset root to write (MVTec AD layout)")
    categories: str = "3"  # N (first N of KINDS) or names; help in CLI below
    image_size: int = option(128, "image side in pixels")
    train: int = option(60, "normal training images per category")
    test_good: int = option(10, "normal test images per category")
    test_defect: int = option(20, "anomalous test images per category (defect types in turn)")
    seed: int = option(0, "seed of every image")
    overwrite: bool = option(False, "replace existing category directories")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out: expected a dataset root to write")


@dataclass
class Scene:
    """A defect-free rendering plus what defect painters need to know about it."""

    image: np.ndarray    # float32 H×W×3, grey levels 0..255
    region: np.ndarray   # bool H×W: where a defect may be placed (the part; everything for textures)
    backing: np.ndarray  # float32 H×W×3: what shows through a hole or cut


# ----------------------------------------------------------------------------------------------- helpers
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in image units [0, 1), so every pattern looks the same at any resolution."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise with about `cells` blobs across the image, unit standard deviation."""
    n = cv2.resize(rng.standard_normal((cells + 3, cells + 3)).astype(np.float32), (size, size),
                   interpolation=cv2.INTER_CUBIC)
    return (n - n.mean()) / (n.std() + 1e-6)


def _streaks(rng: np.random.Generator, size: int, length: float, vertical: bool = False) -> np.ndarray:
    """White noise smeared along one axis (fibres, grain, brushing marks), unit standard deviation."""
    k = max(3, int(round(length * size)))
    n = cv2.blur(rng.standard_normal((size, size)).astype(np.float32), (1, k) if vertical else (k, 1))
    return (n - n.mean()) / (n.std() + 1e-6)


def _illumination(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Global gain × linear gradient × soft low-frequency falloff of the line lighting."""
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    return (rng.uniform(0.85, 1.15) * (1 + gx * (x - 0.5) + gy * (y - 0.5))
            * (1 + 0.05 * _noise(rng, x.shape[0], 2))).astype(np.float32)


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float) -> np.ndarray:
    """Brightness gain ± amount with a slight (±2 %) white-balance shift, as between camera exposures."""
    gain = rng.uniform(1 - amount, 1 + amount) * rng.uniform(0.98, 1.02, 3)
    return (np.asarray(colour, np.float32) * gain).astype(np.float32)


def _sensor(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    return img + rng.normal(0.0, 1.5, img.shape).astype(np.float32)


def _full(size: int) -> np.ndarray:
    return np.ones((size, size), bool)


# ---------------------------------------------------------------------------------------------- renderers
def _render_fabric(rng: np.random.Generator, size: int) -> Scene:
    """Plain weave: warp/weft threads alternate over/under, with fibre streaks and slight waviness."""
    x, y = _grid(size)
    theta = rng.uniform(-0.12, 0.12)
    pitch = rng.uniform(1 / 17, 1 / 13)
    u = (x * np.cos(theta) + y * np.sin(theta)) / pitch + rng.uniform(0, 2) + 0.15 * _noise(rng, size, 4)
    v = (-x * np.sin(theta) + y * np.cos(theta)) / pitch + rng.uniform(0, 2) + 0.15 * _noise(rng, size, 4)
    fu, fv = u - np.floor(u), v - np.floor(v)
    warp_on_top = (np.floor(u) + np.floor(v)) % 2 == 0
    su, sv = np.sin(np.pi * fu), np.sin(np.pi * fv)
    shade = np.where(warp_on_top, np.sqrt(su) * (0.7 + 0.3 * sv), np.sqrt(sv) * (0.7 + 0.3 * su))
    fibres = np.where(warp_on_top, _streaks(rng, size, 0.06, vertical=True), _streaks(rng, size, 0.06))
    warp, weft = _jitter(rng, (176, 150, 112), 0.06), _jitter(rng, (160, 136, 100), 0.06)
    colour = np.where(warp_on_top[..., None], warp, weft)
    tone = (0.3 + 0.8 * shade + 0.07 * fibres) * _illumination(rng, x, y)
    backing = 28 * (1 + 0.3 * _noise(rng, size, 6))[..., None] * np.ones(3, np.float32)
    return Scene(_sensor(rng, colour * tone[..., None]), _full(size), backing)


def _render_wood(rng: np.random.Generator, size: int) -> Scene:
    """Flat-sawn board: wavy dark latewood bands along the grain, fine pore streaks, colour jitter."""
    x, y = _grid(size)
    theta = rng.uniform(-0.15, 0.15)
    along = x * np.cos(theta) + y * np.sin(theta)
    across = -x * np.sin(theta) + y * np.cos(theta)
    # Gentle undulation: strong bending would turn the grain into a contour map.
    bend = 0.022 * _noise(rng, size, 2) + 0.004 * _noise(rng, size, 6)
    rings = (across + bend + 0.015 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * along + rng.uniform(0, 6.3))) \
        * rng.uniform(9, 14) + rng.uniform(0, 1)
    knot = np.zeros_like(x)
    for _ in range(rng.choice(3, p=[0.45, 0.4, 0.15])):  # knots are normal in wood: dark is not a defect
        ka, kb = x - rng.uniform(0.1, 0.9), y - rng.uniform(0.1, 0.9)
        kr = np.sqrt(((ka * np.cos(theta) + kb * np.sin(theta)) / 2.2) ** 2
                     + (-ka * np.sin(theta) + kb * np.cos(theta)) ** 2) / rng.uniform(0.035, 0.07)
        rings += 1.2 * np.exp(-0.5 * (kr / 2.5) ** 2) * np.sign(rng.uniform(-1, 1))  # grain flows around it
        knot = np.maximum(knot, np.clip(1.3 - kr, 0, 1) * (0.75 + 0.25 * np.cos(3 * np.pi * kr)))
    bands = (0.5 + 0.5 * np.cos(2 * np.pi * rings)) ** 6
    pores = _streaks(rng, size, 0.2)
    tone = ((0.95 - 0.3 * bands + 0.05 * pores + 0.04 * _noise(rng, size, 3)) * (1 - 0.6 * knot)
            * _illumination(rng, x, y))
    colour = _jitter(rng, (170, 118, 72), 0.07)
    backing = np.array([34, 22, 14], np.float32) * (1 + 0.25 * _noise(rng, size, 5))[..., None]
    return Scene(_sensor(rng, colour * tone[..., None]), _full(size), backing)


def _render_metal(rng: np.random.Generator, size: int) -> Scene:
    """Brushed steel plate: long anisotropic brushing streaks and a broad specular sheen band."""
    x, y = _grid(size)
    big = int(size * 1.5)
    streaks: np.ndarray = 0.7 * _streaks(rng, big, 0.35) + 0.5 * _streaks(rng, big, 0.08)
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), float(rng.uniform(-6, 6)), 1.0)
    off = (big - size) // 2
    streaks = cv2.warpAffine(streaks, rot, (big, big), flags=cv2.INTER_LINEAR)[off:off + size, off:off + size]
    a = rng.uniform(0, np.pi)
    sheen = np.exp(-(((x - 0.5) * np.cos(a) + (y - 0.5) * np.sin(a) - rng.uniform(-0.3, 0.3)) / 0.25) ** 2)
    tarnish = np.clip(_noise(rng, size, 4) - rng.uniform(0.3, 1.5), 0, None)  # uneven oiling/oxide film
    tone = (0.62 + 0.25 * rng.uniform(0.3, 1.0) * sheen + 0.05 * streaks - 0.08 * tarnish) * _illumination(rng, x, y)
    colour = _jitter(rng, (182, 186, 192), 0.04)
    backing = 16 * (1 + 0.3 * _noise(rng, size, 5))[..., None] * np.ones(3, np.float32)
    return Scene(_sensor(rng, colour * tone[..., None]), _full(size), backing)


def _render_washer(rng: np.random.Generator, size: int) -> Scene:
    """Steel washer on a dark backdrop: position/tilt/size jitter, random light direction, drop shadow."""
    x, y = _grid(size)
    px = 1.0 / size
    vignette = 1 - 0.5 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    bg = rng.uniform(42, 62) * vignette * (1 + 0.05 * _noise(rng, size, 3))
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04, 2)
    outer = rng.uniform(0.31, 0.37)
    inner = outer * rng.uniform(0.42, 0.5)
    tilt, squash = rng.uniform(0, np.pi), rng.uniform(0.94, 1.0)  # camera not exactly square to the part

    def radius(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        a = dx * np.cos(tilt) + dy * np.sin(tilt)
        b = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / squash
        return np.sqrt(a * a + b * b)

    def coverage(d: np.ndarray) -> np.ndarray:  # anti-aliased ring
        return np.clip((outer - d) / px + 0.5, 0, 1) * np.clip((d - inner) / px + 0.5, 0, 1)

    d = radius(x - cx, y - cy)
    cov = coverage(d)
    shadow = cv2.GaussianBlur(coverage(radius(x - cx - 0.015, y - cy - 0.02)), (0, 0), 0.012 * size + 0.5)
    bg = (bg * (1 - 0.45 * shadow))[..., None] * _jitter(rng, (1.0, 1.0, 1.05), 0.02)
    t = np.clip((d - inner) / (outer - inner), 0, 1)
    light = rng.uniform(0, 2 * np.pi)
    angle = np.arctan2(y - cy, x - cx)
    tone = (0.6 + 0.2 * np.sin(np.pi * t) + 0.14 * np.cos(angle - light) * (0.4 + t)
            + 0.025 * np.sin(2 * np.pi * 22 * d + rng.uniform(0, 6.3)) + 0.03 * _noise(rng, size, 12))
    part = _jitter(rng, (186, 188, 194), 0.06) * (tone * _illumination(rng, x, y))[..., None]
    img = bg * (1 - cov[..., None]) + part * cov[..., None]
    region = cv2.erode((cov >= 1).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return Scene(_sensor(rng, img), region, bg)


@dataclass(frozen=True)
class Kind:
    render: Callable[[np.random.Generator, int], Scene]
    defects: tuple[str, ...]


KINDS: dict[str, Kind] = {
    "fabric": Kind(_render_fabric, ("hole", "color", "thread", "cut")),
    "wood": Kind(_render_wood, ("scratch", "hole", "color", "crack")),
    "washer": Kind(_render_washer, ("scratch", "crack", "missing", "contamination")),
    "metal": Kind(_render_metal, ("scratch", "contamination", "hole", "color")),
}


# ------------------------------------------------------------------------------------------ defect shapes
def _pick(rng: np.random.Generator, where: np.ndarray) -> np.ndarray:
    """A random pixel centre (x, y) inside a boolean map."""
    idx = rng.choice(np.flatnonzero(where))
    return np.array([idx % where.shape[1], idx // where.shape[1]], np.float64) + 0.5


def _draw(size: int, pts: np.ndarray, thickness: int | None) -> np.ndarray:
    """Binary (non-anti-aliased) polyline or filled polygon with 1/16-pixel vertex precision."""
    mask = np.zeros((size, size), np.uint8)
    p = [np.round(pts * 16).astype(np.int32)]
    if thickness is None:
        cv2.fillPoly(mask, p, 1, lineType=cv2.LINE_8, shift=4)
    else:
        cv2.polylines(mask, p, False, 1, thickness=thickness, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _line(rng: np.random.Generator, scene: Scene, length: tuple[float, float], width: tuple[float, float],
          bend: float, jag: float, start: np.ndarray | None = None) -> np.ndarray:
    """A stroke through a point of the region: bend = smooth curvature, jag = per-segment zig-zag."""
    size = scene.region.shape[0]
    n = 24
    turn = bend * np.sin(np.linspace(0, rng.uniform(1, 3) * np.pi, n) + rng.uniform(0, 6.3))
    angles = rng.uniform(0, 2 * np.pi) + turn + jag * rng.standard_normal(n)
    steps = rng.uniform(*length) * size / n * np.stack([np.cos(angles), np.sin(angles)], 1)
    pts = np.cumsum(steps, 0)
    centre = _pick(rng, scene.region) if start is None else start
    pts += centre - (pts[n // 2] if start is None else pts[0])
    return _draw(size, pts, max(1, int(round(rng.uniform(*width) * size))))


def _blob(rng: np.random.Generator, scene: Scene, radius: tuple[float, float],
          where: np.ndarray | None = None) -> np.ndarray:
    """An irregular star-shaped blob (low-order harmonics on the radius), random aspect and rotation."""
    size = scene.region.shape[0]
    t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    r = rng.uniform(*radius) * size * (1 + sum(rng.uniform(0, 0.15) * np.cos(h * t + rng.uniform(0, 6.3))
                                               for h in (2, 3, 5)))
    a = rng.uniform(0, np.pi)
    local = np.stack([r * np.cos(t), rng.uniform(0.55, 1.0) * r * np.sin(t)], 1)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return _draw(size, local @ rot.T + _pick(rng, scene.region if where is None else where), None)


# ---------------------------------------------------------------------------------------- defect painters
# Each returns (painted float image, pixels it may change, minimum visible change or 0 for "reveal").
Painted = tuple[np.ndarray, np.ndarray, int]


def _scratch(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    shape = _line(rng, scene, (0.2, 0.5), (0.01, 0.022), bend=0.15, jag=0.03)
    tone = 240.0 if rng.random() < 0.7 else 25.0  # scratches mostly catch the light
    return img * 0.3 + tone * 0.7, shape & scene.region, MIN_DELTA


def _crack(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    shape = _line(rng, scene, (0.2, 0.4), (0.008, 0.016), bend=0.3, jag=0.45)
    ys, xs = np.nonzero(shape)
    k = rng.integers(len(xs))
    shape |= _line(rng, scene, (0.08, 0.18), (0.006, 0.012), bend=0.3, jag=0.45,
                   start=np.array([xs[k], ys[k]], np.float64) + 0.5)  # one side branch
    return img * 0.2 + 8.0, shape & scene.region, MIN_DELTA


def _thread(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    shape = _line(rng, scene, (0.3, 0.6), (0.015, 0.03), bend=1.2, jag=0.05)
    lum = img.mean(-1, keepdims=True) / max(float(img.mean()), 1.0)
    return _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))] * (0.75 + 0.25 * lum), shape & scene.region, MIN_DELTA


def _hole(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    return scene.backing, _blob(rng, scene, (0.04, 0.1)) & scene.region, 0


def _cut(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    shape = _line(rng, scene, (0.15, 0.35), (0.025, 0.045), bend=0.05, jag=0.02)
    return scene.backing, shape & scene.region, 0


def _missing(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    """A chunk broken off the part's edge: the backdrop shows where the part was."""
    part = scene.region.astype(np.uint8)
    edge = scene.region & ~cv2.erode(part, np.ones((3, 3), np.uint8)).astype(bool)
    return scene.backing, _blob(rng, scene, (0.05, 0.1), where=edge), 0


def _color(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    alpha = rng.uniform(0.5, 0.8)
    colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))]
    return img * (1 - alpha) + colour * alpha, _blob(rng, scene, (0.05, 0.12)) & scene.region, MIN_DELTA


def _contamination(rng: np.random.Generator, scene: Scene, img: np.ndarray) -> Painted:
    size = img.shape[0]
    dirt = np.array([70, 52, 36], np.float32) * (1 + 0.35 * _noise(rng, size, 16))[..., None]
    return img * 0.15 + dirt * 0.85, _blob(rng, scene, (0.03, 0.08)) & scene.region, MIN_DELTA


PAINTERS: dict[str, Callable[[np.random.Generator, Scene, np.ndarray], Painted]] = {
    "scratch": _scratch, "crack": _crack, "thread": _thread, "hole": _hole, "cut": _cut,
    "missing": _missing, "color": _color, "contamination": _contamination,
}


def _composite(clean: np.ndarray, painted: np.ndarray, where: np.ndarray,
               min_delta: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste the painted pixels; push weak ones to ≥ min_delta; mask = exactly the changed pixels."""
    out = clean.copy()
    out[where] = np.clip(np.round(painted[where]), 0, 255).astype(np.uint8)
    if min_delta:
        c = clean.astype(np.int16)
        weak = where & (np.abs(out.astype(np.int16) - c).max(-1) < min_delta)
        sign = np.sign((painted.astype(np.float32) - c).mean(-1))
        sign = np.where(sign == 0, np.where(c.mean(-1) < 128, 1, -1), sign)
        # Flip when the push would clip in every channel, so some channel always moves by min_delta.
        sign = np.where((sign > 0) & (c.min(-1) > 255 - min_delta), -1, sign)
        sign = np.where((sign < 0) & (c.max(-1) < min_delta), 1, sign)
        out[weak] = np.clip(c[weak] + sign[weak, None] * min_delta, 0, 255).astype(np.uint8)
    return out, (out != clean).any(-1).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ public
def resolve_kinds(categories: int | str | Sequence[str]) -> list[str]:
    """N or "N" → the first N kinds; "a,b" or a list → those kinds (validated)."""
    if isinstance(categories, str) and categories.strip().isdigit():
        categories = int(categories)
    if isinstance(categories, int):
        if not 1 <= categories <= len(KINDS):
            raise ValueError(f"--categories: expected 1..{len(KINDS)} or names from {', '.join(KINDS)}, "
                             f"got {categories}")
        return list(KINDS)[:categories]
    items = [categories] if isinstance(categories, str) else list(categories)
    names = list(dict.fromkeys(n.strip() for item in items for n in str(item).split(",") if n.strip()))
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        raise ValueError(f"--categories: unknown kind(s) {', '.join(unknown) or repr(categories)}; "
                         f"expected a number or names from {', '.join(KINDS)}")
    return names


def sample_seed(seed: int, category: str, subset: str, index: int) -> int:
    """The seed of one file (subset e.g. "train/good", "test/scratch"), independent of all other files."""
    key = [seed, zlib.crc32(category.encode()), zlib.crc32(subset.encode()), index]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def render_sample(category: str, image_size: int, seed: int,
                  defect: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 S×S×3, mask uint8 {0,1} S×S). The same seed with defect=None is the clean render of the
    same part; the mask is exactly where the two differ."""
    kind = KINDS[category]
    scene = kind.render(np.random.default_rng([seed, 0]), image_size)
    clean = np.clip(np.round(scene.image), 0, 255).astype(np.uint8)
    if defect is None:
        return clean, np.zeros(clean.shape[:2], np.uint8)
    if defect not in kind.defects:
        raise ValueError(f"defect {defect!r} is not defined for {category!r} (expected one of {kind.defects})")
    rng = np.random.default_rng([seed, 1])
    min_area = max(8, int(0.002 * image_size * image_size))
    for _ in range(20):  # a stroke can leave a small object's region; redraw rather than emit a speck
        painted, where, min_delta = PAINTERS[defect](rng, scene, clean.astype(np.float32))
        out, mask = _composite(clean, painted, where, min_delta)
        if mask.sum() >= min_area:
            return out, mask
    raise RuntimeError(f"could not place a {defect} defect on {category} (seed {seed})")


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[..., ::-1] if image.ndim == 3 else image):
        raise ValueError(f"{path}: cannot write image")


def _clear_output(root: Path, names: Sequence[str], overwrite: bool) -> None:
    """Check ``root`` can take the kinds ``names``; remove their old folders when ``overwrite``."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: --out exists and is not a directory")
    for name in names:
        if (root / name).exists():
            if not overwrite:
                raise ValueError(f"{root / name}: already exists (pass --overwrite to replace it)")
            shutil.rmtree(root / name)


def _sample_jobs(name: str, train: int, test_good: int, test_defect: int) -> list[tuple[str, str, str | None, int]]:
    """(kind, subset folder, defect or None, index in that folder) of every image of one kind; defects in turn."""
    jobs: list[tuple[str, str, str | None, int]] = [(name, "train/good", None, i) for i in range(train)]
    jobs += [(name, "test/good", None, i) for i in range(test_good)]
    defects = KINDS[name].defects
    counts = {d: 0 for d in defects}
    for i in range(test_defect):
        d = defects[i % len(defects)]
        jobs.append((name, f"test/{d}", d, counts[d]))
        counts[d] += 1
    return jobs


def make_synthetic_dataset(out: str | Path, categories: int | str | Sequence[str] = SyntheticConfig.categories,
                           image_size: int = SyntheticConfig.image_size, train: int = SyntheticConfig.train,
                           test_good: int = SyntheticConfig.test_good, test_defect: int = SyntheticConfig.test_defect,
                           seed: int = SyntheticConfig.seed, overwrite: bool = SyntheticConfig.overwrite,
                           progress: bool = True) -> Path:
    """Write an MVTec-layout dataset under `out` and return `out`.

    Per kind: `train` normal training images, `test_good` normal test images and `test_defect` anomalous
    test images (defect types in turn) with ground_truth/<defect>/<name>_mask.png (0/255 PNG).
    """
    names = resolve_kinds(categories)
    for flag, value, least in (("--image-size", image_size, 32), ("--train", train, 1), ("--test-good", test_good, 0),
                               ("--test-defect", test_defect, 0), ("--seed", seed, 0)):
        if int(value) != value or value < least:
            raise ValueError(f"{flag}: expected an integer >= {least}, got {value}")
    root = Path(out)
    _clear_output(root, names, overwrite)
    jobs = [job for name in names for job in _sample_jobs(name, train, test_good, test_defect)]
    for name, subset, defect, i in tqdm(jobs, desc="synthetic data", unit="img", disable=not progress):
        image, mask = render_sample(name, image_size, sample_seed(seed, name, subset, i), defect)
        _write_png(root / name / subset / f"{i:03d}.png", image)
        if defect is not None:
            _write_png(root / name / "ground_truth" / defect / f"{i:03d}_mask.png", mask * np.uint8(255))
    return root


CLI = ConfigCli(SyntheticConfig, "python -m train.synthetic", __doc__.split("\n\n")[0],
                help={"categories": f"a number N (first N of {','.join(KINDS)}) or comma-separated kinds"})


def _make(argv: Sequence[str] | None) -> int:
    print(make_synthetic_dataset(**asdict(CLI.parse(argv))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Bad options or a category that does not exist → one error line, exit status 2."""
    return run_cli(lambda: _make(argv))


if __name__ == "__main__":
    sys.exit(main())

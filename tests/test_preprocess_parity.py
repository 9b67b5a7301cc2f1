"""One preprocessing path: training, export calibration, evaluation, edge sources and bench give the
model bit-identical inputs for the same image file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.preprocess import (ImageReadError, PreprocessSpec, bgr_to_rgb, decode_image, load_image, load_mask,
                             preprocess_rgb)
from edge.sources import ImageFilesSource
from export.calibration_data import load_image_set
from train.data import ImageDataset, list_train_samples

SPEC = PreprocessSpec.for_normalization("half", 64)


def _independent(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """The documented recipe, written out: BGR→RGB, bilinear resize, /255, (x − mean)/std, HWC→CHW."""
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    rgb = cv2.resize(np.ascontiguousarray(rgb), (spec.image_size, spec.image_size), interpolation=cv2.INTER_LINEAR)
    x = (rgb.astype(np.float32) / 255.0 - np.float32(spec.mean)) / np.float32(spec.std)
    return x.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, synthetic_root) -> list[Path]:
    """A PNG from the dataset plus a non-square JPEG of another size (camera-like)."""
    png = list_train_samples(synthetic_root, "all")[0].path
    jpg = tmp_path_factory.mktemp("frames") / "frame.jpg"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(jpg), rng.integers(0, 256, (90, 120, 3)).astype(np.uint8))
    return [png, jpg]


def test_every_consumer_gets_identical_model_input(synthetic_root, image_files):
    samples = list_train_samples(synthetic_root, "all")
    for path in image_files:
        reference = load_image(path, SPEC)
        np.testing.assert_allclose(reference, _independent(path, SPEC), atol=1e-6)
        # edge: an image-directory source and a camera/video frame (BGR from OpenCV)
        frame, _ = ImageFilesSource([path], "test").read()
        np.testing.assert_array_equal(preprocess_rgb(bgr_to_rgb(frame), SPEC), reference)
        np.testing.assert_array_equal(preprocess_rgb(bgr_to_rgb(cv2.imread(str(path))), SPEC), reference)
        # export calibration / accuracy guard
        image_set = load_image_set([path], ["c"], [0], SPEC.image_size, progress=False)
        np.testing.assert_array_equal(image_set.arrays(SPEC)[0], reference)
    # training (plain and cached): the same tensor
    sample = next(s for s in samples if s.path == image_files[0])
    for cache in (False, True):
        item = ImageDataset([sample], SPEC, cache=cache)[0]["image"].numpy()
        np.testing.assert_array_equal(item, load_image(sample.path, SPEC))


def test_grey_frames_and_bad_files(tmp_path):
    grey = np.full((10, 12), 77, np.uint8)
    rgb = bgr_to_rgb(grey)
    assert rgb.shape == (10, 12, 3) and (rgb == 77).all()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageReadError, match="bad.png: cannot decode image"):
        decode_image(bad)
    with pytest.raises(ImageReadError, match="missing.png: image file not found"):
        decode_image(tmp_path / "missing.png")
    mask = tmp_path / "m.png"
    cv2.imwrite(str(mask), np.zeros((8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="m.png: mask is 8x8 but its image is 16x16"):
        load_mask(mask, (16, 16), 64)

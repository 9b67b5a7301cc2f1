"""One preprocessing path: training, export calibration, evaluation, edge sources and bench give the
model bit-identical inputs for the same image file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.preprocess import (
    ImageReadError,
    PreprocessSpec,
    bgr_to_rgb,
    decode_image,
    load_image,
    load_mask,
    preprocess_rgb,
)
from edge.sources import ImageFilesSource
from export.datasets import load_image_set
from train.data import ImageDataset, list_train_samples

SPEC = PreprocessSpec.for_normalization("half", 64, resize="area")  # the policy _independent writes out


def _independent(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """The documented recipe, written out: BGR→RGB, resize (area-average a shrinking axis, bilinear a growing one),
    /255, (x − mean)/std, HWC→CHW."""
    rgb = np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])
    s = spec.image_size
    if spec.resize == "area":
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (min(w, s), min(h, s)), interpolation=cv2.INTER_AREA) if max(h, w) > s else rgb
    rgb = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_LINEAR) if rgb.shape[:2] != (s, s) else rgb
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
        image_set = load_image_set([path], ["c"], [0], SPEC, progress=False)
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


@pytest.mark.parametrize("shape", [(256, 256), (256, 40), (40, 256), (20, 30), (64, 64)])
def test_resize_antialiases_a_shrinking_axis_and_keeps_old_manifests_bilinear(shape) -> None:
    from edge.preprocess import resize_rgb

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    out = resize_rgb(rgb, 64, "area")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    if shape[0] == 256 and shape[1] == 256:  # 4× reduction: each output pixel is the mean of its 4×4 block
        blocks = rgb.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
        assert np.abs(out.astype(float) - blocks).max() <= 0.5 + 1e-9
    assert np.array_equal(resize_rgb(rgb, 64, "linear"), cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_LINEAR)
                          if shape != (64, 64) else rgb)
    old = PreprocessSpec.from_dict({"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
                                    "resize": "cv2.INTER_LINEAR"})
    assert old.resize == "linear"
    assert PreprocessSpec.from_dict(PreprocessSpec(64, resize="area").to_dict()).resize == "area"
    assert PreprocessSpec(64).resize == "area"  # new runs' default (the pyramid is opt-in)


@pytest.mark.parametrize("resize", ["linear", "pyramid"])
def test_every_consumer_agrees_for_other_resize_policies_too(synthetic_root, image_files, resize: str) -> None:
    spec = PreprocessSpec.for_normalization("half", 64, resize=resize)
    for path in image_files:
        reference = load_image(path, spec)
        if resize == "linear":
            np.testing.assert_allclose(reference, _independent(path, spec), atol=1e-6)
        image_set = load_image_set([path], ["c"], [0], spec, progress=False)
        np.testing.assert_array_equal(image_set.arrays(spec)[0], reference)


@pytest.mark.parametrize("fit", ["stretch", "letterbox", "center-crop"])
def test_fit_policies_map_image_and_mask_the_same_way_and_the_map_back(fit: str, tmp_path) -> None:
    from edge.preprocess import FITS, fit_image, map_to_frame, normalize
    assert fit in FITS
    height, width, s = 60, 120, 32
    rgb = np.full((height, width, 3), 40, np.uint8)
    rgb[20:40, 70:90] = 250  # a bright defect right of centre
    mask = np.zeros((height, width), np.uint8)
    mask[20:40, 70:90] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    spec = PreprocessSpec.for_normalization("half", s, fit=fit, resize="area")
    view = fit_image(rgb, spec)
    fitted_mask = load_mask(tmp_path / "m.png", (height, width), s, fit)
    assert view.shape == (s, s, 3) and fitted_mask.shape == (s, s)
    # Independent geometry: what each policy keeps of the 60×120 frame.
    if fit == "stretch":
        expected = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA)
    elif fit == "center-crop":
        expected = cv2.resize(rgb[:, 30:90], (s, s), interpolation=cv2.INTER_AREA)
    else:  # 120 → 32 wide, 60 → 16 tall, centred, the border the normalisation mean (0.5 → 128)
        expected = np.full((s, s, 3), 128, np.uint8)
        expected[8:24] = cv2.resize(rgb, (s, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(view, expected)
    bright = view[..., 0] > 200
    assert bright.any() and fitted_mask.any()
    assert (fitted_mask.astype(bool) & bright).sum() >= 0.6 * fitted_mask.sum()  # mask and defect still coincide
    if fit == "letterbox":
        assert np.allclose(normalize(view, spec)[:, :8], 0.0, atol=0.01)  # the border reads as the mean
    # The map back onto the frame: the defect's map lands on the defect's pixels.
    frame_map = map_to_frame(fitted_mask.astype(np.float32), (height, width), fit)
    assert frame_map.shape == (height, width)
    assert frame_map[25:35, 75:85].mean() > 0.9 and frame_map[:, :10].max() < 0.1
    # A square image is its own view under every policy (cached views stay idempotent).
    square = cv2.resize(rgb, (s, s))
    np.testing.assert_array_equal(fit_image(square, spec), square)


def test_grey_images_become_three_equal_channels_and_old_manifests_stretch(tmp_path) -> None:
    grey = np.random.default_rng(0).integers(0, 255, (30, 50), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    rgb = decode_image(tmp_path / "g.png")
    assert rgb.shape == (30, 50, 3) and np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 2], grey)
    assert np.array_equal(bgr_to_rgb(grey), rgb)  # a grey camera frame: the same three channels
    old = PreprocessSpec(64).to_dict()
    del old["fit"]
    assert PreprocessSpec.from_dict(old).fit == "stretch"
    assert PreprocessSpec.from_dict(PreprocessSpec(64, fit="letterbox").to_dict()).fit == "letterbox"
    with pytest.raises(ValueError, match="fit"):
        PreprocessSpec(64, fit="pad")


@pytest.mark.parametrize("fit", ["stretch", "letterbox", "center-crop"])
@pytest.mark.parametrize("normalization,resize", [("half", "area"), ("imagenet", "area"), ("half", "pyramid")])
def test_the_frame_path_gives_the_host_paths_numbers_exactly(fit: str, normalization: str, resize: str) -> None:
    from edge.preprocess import preprocess_frame
    rng = np.random.default_rng(3)
    spec = PreprocessSpec.for_normalization(normalization, 64, fit=fit, resize=resize)
    for shape in ((480, 640, 3), (300, 200, 3), (64, 64, 3)):
        bgr = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(preprocess_frame(bgr, spec), preprocess_rgb(bgr_to_rgb(bgr), spec))
    grey = rng.integers(0, 256, (120, 90), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_frame(grey, spec), preprocess_rgb(bgr_to_rgb(grey), spec))


def _box_average(image: np.ndarray, factor_y: int, factor_x: int) -> np.ndarray:
    """Exact block means, written out in float (the reference a box pyramid must match to rounding)."""
    h, w, c = image.shape
    blocks = image.astype(np.float64).reshape(h // factor_y, factor_y, w // factor_x, factor_x, c)
    return blocks.mean(axis=(1, 3))


@pytest.mark.parametrize("shape,target", [((256, 256, 3), 64), ((256, 128, 3), 64), ((192, 512, 3), 64)])
def test_the_box_pyramid_is_block_averaging_and_keeps_a_thin_scratch(shape, target) -> None:
    """Power-of-two reductions are exact block means (±1 grey level of double rounding); a 1-pixel line survives
    at every phase, where plain bilinear drops it at some (that is what antialiasing is for)."""
    from edge.preprocess import box_pyramid, resize_rgb
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    h, w = shape[:2]
    out = resize_rgb(image, target, "pyramid")
    if h % target == 0 and w % target == 0 and (h // target) & (h // target - 1) == 0 \
            and (w // target) & (w // target - 1) == 0:
        expected = _box_average(image, h // target, w // target)
        assert np.abs(out.astype(np.float64) - expected).max() <= 1.0
    assert np.abs(box_pyramid(image, target, target).astype(int) - out.astype(int)).max() == 0
    # Within a few grey levels of OpenCV's exact area average on a natural-ish (smooth) image too.
    smooth = cv2.GaussianBlur(image, (0, 0), 3)
    area = resize_rgb(smooth, target, "area")
    assert np.abs(resize_rgb(smooth, target, "pyramid").astype(int) - area.astype(int)).mean() < 1.0
    factor = w // target
    linear_minimum = 255
    for phase in range(factor):
        lined = np.zeros((h, w, 3), np.uint8)
        lined[:, phase::factor * 4] = 255  # a 1-pixel vertical line every 4 output columns
        pyramid_peak = resize_rgb(lined, target, "pyramid").max()
        assert pyramid_peak >= 255 / factor - 2, f"phase {phase}: the line faded to {pyramid_peak}"
        linear_minimum = min(linear_minimum, int(resize_rgb(lined, target, "linear").max()))
    if factor >= 3:  # at 2× bilinear is the 2-pixel box itself
        assert linear_minimum == 0  # the test can fail: bilinear skips a line at some phase


def test_the_box_pyramid_keeps_the_geometry_of_an_odd_sized_frame() -> None:
    """No cropping: a bright square at a known place lands where the exact area resize puts it, odd sizes too."""
    from edge.preprocess import resize_rgb
    for h, w in ((481, 643), (1080, 1920), (300, 300)):
        image = np.zeros((h, w, 3), np.uint8)
        y, x = int(h * 0.7), int(w * 0.2)
        image[y - h // 20:y + h // 20, x - w // 20:x + w // 20] = 255
        centroids = []
        for method in ("area", "pyramid"):
            out = resize_rgb(image, 64, method)[..., 0].astype(np.float64)
            yy, xx = np.mgrid[:64, :64]
            centroids.append(((out * yy).sum() / out.sum(), (out * xx).sum() / out.sum()))
        assert np.allclose(centroids[0], centroids[1], atol=0.15), (h, w, centroids)


def _photo_like(height: int, width: int) -> np.ndarray:
    """Smooth content with sharp edges (what JPEG and its scaled decode treat differently) and a thin scratch."""
    rng = np.random.default_rng(7)
    image = cv2.resize(rng.integers(0, 256, (12, 16, 3)).astype(np.uint8), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    image[height // 3:height // 2, width // 4:width // 2] = 240
    image[:, width * 2 // 3:width * 2 // 3 + 2] = 10
    return image


@pytest.mark.parametrize("hw,fit,image_size,factor", [
    ((1024, 1024), "stretch", 256, 4), ((1080, 1920), "stretch", 256, 4), ((480, 640), "stretch", 256, 1),
    ((3000, 4000), "stretch", 256, 8), ((1080, 1920), "letterbox", 256, 4), ((1080, 1920), "center-crop", 256, 4),
    ((520, 520), "stretch", 256, 2), ((511, 2048), "stretch", 256, 1), ((2, 4000), "letterbox", 64, 2)])
def test_decode_reduction_keeps_at_least_the_model_input_in_either_orientation(hw, fit, image_size, factor) -> None:
    from edge.preprocess import decode_reduction, fit_geometry
    spec = PreprocessSpec(image_size, fit=fit)
    assert decode_reduction(*hw, spec) == factor
    for h, w in (hw, hw[::-1]):  # the guarantee, checked independently: the reduced crop is never enlarged
        g = fit_geometry(h // factor, w // factor, image_size, fit)
        assert g.crop[1] - g.crop[0] >= g.content[0] and g.crop[3] - g.crop[2] >= g.content[1]


def test_a_large_jpeg_is_decoded_reduced_by_every_file_reader_and_close_to_a_full_decode(tmp_path) -> None:
    """decode "reduced": libjpeg's 1/4 decode of a 384×512 JPEG for a 64 px model, the same array for training,
    export, evaluation and edge-run's file source; a PNG, "full" and old manifests decode every pixel."""
    from edge.preprocess import fit_frame, jpeg_hw, read_frame
    image = _photo_like(384, 512)
    jpg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    cv2.imwrite(str(jpg), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(png), image)
    assert jpeg_hw(jpg.read_bytes()) == (384, 512) and jpeg_hw(png.read_bytes()) is None
    assert jpeg_hw(jpg.read_bytes()[:40]) is None  # truncated before its frame header
    spec = PreprocessSpec.for_normalization("half", 64)
    full = PreprocessSpec.for_normalization("half", 64, decode="full")
    assert spec.decode == "reduced"
    frame, factor = read_frame(jpg, spec)
    assert factor == 4 and frame.shape == (96, 128, 3)
    np.testing.assert_array_equal(frame, cv2.imread(str(jpg), cv2.IMREAD_REDUCED_COLOR_4))
    reference = load_image(jpg, spec)
    np.testing.assert_array_equal(preprocess_rgb(bgr_to_rgb(frame), spec), reference)
    from edge.preprocess import load_view
    view, no_mask = load_view(jpg, spec)
    assert no_mask is None
    np.testing.assert_array_equal(preprocess_rgb(view, spec), reference)
    source_frame, _ = ImageFilesSource([jpg], "test", spec).read()
    np.testing.assert_array_equal(source_frame, frame)
    np.testing.assert_array_equal(load_image_set([jpg], ["c"], [0], spec, progress=False).arrays(spec)[0], reference)
    from train.data.mvtec import Sample
    sample = Sample(jpg, "c", 0, "good")
    for cache in (False, True):
        np.testing.assert_array_equal(ImageDataset([sample], spec, cache=cache)[0]["image"].numpy(), reference)
    # Full decode: the previous numbers exactly; the reduced view is within a grey level or so of it on average.
    assert read_frame(jpg, full)[0].shape == (384, 512, 3)
    assert ImageFilesSource([jpg], "t", full).read()[0].shape[:2] == (384, 512)
    assert read_frame(png, spec)[1] == 1 and read_frame(jpg)[1] == 1  # not a JPEG / no spec: never reduced
    np.testing.assert_array_equal(load_image(jpg, full), preprocess_rgb(decode_image(jpg), full))
    difference = np.abs(fit_frame(frame, spec).astype(int) - fit_frame(read_frame(jpg, full)[0], full).astype(int))
    assert difference.mean() < 1.5, difference.mean()
    # A manifest or run written before the decode policy decoded in full.
    old = spec.to_dict()
    del old["decode"]
    assert PreprocessSpec.from_dict(old).decode == "full" and PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="decode"):
        PreprocessSpec(64, decode="half")


def test_masks_of_reduced_images_are_checked_against_the_file_size(tmp_path) -> None:
    from edge.preprocess import read_frame
    from train.data.mvtec import Sample
    image = _photo_like(384, 512)
    cv2.imwrite(str(tmp_path / "big.jpg"), image)
    mask = np.zeros((384, 512), np.uint8)
    mask[128:192, 128:256] = 255  # the bright block of _photo_like
    cv2.imwrite(str(tmp_path / "big_mask.png"), mask)
    spec = PreprocessSpec.for_normalization("half", 64)
    sample = Sample(tmp_path / "big.jpg", "c", 1, "blob", tmp_path / "big_mask.png")
    item = ImageDataset([sample], spec, with_masks=True)[0]
    np.testing.assert_array_equal(item["mask"].numpy()[0], load_mask(tmp_path / "big_mask.png", (384, 512), 64))
    assert 0 < int(item["mask"].sum()) < 64 * 64 // 4
    cv2.imwrite(str(tmp_path / "short.png"), mask[:376])
    with pytest.raises(ImageReadError, match=r"short.png: mask is 512x376 but its image is about 512x384 "
                                             r"\(decoded at 1/4\)"):
        load_mask(tmp_path / "short.png", (96, 128), 64, reduction=4)
    # libjpeg rounds the reduced size up: a 383-row image decodes to 96 rows at 1/4, and its mask passes
    cv2.imwrite(str(tmp_path / "odd.jpg"), image[:383])
    assert read_frame(tmp_path / "odd.jpg", spec)[0].shape[:2] == (96, 128)
    cv2.imwrite(str(tmp_path / "odd_mask.png"), mask[:383])
    assert load_mask(tmp_path / "odd_mask.png", (96, 128), 64, reduction=4).shape == (64, 64)


def test_edge_run_decodes_files_as_the_model_says_unless_a_roi_is_in_full_resolution_pixels(tmp_path) -> None:
    import threading

    from edge.config import SourceConfig
    from edge.counters import RuntimeCounters
    from edge.runner import open_source
    cv2.imwrite(str(tmp_path / "a.jpg"), _photo_like(384, 512))
    spec = PreprocessSpec.for_normalization("half", 64)
    stop = threading.Event()
    plain = open_source(SourceConfig(source=str(tmp_path)), RuntimeCounters(), stop, spec=spec)
    cropped = open_source(SourceConfig(source=str(tmp_path), roi="0,0,300,200"), RuntimeCounters(), stop, spec=spec)
    assert plain.raw.spec == spec and cropped.raw.spec is None


def test_a_reduced_letterboxed_image_and_its_mask_share_one_geometry(tmp_path) -> None:
    """libjpeg rounds a reduced size up (448×617 at 1/2 → 224×309), which moves the letterbox content by a row
    (offset 31 instead of 30): the mask follows the decoded image's geometry, so a defect at the image's top edge
    never lands on the border."""
    from edge.preprocess import fit_frame, fit_mask, read_frame
    image = np.full((448, 617, 3), 60, np.uint8)
    image[:100, 200:400] = 230  # touches the top edge
    mask = np.zeros((448, 617), np.uint8)
    mask[:100, 200:400] = 255
    cv2.imwrite(str(tmp_path / "a.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 98])
    cv2.imwrite(str(tmp_path / "a_mask.png"), mask)
    spec = PreprocessSpec.for_normalization("half", 224, fit="letterbox")
    frame, reduction = read_frame(tmp_path / "a.jpg", spec)
    assert reduction == 2 and frame.shape[:2] == (224, 309)
    view = fit_frame(frame, spec)
    fitted = load_mask(tmp_path / "a_mask.png", frame.shape[:2], 224, "letterbox", reduction)
    content_rows = np.flatnonzero((np.abs(view.astype(int) - 128) > 3).any(axis=(1, 2)))
    mask_rows = np.flatnonzero(fitted.any(axis=1))
    assert mask_rows.min() == content_rows.min() == 31 and mask_rows.max() <= content_rows.max()
    assert fit_mask(mask, 224, "letterbox").any(axis=1).nonzero()[0].min() == 30  # the file's own geometry: border
    assert ((fitted > 0) == (view[..., 0] > 145)).mean() > 0.99

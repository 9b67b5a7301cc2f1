"""train.data: MVTec layout discovery, sample lists, seeded split, ImageDataset and layout errors."""
from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.preprocess import NORMALIZATIONS, ImageReadError, PreprocessSpec
from train.data import (
    ImageDataset,
    MVTecLayoutError,
    Sample,
    discover_categories,
    image_hw,
    list_test_samples,
    list_train_samples,
    parse_categories,
    split_train_val,
)

SPEC = PreprocessSpec(image_size=32)


def _img(path: Path, h: int, w: int, seed: int = 0, value: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8) if value is None else value
    assert cv2.imwrite(str(path), arr)
    return path


def _mask(path: Path, h: int, w: int, box: tuple[int, int, int, int] = (2, 6, 3, 9)) -> Path:
    m = np.zeros((h, w), np.uint8)
    m[box[0]:box[1], box[2]:box[3]] = 255
    return _img(path, h, w, value=m)


def _category(root: Path, name: str, n_train: int, defects: dict[str, int], h: int = 40, w: int = 48,
              ext: str = ".png", n_good: int = 2) -> None:
    for i in range(n_train):
        _img(root / name / "train" / "good" / f"{i:03d}{ext}", h, w, seed=i)
    for i in range(n_good):
        _img(root / name / "test" / "good" / f"{i:03d}{ext}", h, w, seed=100 + i)
    for defect, n in defects.items():
        for i in range(n):
            _img(root / name / "test" / defect / f"{i:03d}{ext}", h, w, seed=200 + i)
            _mask(root / name / "ground_truth" / defect / f"{i:03d}_mask.png", h, w)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("mvtec")
    _category(r, "bottle", 10, {"broken": 2, "contamination": 1})
    _category(r, "tile", 15, {"crack": 1}, h=32, w=32, ext=".jpg", n_good=1)
    (r / "bottle" / "train" / "good" / "notes.txt").write_text("not an image")
    (r / "license.txt").write_text("")
    (r / "docs").mkdir()          # a directory without train/ or test/ is not a category
    (r / ".cache" / "train").mkdir(parents=True)
    return r


def _assert_names(excinfo: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert str(path) in msg, msg
    assert "\n" not in msg


# ---------------------------------------------------------------------------------------------- layout
def test_discover_categories_finds_only_category_dirs(root: Path) -> None:
    assert discover_categories(root) == ["bottle", "tile"]


def test_parse_categories_all_and_lists(root: Path) -> None:
    assert parse_categories("all", root) == ["bottle", "tile"]
    assert parse_categories("tile,bottle", root) == ["tile", "bottle"]
    assert parse_categories(" tile , tile ", root) == ["tile"]
    assert parse_categories(["bottle"], root) == ["bottle"]


def test_train_samples(root: Path) -> None:
    samples = list_train_samples(root, "all")
    assert [s.category for s in samples] == ["bottle"] * 10 + ["tile"] * 15
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in samples)
    assert [s.path.name for s in samples[:3]] == ["000.png", "001.png", "002.png"]  # notes.txt ignored
    assert list_train_samples(root, ["tile"]) == samples[10:]


def test_test_samples_and_masks(root: Path) -> None:
    samples = list_test_samples(root, ["bottle", "tile"])
    got = [(s.category, s.defect, s.label, s.path.name) for s in samples]
    assert got == [("bottle", "broken", 1, "000.png"), ("bottle", "broken", 1, "001.png"),
                   ("bottle", "contamination", 1, "000.png"), ("bottle", "good", 0, "000.png"),
                   ("bottle", "good", 0, "001.png"), ("tile", "crack", 1, "000.jpg"), ("tile", "good", 0, "000.jpg")]
    for s in samples:
        if s.label:
            assert s.mask_path == root / s.category / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
        else:
            assert s.mask_path is None


def test_image_hw_reads_png_and_jpeg_headers(root: Path) -> None:
    for p in [root / "bottle" / "train" / "good" / "000.png", root / "tile" / "train" / "good" / "000.jpg"]:
        assert image_hw(p) == cv2.imread(str(p)).shape[:2]


# ----------------------------------------------------------------------------------------------- split
def _fake(cat: str, n: int) -> list[Sample]:
    return [Sample(path=Path(f"/d/{cat}/train/good/{i:03d}.png"), category=cat, label=0, defect="good")
            for i in range(n)]


def test_split_is_seeded_disjoint_and_80_20_per_category() -> None:
    samples = _fake("a", 100) + _fake("b", 10) + _fake("c", 7)
    train, val = split_train_val(samples, 0.2, seed=0)
    for cat, n_val in (("a", 20), ("b", 2), ("c", 1)):
        t = {s.path for s in train if s.category == cat}
        v = {s.path for s in val if s.category == cat}
        assert len(v) == n_val and not t & v
        assert t | v == {s.path for s in samples if s.category == cat}
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    t2, v2 = split_train_val(shuffled, 0.2, seed=0)  # membership independent of input order
    assert sorted(map(str, (s.path for s in t2))) == sorted(map(str, (s.path for s in train)))
    assert sorted(map(str, (s.path for s in v2))) == sorted(map(str, (s.path for s in val)))
    assert split_train_val(samples, 0.2, seed=0) == (train, val)
    # A category's split does not depend on which other categories are trained with it.
    assert split_train_val(_fake("b", 10), 0.2, seed=0)[1] == [s for s in val if s.category == "b"]
    vals = {tuple(s.path for s in split_train_val(samples, 0.2, seed=k)[1]) for k in range(4)}
    assert len(vals) == 4


def test_split_edge_cases() -> None:
    assert split_train_val(_fake("a", 1), 0.2) == (_fake("a", 1), [])
    assert split_train_val(_fake("a", 4), 0.0) == (_fake("a", 4), [])
    with pytest.raises(ValueError, match="val-fraction"):
        split_train_val(_fake("a", 4), 1.0)


# --------------------------------------------------------------------------------------------- dataset
def test_dataset_items_shapes_and_dtypes(root: Path) -> None:
    ds = ImageDataset(list_test_samples(root, "all"), SPEC, with_masks=True)
    assert len(ds) == 7
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
        assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (1, 32, 32)
        assert type(item["label"]) is int and item["category"] in ("bottle", "tile")
        assert item["path"] == str(ds.samples[i].path)
        assert set(item["mask"].unique().tolist()) == ({0, 1} if item["label"] else {0})
    assert "mask" not in ImageDataset(list_train_samples(root, "tile"), SPEC)[0]


def test_dataset_image_and_mask_are_aligned(tmp_path: Path) -> None:
    # White box on black at even coordinates: a 2× linear downscale keeps it exact and pixel-aligned.
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:40, 8:32] = 255
    path = _img(tmp_path / "x.png", 64, 64, value=img)
    mask_path = _mask(tmp_path / "x_mask.png", 64, 64, box=(16, 40, 8, 32))
    spec = PreprocessSpec.for_normalization("imagenet", 32)
    item = ImageDataset([Sample(path, "c", 1, "d", mask_path)], spec, with_masks=True)[0]
    expected_mask = np.zeros((32, 32), np.uint8)
    expected_mask[8:20, 4:16] = 1
    np.testing.assert_array_equal(item["mask"][0].numpy(), expected_mask)
    mean, std = (np.array(v, np.float32)[:, None, None] for v in NORMALIZATIONS["imagenet"])
    expected = np.where(expected_mask[None] == 1, (1 - mean) / std, (0 - mean) / std)
    np.testing.assert_allclose(item["image"].numpy(), expected, atol=1e-5)


def test_cache_returns_identical_items_without_rereading(tmp_path: Path) -> None:
    paths = [_img(tmp_path / f"{i}.png", 40, 48, seed=i) for i in range(4)]
    samples = [Sample(p, "c", 0, "good") for p in paths]
    plain = [ImageDataset(samples, SPEC, with_masks=True)[i] for i in range(4)]
    cached = ImageDataset(samples, SPEC, with_masks=True, cache=True)
    cached.precompute(progress=False)
    for p in paths:
        p.unlink()  # from here on only the cache can answer
    for i in range(4):
        assert torch.equal(cached[i]["image"], plain[i]["image"])
        assert torch.equal(cached[i]["mask"], plain[i]["mask"])
    loader = torch.utils.data.DataLoader(cached, batch_size=2, num_workers=2)
    batches = list(loader)  # workers inherit the parent's filled cache
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.stack([x["image"] for x in plain]))
    with pytest.raises(ImageReadError):
        ImageDataset(samples, SPEC)[0]


# ---------------------------------------------------------------------------------------------- errors
def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for call in (lambda: discover_categories(missing), lambda: parse_categories("all", missing),
                 lambda: list_train_samples(missing, ["bottle"])):
        with pytest.raises(MVTecLayoutError) as e:
            call()
        _assert_names(e, missing)


def test_unknown_category(root: Path) -> None:
    with pytest.raises(MVTecLayoutError) as e:
        parse_categories("bottle,carpet", root)
    _assert_names(e, root / "carpet")
    assert "bottle" in str(e.value)  # lists what is available
    with pytest.raises(MVTecLayoutError):
        parse_categories(" , ", root)


def test_category_dir_passed_as_root(root: Path) -> None:
    with pytest.raises(MVTecLayoutError, match="single category") as e:
        discover_categories(root / "bottle")
    _assert_names(e, root / "bottle")


def test_missing_and_empty_train_good(tmp_path: Path) -> None:
    _category(tmp_path, "a", 0, {"x": 1})
    with pytest.raises(MVTecLayoutError) as e:
        list_train_samples(tmp_path, ["a"])
    _assert_names(e, tmp_path / "a" / "train" / "good")
    (tmp_path / "a" / "train" / "good").mkdir(parents=True)
    (tmp_path / "a" / "train" / "good" / "readme.md").write_text("")
    with pytest.raises(MVTecLayoutError, match="no images") as e:
        list_train_samples(tmp_path, "all")
    _assert_names(e, tmp_path / "a" / "train" / "good")


@pytest.mark.parametrize("content", [b"", b"this is not a png", b"\x89PNG\r\n\x1a\n"])
def test_unreadable_image(tmp_path: Path, content: bytes) -> None:
    _category(tmp_path, "a", 2, {})
    bad = tmp_path / "a" / "train" / "good" / "001.png"
    bad.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        list_train_samples(tmp_path, ["a"])
    _assert_names(e, bad)


def test_truncated_image_fails_at_load_naming_file(tmp_path: Path) -> None:
    _category(tmp_path, "a", 2, {})
    bad = tmp_path / "a" / "train" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:40])  # header intact, pixel data gone
    ds = ImageDataset(list_train_samples(tmp_path, ["a"]), SPEC)
    with pytest.raises(ImageReadError) as e:
        ds[1]
    _assert_names(e, bad)


def test_missing_mask(tmp_path: Path) -> None:
    _category(tmp_path, "a", 2, {"crack": 2})
    mask = tmp_path / "a" / "ground_truth" / "crack" / "001_mask.png"
    mask.unlink()
    with pytest.raises(MVTecLayoutError, match="mask not found") as e:
        list_test_samples(tmp_path, ["a"])
    _assert_names(e, mask)


def test_wrong_size_mask(tmp_path: Path) -> None:
    _category(tmp_path, "a", 2, {"crack": 1}, h=40, w=48)
    mask = _mask(tmp_path / "a" / "ground_truth" / "crack" / "000_mask.png", 40, 40)
    with pytest.raises(MVTecLayoutError, match="40x40") as e:
        list_test_samples(tmp_path, ["a"])
    _assert_names(e, mask)


def test_corrupt_mask(tmp_path: Path) -> None:
    _category(tmp_path, "a", 2, {"crack": 1})
    mask = tmp_path / "a" / "ground_truth" / "crack" / "000_mask.png"
    mask.write_bytes(b"garbage")
    with pytest.raises(ImageReadError) as e:
        list_test_samples(tmp_path, ["a"])
    _assert_names(e, mask)


def test_dataset_rejects_anomalous_sample_without_mask(tmp_path: Path) -> None:
    path = _img(tmp_path / "x.png", 8, 8)
    with pytest.raises(MVTecLayoutError) as e:
        ImageDataset([Sample(path, "c", 1, "crack", None)], SPEC, with_masks=True)
    _assert_names(e, path)


def test_category_without_ground_truth_has_image_level_labels_only(tmp_path: Path) -> None:
    import shutil

    _category(tmp_path, "a", 2, {"crack": 2})
    shutil.rmtree(tmp_path / "a" / "ground_truth")
    samples = list_test_samples(tmp_path, ["a"])
    anomalous = [s for s in samples if s.label == 1]
    assert len(anomalous) == 2 and all(s.mask_path is None and s.defect == "crack" for s in anomalous)

"""train.synthetic: MVTec layout, exact masks (vs. the defect-free render), determinism, variety, CLI."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.preprocess import decode_image
from train.data import discover_categories, list_test_samples, list_train_samples
from train.synthetic import KINDS, MIN_DELTA, main, make_synthetic_dataset, render_sample, resolve_kinds, sample_seed

SIZE, SEED = 64, 3
REVEAL = {"hole", "cut", "missing"}  # show the backing, whose colour may locally be close to the part's


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    # test_defect=4 gives one image of each defect type of every kind.
    return make_synthetic_dataset(out, categories=len(KINDS), image_size=SIZE, train=5, test_good=2,
                                  test_defect=4, seed=SEED, progress=False)


def _read_mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def test_layout_passes_discovery(root: Path) -> None:
    assert discover_categories(root) == sorted(KINDS)
    train = list_train_samples(root, "all")
    assert len(train) == 5 * len(KINDS)
    test = list_test_samples(root, "all")  # also checks every mask exists and matches its image size
    for kind in KINDS:
        mine = [s for s in test if s.category == kind]
        assert sum(s.label == 0 for s in mine) == 2
        assert sorted(s.defect for s in mine if s.label) == sorted(KINDS[kind].defects)
        assert all(decode_image(s.path).shape == (SIZE, SIZE, 3) for s in mine)


def test_masks_are_exactly_the_changed_pixels(root: Path) -> None:
    for s in list_test_samples(root, "all"):
        if not s.label:
            continue
        image = decode_image(s.path)
        clean, _ = render_sample(s.category, SIZE, sample_seed(SEED, s.category, f"test/{s.defect}", int(s.path.stem)))
        mask = _read_mask(s.mask_path)
        assert set(np.unique(mask)) == {0, 255}, s.mask_path
        changed = (image != clean).any(-1)
        np.testing.assert_array_equal(mask > 0, changed, err_msg=str(s.path))
        diff = np.abs(image.astype(int) - clean.astype(int)).max(-1)
        assert diff[changed].mean() >= MIN_DELTA, s.path  # visible, not just different
        if s.defect not in REVEAL:
            assert diff[changed].min() >= MIN_DELTA, s.path
        assert 8 <= changed.sum() <= 0.3 * SIZE * SIZE, s.path


def test_normal_files_are_the_clean_render(root: Path) -> None:
    for kind in KINDS:
        for subset, i in (("train/good", 0), ("test/good", 1)):
            clean, mask = render_sample(kind, SIZE, sample_seed(SEED, kind, subset, i))
            np.testing.assert_array_equal(decode_image(root / kind / subset / f"{i:03d}.png"), clean)
            assert not mask.any()
    assert not (root / "fabric" / "ground_truth" / "good").exists()


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_defect_type_at_another_size(kind: str) -> None:
    size = 96
    for defect in KINDS[kind].defects:
        for seed in (11, 12):
            clean, none_mask = render_sample(kind, size, seed)
            image, mask = render_sample(kind, size, seed, defect)
            assert not none_mask.any() and mask.dtype == np.uint8
            np.testing.assert_array_equal(mask.astype(bool), (image != clean).any(-1), err_msg=f"{kind}/{defect}")
            assert 0.002 * size * size <= mask.sum() <= 0.3 * size * size, (kind, defect, int(mask.sum()))
            if defect not in REVEAL:
                diff = np.abs(image.astype(int) - clean.astype(int)).max(-1)
                assert diff[mask > 0].min() >= MIN_DELTA, (kind, defect)
    with pytest.raises(ValueError, match="not defined"):
        render_sample(kind, size, 0, "no-such-defect")


@pytest.mark.parametrize("level, shift", [(250, 3), (5, -3), (128, 0), (0, 0)])
def test_composite_pushes_faint_paint_to_visible(level: int, shift: int) -> None:
    from train.synthetic import _composite
    clean = np.full((8, 8, 3), level, np.uint8)
    where = np.zeros((8, 8), bool)
    where[2:5, 3:6] = True
    out, mask = _composite(clean, clean.astype(np.float32) + shift, where, MIN_DELTA)
    np.testing.assert_array_equal(mask.astype(bool), where)
    assert np.abs(out.astype(int) - clean).max(-1)[where].min() >= MIN_DELTA
    np.testing.assert_array_equal(out[~where], clean[~where])


def test_normals_vary(root: Path) -> None:
    for kind in KINDS:
        imgs = [decode_image(p).astype(np.float32) for p in sorted((root / kind / "train" / "good").glob("*.png"))]
        for a in range(len(imgs)):
            for b in range(a + 1, len(imgs)):
                assert np.abs(imgs[a] - imgs[b]).mean() > 5, (kind, a, b)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): decode_image(p).tobytes() for p in sorted(root.rglob("*.png"))}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    args = dict(categories="washer,fabric", image_size=32, train=2, test_good=1, test_defect=2, progress=False)
    a = _files(make_synthetic_dataset(tmp_path / "a", seed=5, **args))
    b = _files(make_synthetic_dataset(tmp_path / "b", seed=5, **args))
    c = _files(make_synthetic_dataset(tmp_path / "c", seed=6, **args))
    assert len(a) == 2 * (2 + 1 + 2 + 2) and a == b
    assert a.keys() == c.keys() and a["washer/train/good/000.png"] != c["washer/train/good/000.png"]


def test_resolve_kinds() -> None:
    assert resolve_kinds(3) == list(KINDS)[:3] == resolve_kinds("3")
    assert resolve_kinds("wood, fabric,wood") == ["wood", "fabric"]
    assert resolve_kinds(["metal"]) == ["metal"]
    for bad in (0, len(KINDS) + 1, "plastic", ""):
        with pytest.raises(ValueError, match="--categories"):
            resolve_kinds(bad)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--out", str(tmp_path), "--categories", "metal", "--image-size", "32", "--train", "2",
            "--test-good", "1", "--test-defect", "1"]
    assert main(argv) == 0
    assert [s.defect for s in list_test_samples(tmp_path, "all")] == ["good", KINDS["metal"].defects[0]]
    capsys.readouterr()
    assert main(argv) == 2  # refuses to mix with an existing category
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "metal") in err and err.count("\n") == 1
    assert main(argv + ["--overwrite", "--train", "3"]) == 0
    assert len(list_train_samples(tmp_path, ["metal"])) == 3
    capsys.readouterr()
    assert main(["--out", str(tmp_path), "--categories", "plastic"]) == 2
    assert capsys.readouterr().err.startswith("error: --categories")
    assert main(["--out", str(tmp_path / "x"), "--image-size", "8"]) == 2

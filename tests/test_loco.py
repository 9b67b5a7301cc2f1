"""MVTec LOCO AD layout: mask directories (unioned), its validation split, saturated per-region overlap (sPRO)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.metrics import spro
from edge.preprocess import PreprocessSpec, load_mask


def _brute_force_spro(regions, maps, normal, limit):
    """Every distinct normal score as a threshold, plain boolean counting, area by np.interp on a fine FPR grid."""
    normal = np.asarray(normal, np.float64).ravel()
    points = []
    for t in np.r_[np.unique(normal)[::-1], -np.inf]:
        fpr = float((normal >= t).mean()) if np.isfinite(t) else 1.0
        overlaps = [min(1.0, float((amap[mask] >= t).sum()) / s) for masks, amap in zip(regions, maps)
                    for mask, s in masks]
        points.append((fpr, float(np.mean(overlaps))))
        if fpr > limit:
            break
    top = float(np.mean([min(1.0, float((amap[mask] > normal.max()).sum()) / s)
                         for masks, amap in zip(regions, maps) for mask, s in masks]))
    x, y = np.array([0.0] + [p[0] for p in points]), np.array([top] + [p[1] for p in points])
    grid = np.linspace(0.0, limit, 20001)
    return float(np.trapezoid(np.interp(grid, x, y), grid) / limit)


def test_spro_matches_a_brute_force_sweep_and_saturates() -> None:
    rng = np.random.default_rng(0)
    size = 24
    normal = rng.random((6, size, size))
    maps, regions = [], []
    for _ in range(4):
        amap = rng.random((size, size))
        masks = []
        for _ in range(2):
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(0, size - 6, 2)
            mask[y:y + 5, x:x + 5] = True
            amap[mask] += rng.uniform(0.2, 1.0)
            masks.append((mask, float(rng.choice([5.0, 25.0]))))
        maps.append(amap)
        regions.append(masks)
    ours = spro(regions, maps, normal, fpr_limit=0.05, n_thresholds=2000)
    assert ours == pytest.approx(_brute_force_spro(regions, maps, normal, 0.05), abs=5e-3)
    # A region fully above every normal score is found at FPR 0: sPRO 1. Saturation: half a region is enough.
    perfect = [[(regions[0][0][0], 25.0)]]
    high = np.where(regions[0][0][0], 5.0, 0.0)
    assert spro(perfect, [high], normal, 0.05) == pytest.approx(1.0)
    half = regions[0][0][0].copy()
    half[tuple(np.argwhere(half)[:12].T)] = False
    assert spro([[(regions[0][0][0], 12.5)]], [np.where(half, 5.0, 0.0)], normal, 0.05) == pytest.approx(1.0)


@pytest.fixture
def loco_root(tmp_path: Path) -> Path:
    """A tiny MVTec LOCO layout: train/validation/test, one logical and one structural anomaly with two masks."""
    rng = np.random.default_rng(1)
    cat = tmp_path / "loco" / "box"

    def image(path: Path, bright: tuple[slice, slice] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img = rng.integers(90, 110, (48, 64, 3), dtype=np.uint8)
        if bright is not None:
            img[bright] = 250
        cv2.imwrite(str(path), img)

    for split, n in (("train/good", 4), ("validation/good", 2), ("test/good", 3)):
        for i in range(n):
            image(cat / split / f"{i:03d}.png")
    for defect, boxes in (("logical_anomalies", [(slice(4, 12), slice(4, 12)), (slice(30, 40), slice(40, 60))]),
                          ("structural_anomalies", [(slice(20, 28), slice(20, 36))])):
        image(cat / "test" / defect / "000.png", boxes[0])
        for j, box in enumerate(boxes):
            mask = np.zeros((48, 64), np.uint8)
            mask[box] = 255
            (cat / "ground_truth" / defect / "000").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(cat / "ground_truth" / defect / "000" / f"{j:03d}.png"), mask)
    (cat / "defects_config.json").write_text(json.dumps(
        [{"defect_name": "x", "pixel_value": 255, "saturation_threshold": 0.5, "relative_saturation": True}]))
    return tmp_path / "loco"


class _Brightness(torch.nn.Module):
    """A stand-in scorer: the map is the image's brightness (bright pasted defects score high)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = x.mean(1, keepdim=True)
        return amap, amap.amax(dim=(1, 2, 3))


def test_loco_layout_unions_masks_uses_its_validation_split_and_reports_spro(loco_root: Path) -> None:
    from train.data import list_test_samples, training_split
    from train.data.loco import defect_regions, load_saturations
    from train.evaluate import evaluate_model

    samples = list_test_samples(loco_root, ["box"])
    logical = next(s for s in samples if s.defect == "logical_anomalies")
    assert logical.mask_path is not None and logical.mask_path.is_dir()
    union = load_mask(logical.mask_path, (48, 64), 32)
    parts = [load_mask(p, (48, 64), 32) for p in sorted(logical.mask_path.iterdir())]
    np.testing.assert_array_equal(union, np.maximum(parts[0], parts[1]))
    train, val = training_split(loco_root, ["box"], 0.2, 0)
    assert len(train) == 4 and [p.path.parent.parent.name for p in val] == ["validation", "validation"]
    spec = PreprocessSpec(image_size=32)
    regions = defect_regions(logical, spec, load_saturations(loco_root / "box"))
    assert len(regions) == 2 and all(s == pytest.approx(0.5 * m.sum(), rel=0.2) for m, s in regions)
    result = evaluate_model(_Brightness(), spec, loco_root, ["box"], device="cpu", progress=False)
    row = result["categories"]["box"]
    assert set(row["defects"]) == {"logical_anomalies", "structural_anomalies"}  # structural vs logical AUROC
    assert row["defects"]["structural_anomalies"]["image_auroc"] == pytest.approx(1.0)
    # The logical image's second region is not bright: half of its regions are found.
    assert 0.4 < row["spro"] < 0.8

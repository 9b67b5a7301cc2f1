"""MVTec LOCO AD's defect regions for sPRO: one mask file per region, each with a saturation threshold.

``<category>/defects_config.json`` lists each defect type's ``pixel_value`` (the value its mask files use),
``saturation_threshold`` and ``relative_saturation`` (threshold as a share of the region's area, else in pixels).
A region whose value the file does not list (or a data set without the file) saturates at its own area: then
sPRO is the plain per-region overlap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.preprocess import PreprocessSpec, fit_mask
from train.data.mvtec import MVTecLayoutError, Sample, mask_files

DEFECTS_CONFIG = "defects_config.json"


@dataclass(frozen=True)
class Saturation:
    threshold: float
    relative: bool


def load_saturations(category_dir: Path) -> dict[int, Saturation]:
    """pixel value → saturation of the category's defects_config.json ({} without one)."""
    path = category_dir / DEFECTS_CONFIG
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {int(e["pixel_value"]): Saturation(float(e["saturation_threshold"]), bool(e["relative_saturation"]))
                for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise MVTecLayoutError(f"{path}: expected a list of {{pixel_value, saturation_threshold, "
                               f"relative_saturation}} entries ({exc})") from None


def defect_regions(sample: Sample, spec: PreprocessSpec,
                   saturations: dict[int, Saturation]) -> list[tuple[np.ndarray, float]]:
    """(region mask S×S bool, saturation in S×S pixels) per mask file of an anomalous sample."""
    if sample.mask_path is None:
        return []
    regions = []
    for part in mask_files(sample.mask_path):
        raw = cv2.imread(str(part), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise MVTecLayoutError(f"{part}: cannot decode mask")
        area = float(np.count_nonzero(raw))
        if area == 0:
            continue
        region = fit_mask(raw, spec.image_size, spec.fit).astype(bool)  # one read: area and region from it
        scale = region.sum() / area  # the region's pixels in the model's view per original pixel
        rule = saturations.get(int(raw.max()))
        pixels = area if rule is None else (rule.threshold * area if rule.relative else rule.threshold)
        regions.append((region, max(min(pixels, area) * scale, 1.0)))
    return regions

"""Which convolutions every int8 file keeps fp32: chosen once per export by measured sensitivity.

One mechanism for all formats: export.sensitivity fake-quantises the fused torch graph one layer at a time
on validation normals and keeps fp32 the fewest most-sensitive convolutions that bring the simulated score
correlation to the target (``--int8-fp32-layers auto``) or the N most sensitive (``--int8-fp32-layers N``).
The choice travels to each format's quantiser as torch layer name → weight fingerprint
(export.head_scope.weight_fingerprint), which every format's graph view matches against its own weight
constants, so no converter's node naming is relied on.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edge.formats import DEFAULT_INT8_WEIGHT_BITS

from .datasets import ImageSet
from .graph import FusedGraph
from .head_scope import WeightKey, weight_fingerprint

AUTO_COUNTS = (0, 1, 2, 3, 4, 6, 8)  # auto tries these; beyond 8 the file is no longer mostly int8
SENSITIVITY_CALIB_IMAGES = 64  # ranges of the simulated activations
SENSITIVITY_VAL_IMAGES = 32  # normals the simulated map error / correlation is measured on


def _batches(images: np.ndarray, size: int = 8) -> list[torch.Tensor]:
    return list(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).split(size))


def choose_layers(graph: FusedGraph, calibration: np.ndarray, validation: ImageSet, setting: str,
                  target_spearman: float, progress: bool = True,
                  weight_bits: int = DEFAULT_INT8_WEIGHT_BITS) -> tuple[dict[str, WeightKey], dict[str, Any]]:
    """(layer name → weight fingerprint, report for the manifests) for ``--int8-fp32-layers setting``;
    ``calibration``: the preprocessed calibration images, ``validation``: the validation normals."""
    from .sensitivity import choose_fp32_layers

    if setting == "0":
        return {}, {"setting": setting, "layers": []}
    counts, target = (AUTO_COUNTS, target_spearman) if setting == "auto" else ((int(setting),), -2.0)
    calib = _batches(calibration[:SENSITIVITY_CALIB_IMAGES])
    val = _batches(validation.arrays(graph.spec, SENSITIVITY_VAL_IMAGES))
    with torch.no_grad():
        report = choose_fp32_layers(graph.module, calib, val, target, counts, progress, weight_bits)
    keep: dict[str, WeightKey] = {}
    for row in report["layers"]:
        conv = graph.module.get_submodule(row["layer"])
        assert isinstance(conv, torch.nn.Conv2d)
        key = weight_fingerprint(conv.weight.detach().numpy())
        assert key is not None
        keep[row["layer"]] = key
    return keep, {"setting": setting, "weight_bits": weight_bits, **report}

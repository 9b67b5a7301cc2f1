"""Anomaly thresholds of one exported file, from THAT file's own scores (int8 scores differ from fp32).

Calls edge.calibration (numpy only), the same code ``edge-calibrate`` runs on site:
``fpr`` — threshold at the target false-alarm rate on validation normals (tail extrapolated by a stated
peaks-over-threshold fit when there are too few images for the empirical quantile);
``f1`` — F1-optimal on validation normals + the labelled test split (categories without anomalies, or no
test split at all, fall back to ``fpr``; the section says which fit was used).
Per-category thresholds for unified models plus a global one.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edge.thresholds import CalibrationError, calibrate_thresholds, threshold_section

from .config import ExportError
from .datasets import ExportData
from .guard import Outputs


def file_thresholds(data: ExportData, outputs: Outputs, mode: str, target_fpr: float) -> dict[str, Any]:
    """The manifest "threshold" section for one file (global + per category, with their statistics)."""
    scores = [outputs.val_scores]
    labels = [np.zeros(len(outputs.val_scores), np.int64)]
    categories = list(data.validation.categories)
    used = f"validation normals ({len(outputs.val_scores)})"
    if mode == "f1" and data.test is not None and outputs.test_scores is not None:
        scores.append(outputs.test_scores)
        labels.append(data.test.labels)
        categories += data.test.categories
        used += f" + test split ({len(data.test)}, {int(data.test.labels.sum())} anomalous)"
    try:
        results = calibrate_thresholds(np.concatenate(scores), np.concatenate(labels), categories, mode=mode,
                                       target_fpr=target_fpr)
    except CalibrationError as exc:
        raise ExportError(f"threshold calibration: {exc}") from None
    section = threshold_section(results, source="export")
    section["scores_from"] = used
    if mode == "f1" and section.get("mode") != "f1":
        section["note"] = "no labelled anomalies available: fell back to the fpr mode"
    return section

"""Export-time accuracy of every produced file, measured through edge.engines (what the device runs).

Per file: on validation normals the Spearman rank correlation of image scores and the Pearson
correlation of anomaly maps (all pixels) against the fp32 torch graph, plus max |Δ| (fp32 parity);
on the test split, when the dataset has one, image AUROC and pixel AUROC (the metric table of
edge.accuracy; mean over categories, as MVTec AD reports them).  The guard: an int8 file must pass
edge.accuracy's int8 guard (AUROC drops in points vs fp32, score Spearman); an fp32 file must equal torch
within ``PARITY_ATOL``.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.accuracy import (
    GuardLimits,
    auroc_drop_points,
    category_means,
    category_table,
    defined,
    guard_failures,
    pearson,
    spearman,
)
from edge.metrics import MetricWarning
from edge.preprocess import PreprocessSpec

from .datasets import ExportData, ImageSet

# fp32 file vs torch, map and score: within 1e-4 × max(1, the reference map's largest |value|), since a
# float32 rounding error scales with the map (cosine maps are ≤ 2 per level, memory-bank distances ~10–100).
PARITY_ATOL = 1e-4
MIN_RANK_SAMPLES = 3  # a rank correlation of fewer scores says nothing

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Outputs:
    """Maps (N×1×S×S) and scores (N) of one model on the validation normals and the test split."""

    val_maps: np.ndarray
    val_scores: np.ndarray
    test_maps: np.ndarray | None = None
    test_scores: np.ndarray | None = None
    ms_per_image: float | None = None

    def test_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(maps, scores) of the test split (scored whenever the data has one)."""
        if self.test_maps is None or self.test_scores is None:
            raise ValueError("the test split was not scored")
        return self.test_maps, self.test_scores


def _score_set(run: Runner, images: ImageSet, spec: PreprocessSpec, desc: str, progress: bool,
               times: list[float], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    with tqdm(total=len(images), desc=desc, unit="img", leave=False, disable=not progress) as bar:
        for x in images.batches(spec, batch_size=batch_size):
            t0 = time.perf_counter()
            m, s = run(x)
            times.append((time.perf_counter() - t0) * 1e3 / len(x))
            maps.append(np.asarray(m, np.float32).reshape(len(x), 1, *m.shape[-2:]))
            scores.append(np.asarray(s, np.float32).reshape(len(x)))
            bar.update(len(x))
    return np.concatenate(maps), np.concatenate(scores)


def score_outputs(run: Runner, data: ExportData, spec: PreprocessSpec, desc: str = "scoring",
                  progress: bool = True, batch_size: int = 1) -> Outputs:
    """Run a model (torch reference or edge engine) over validation normals and the test split.

    ``batch_size`` 1 (engines: what the device does, and the latency is per image); the torch reference
    uses larger batches because only its outputs matter.
    """
    times: list[float] = []
    val_maps, val_scores = _score_set(run, data.validation, spec, f"{desc} (validation)", progress, times,
                                      batch_size)
    out = Outputs(val_maps, val_scores)
    if data.test is not None:
        out.test_maps, out.test_scores = _score_set(run, data.test, spec, f"{desc} (test)", progress, times,
                                                    batch_size)
    # Median per image: robust to the first-call warm-up and to a busy machine.
    out.ms_per_image = float(np.median(times)) if times else None
    return out


def load_file_engine(path: Path, threads: int) -> Any:
    """edge.engines.load_engine(path, threads) — the exact code path of the edge runtime (OpenVINO compiled
    with the manifest's precision hint)."""
    from edge.engines import load_engine
    return load_engine(path, threads=threads)


def _finite(x: np.ndarray | None) -> bool:
    return x is None or bool(np.isfinite(x).all())


SPLIT_METRICS = ("image_auroc", "pixel_auroc")  # AU-PRO and F1-max are dcam-eval's, not the guard's


def split_metrics(test: ImageSet, maps: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Image and pixel AUROC per category (sorted) and their mean over categories (None where undefined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # undefined figures are recorded as None
        table = category_table(test.categories, test.labels, scores, test.masks, maps, SPLIT_METRICS)
    per = {cat: {"n_images": table[cat]["n_images"], "n_anomalous": table[cat]["n_anomalous"],
                 **{k: defined(table[cat][k]) for k in SPLIT_METRICS}} for cat in sorted(table)}
    means = category_means(per, SPLIT_METRICS)
    return {"n_images": len(test), "n_anomalous": int(test.labels.sum()),
            **{k: defined(means[k]) for k in SPLIT_METRICS}, "per_category": per}


def file_accuracy(ref: Outputs, out: Outputs, data: ExportData, ref_test: dict[str, Any] | None,
                  threads: int) -> dict[str, Any]:
    """The manifest's "accuracy" figures of one file against the fp32 torch reference."""
    finite = _finite(out.val_maps) and _finite(out.val_scores) and _finite(out.test_maps) and _finite(out.test_scores)
    n = len(out.val_scores)
    val: dict[str, Any] = {"n_images": n, "finite": finite, "reference": "fp32 torch (export.graph)"}
    if finite:
        # Undefined (None) when too few images or constant reference scores; nan when the file's scores are constant.
        rankable = n >= MIN_RANK_SAMPLES and np.ptp(ref.val_scores) > 0
        val.update(score_spearman=spearman(out.val_scores, ref.val_scores) if rankable else None,
                   map_correlation=pearson(out.val_maps, ref.val_maps),
                   max_abs_diff_map=float(np.abs(out.val_maps - ref.val_maps).max()),
                   reference_max_abs_map=float(np.abs(ref.val_maps).max()),
                   max_abs_diff_score=float(np.abs(out.val_scores - ref.val_scores).max()))
    result: dict[str, Any] = {"validation_normals": val, "ms_per_image": out.ms_per_image, "threads": threads,
                              "timing": "median wall time of one batch-1 Engine.run on the export machine"}
    if data.test is not None and finite:
        t = split_metrics(data.test, *out.test_outputs())
        if ref_test is not None:
            t["reference"] = {"image_auroc": ref_test["image_auroc"], "pixel_auroc": ref_test["pixel_auroc"]}
            t["drop_points"] = {k: auroc_drop_points(ref_test[k], t[k]) for k in SPLIT_METRICS}
        result["test"] = t
    else:
        result["test"] = None
    return result


def guard_violations(precision: str, accuracy: dict[str, Any], max_image_auroc_drop: float,
                     max_pixel_auroc_drop: float, min_score_spearman: float,
                     parity_atol: float = PARITY_ATOL) -> list[str]:
    """Human-readable reasons why a file fails the guard (empty list: it passes)."""
    val = accuracy["validation_normals"]
    if not val["finite"]:
        return ["outputs contain NaN or inf"]
    problems = []
    if precision == "fp32":
        tolerance = parity_atol * max(1.0, val.get("reference_max_abs_map", 1.0))
        for key in ("max_abs_diff_map", "max_abs_diff_score"):
            if val[key] > tolerance:
                problems.append(f"fp32 parity: {key} {val[key]:.3g} > {tolerance:.3g} vs torch")
        return problems
    drops = (accuracy.get("test") or {}).get("drop_points") or {}
    limits = GuardLimits(max_image_auroc_drop, max_pixel_auroc_drop, min_score_spearman)
    failed = guard_failures(drops.get("image_auroc"), drops.get("pixel_auroc"), val["score_spearman"], limits)
    messages = {"score_spearman": lambda rho: f"score Spearman {rho:.3f} < {min_score_spearman:g} vs fp32 on "
                                              f"{val['n_images']} validation normals",
                "image_auroc_drop": lambda d: f"image auroc drop {d:.2f} points > {max_image_auroc_drop:g} vs fp32",
                "pixel_auroc_drop": lambda d: f"pixel auroc drop {d:.2f} points > {max_pixel_auroc_drop:g} vs fp32"}
    return [message(failed[check]) for check, message in messages.items() if check in failed]

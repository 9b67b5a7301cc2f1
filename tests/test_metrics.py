"""edge.metrics against independent references: sklearn (AUROC, ROC, F1) and a brute-force PRO sweep."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from edge import metrics
from edge.metrics import MetricInputError, MetricWarning

# ---------------------------------------------------------------------------------------------------
# independent references


def brute_force_pro_curve(masks: np.ndarray, maps: np.ndarray, structure: np.ndarray) -> tuple[list, list]:
    """Loop over every distinct threshold t (descending); anomalous ⇔ score ≥ t; per-component overlap."""
    components = []  # (image index, boolean region)
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=structure)
        components += [(i, labeled == k) for k in range(1, n + 1)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fprs.append(np.logical_and(predicted, normal).sum() / normal.sum())
        pros.append(np.mean([predicted[i][region].sum() / region.sum() for i, region in components]))
    return fprs + [1.0], pros + [1.0]


def area_up_to(xs: list, ys: list, limit: float) -> float:
    """Trapezoids segment by segment, the segment crossing `limit` cut with y linearly interpolated there."""
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area


EIGHT = np.ones((3, 3), int)
FOUR = ndimage.generate_binary_structure(2, 1)


def tiny_masks() -> np.ndarray:
    """3 images of 8×8: two components, one diagonal-touching pair (1 component only with 8-connectivity), one good."""
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[0, 1:3, 1:3] = 1          # 2×2 block
    masks[0, 5:8, 4] = 1            # 3-pixel bar
    masks[1, 2, 2] = masks[1, 3, 3] = masks[1, 4, 4] = 1  # diagonal staircase
    masks[1, 6, 0:2] = 1            # separate 2-pixel bar
    return masks                    # masks[2] stays all-normal


def tiny_maps(seed: int, levels: int) -> np.ndarray:
    """Integer-valued scores (many ties, also across normal/anomalous pixels), anomalies scored higher on average."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, levels, (3, 8, 8)).astype(np.float32)
    return maps + tiny_masks() * rng.integers(0, levels, (3, 8, 8))


# ---------------------------------------------------------------------------------------------------
# AUROC / ROC / F1


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 6, 200).astype(np.float32) + 0.5 * labels  # heavy ties, signal present
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_extremes_and_orientation():
    assert metrics.image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.image_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert metrics.image_auroc([0, 1], [0.5, 0.5]) == 0.5


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    masks = (rng.random((6, 32, 32)) < 0.08).astype(np.uint8)
    maps = (rng.integers(0, 30, (6, 32, 32)) + 4 * masks).astype(np.float32)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # (N,1,H,W) tensors as models emit them give the same value
    assert metrics.pixel_auroc(masks[:, None], maps[:, None]) == pytest.approx(expected, abs=1e-12)


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 80)
    scores = rng.integers(0, 10, 80).astype(np.float64)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert np.isinf(thr[0])


def test_pixel_roc_curve_area_is_pixel_auroc():
    masks = tiny_masks()
    maps = tiny_maps(3, 5)
    fpr, tpr = metrics.pixel_roc_curve(masks, maps)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60).astype(np.float64) + labels * rng.integers(0, 3, 60)
    brute = {t: f1_score(labels, (scores >= t).astype(int)) for t in np.unique(scores)}
    best_f1, threshold = metrics.f1_max(labels, scores)
    assert best_f1 == pytest.approx(max(brute.values()), abs=1e-12)
    assert brute[threshold] == pytest.approx(best_f1, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# PRO / AU-PRO


@pytest.mark.parametrize("seed,levels", [(0, 4), (1, 6), (2, 10), (3, 3), (4, 64)])
def test_aupro_matches_brute_force(seed, levels):
    masks, maps = tiny_masks(), tiny_maps(seed, levels)
    xs, ys = brute_force_pro_curve(masks, maps, EIGHT)
    for limit in (0.3, 0.05, 1.0):
        expected = area_up_to(xs, ys, limit) / limit
        assert metrics.aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_is_the_brute_force_polyline():
    masks, maps = tiny_masks(), tiny_maps(5, 7)
    fpr, pro = metrics.pro_curve(masks, maps)
    xs, ys = brute_force_pro_curve(masks, maps, EIGHT)
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    # Same polyline: every brute-force vertex lies on our curve (PRO as a function of FPR; take the
    # highest PRO at a given FPR — vertical steps are where the curves can differ only in collinear points).
    for x, y in zip(xs, ys):
        at_x = pro[np.isclose(fpr, x)]
        assert at_x.size and at_x.min() - 1e-12 <= y <= at_x.max() + 1e-12


def test_aupro_uses_8_connectivity():
    masks, maps = tiny_masks(), tiny_maps(1, 6)
    xs8, ys8 = brute_force_pro_curve(masks, maps, EIGHT)
    xs4, ys4 = brute_force_pro_curve(masks, maps, FOUR)
    with_8, with_4 = area_up_to(xs8, ys8, 0.3) / 0.3, area_up_to(xs4, ys4, 0.3) / 0.3
    assert abs(with_8 - with_4) > 1e-3  # the fixture distinguishes the two connectivities
    assert metrics.aupro(masks, maps) == pytest.approx(with_8, abs=1e-12)


def test_aupro_perfect_and_constant_maps():
    masks = tiny_masks()
    assert metrics.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    # A constant map jumps from (0,0) straight to (1,1): area up to 0.3 of the diagonal = 0.3²/2.
    assert metrics.aupro(masks, np.zeros(masks.shape, np.float32)) == pytest.approx(0.15)


def test_trapezoid_interpolates_at_limit():
    assert metrics.trapezoid([0.0, 0.2, 0.4], [0.0, 1.0, 1.0], x_max=0.3) == pytest.approx(0.1 + 0.1)
    assert metrics.trapezoid([0.0, 1.0], [1.0, 1.0]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------
# degenerate and bad input


def test_single_class_returns_nan_with_warning():
    with pytest.warns(MetricWarning, match="no anomalous"):
        assert np.isnan(metrics.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    with pytest.warns(MetricWarning, match="no normal"):
        assert np.isnan(metrics.image_auroc([1, 1], [0.1, 0.2]))
    with pytest.warns(MetricWarning):
        f1, threshold = metrics.f1_max([0, 0], [0.1, 0.2])
    assert np.isnan(f1) and np.isnan(threshold)


def test_no_anomalous_pixels_returns_nan_with_warning():
    masks = np.zeros((2, 8, 8), np.uint8)
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.warns(MetricWarning, match="no anomalous pixels"):
        assert np.isnan(metrics.aupro(masks, maps))
    with pytest.warns(MetricWarning, match="no anomalous"):
        assert np.isnan(metrics.pixel_auroc(masks, maps))
    with pytest.warns(MetricWarning, match="no normal pixels"):
        assert np.isnan(metrics.aupro(np.ones((1, 4, 4)), np.ones((1, 4, 4))))


@pytest.mark.parametrize("call", [
    lambda: metrics.image_auroc([0, 1, 1], [0.1, 0.2]),
    lambda: metrics.image_auroc([0, 2], [0.1, 0.2]),
    lambda: metrics.image_auroc([0, 1], [0.1, float("nan")]),
    lambda: metrics.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))),
    lambda: metrics.aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), fpr_limit=0.0),
    lambda: metrics.pro_curve(np.zeros(4), np.zeros(4)),
])
def test_bad_input_raises_clear_value_error(call):
    with pytest.raises(MetricInputError):
        call()
    assert issubclass(MetricInputError, ValueError)


def test_metrics_module_is_numpy_only():
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(metrics.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"sklearn", "scipy", "torch", "skimage"}

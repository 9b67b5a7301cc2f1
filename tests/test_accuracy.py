"""edge.accuracy against independent computations: a brute-force pairwise Mann–Whitney AUROC and F1 sweep,
hand-computed ranks / correlations, and the int8 guard at its boundaries."""
from __future__ import annotations

import ast
import itertools
import math
import pathlib
import warnings

import numpy as np
import pytest

from edge import accuracy
from edge.accuracy import (
    GUARD_TOLERANCE_POINTS,
    GuardLimits,
    auroc_drop_points,
    average_ranks,
    category_means,
    category_metrics,
    category_table,
    guard_failures,
    pearson,
    recorded_guard,
    spearman,
    to_auroc_points,
)
from edge.metrics import MetricInputError, MetricWarning

# ---------------------------------------------------------------------------------------------------
# independent references


def pairwise_auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Mann–Whitney by brute force: P(pos > neg) + ½·P(pos = neg) over every (positive, negative) pair."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def brute_force_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = int((predicted & (labels == 1)).sum())
        fp = int((predicted & (labels == 0)).sum())
        fn = int((~predicted & (labels == 1)).sum())
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def two_category_data(seed: int = 0):
    """'cast' (8 images, masks and maps with ties) then 'weld' (6 images), interleaved as a scorer sees them."""
    rng = np.random.default_rng(seed)
    cats = ["cast", "weld", "cast", "cast", "weld", "cast", "weld", "cast", "cast", "weld", "cast", "weld", "weld",
            "cast"]
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1])
    maps = rng.integers(0, 4, (len(cats), 5, 5)).astype(np.float32)  # few levels: many ties
    masks = np.zeros(maps.shape, np.uint8)
    for i in np.flatnonzero(labels):
        masks[i, 1:3, 1:4] = 1
        maps[i, 1:3, 1:4] += 1.0
    scores = maps.max(axis=(1, 2)) + rng.integers(0, 2, len(cats))
    return cats, labels, scores, masks, maps


# ---------------------------------------------------------------------------------------------------
# metric table


def test_table_matches_brute_force_per_category_in_first_seen_order():
    cats, labels, scores, masks, maps = two_category_data()
    table = category_table(cats, labels, scores, masks, maps)
    assert list(table) == ["cast", "weld"]
    for cat, row in table.items():
        idx = np.array([c == cat for c in cats])
        y, s, m, a = labels[idx], scores[idx], masks[idx], maps[idx]
        assert row["image_auroc"] == pytest.approx(pairwise_auroc(s[y == 1], s[y == 0]), abs=1e-12)
        assert row["pixel_auroc"] == pytest.approx(pairwise_auroc(a[m == 1], a[m == 0]), abs=1e-12)
        assert row["image_f1_max"] == pytest.approx(brute_force_f1_max(y, s), abs=1e-12)
        assert 0.0 <= row["aupro"] <= 1.0
        assert (row["n_images"], row["n_anomalous"]) == (int(idx.sum()), int(y.sum()))
        assert list(row) == [*accuracy.METRIC_KEYS, *accuracy.COUNT_KEYS]


def test_aupro_in_the_table_is_the_hand_computed_area():
    # One defect (a 2×2 region at map level 1) and one normal image with a 2×2 false-positive spot at level 1:
    # the PRO curve goes (0, 0) → (x1, 1) → (1, 1) with x1 = 4 / #normal pixels.
    masks = np.zeros((2, 6, 6), np.uint8)
    maps = np.zeros((2, 6, 6))
    masks[0, :2, :2] = maps[0, :2, :2] = 1
    maps[1, 3:5, 3:5] = 1
    x1 = 4 / (masks.size - 4)
    row = category_metrics([1, 0], [1.0, 1.0], masks, maps)
    assert row["aupro"] == pytest.approx((x1 / 2 + (0.3 - x1)) / 0.3)


def test_maskless_category_has_image_metrics_and_nan_pixel_metrics():
    cats, labels, scores, _, _ = two_category_data()
    table = category_table(cats, labels, scores)  # image-level labels only: no masks, no maps
    for row in table.values():
        assert math.isnan(row["pixel_auroc"]) and math.isnan(row["aupro"])
        assert 0.0 <= row["image_auroc"] <= 1.0
    means = category_means(table)
    assert math.isnan(means["pixel_auroc"]) and math.isnan(means["aupro"])
    assert means["image_auroc"] == pytest.approx((table["cast"]["image_auroc"] + table["weld"]["image_auroc"]) / 2)


def test_undefined_category_is_nan_named_in_its_warning_and_skipped_by_the_mean():
    with pytest.warns(MetricWarning) as caught:
        table = category_table(["good_only"] * 3 + ["ok"] * 2, [0, 0, 0, 0, 1], [0.1, 0.2, 0.3, 0.1, 0.9])
    assert any(str(w.message).startswith("good_only: image AUROC is undefined") for w in caught)
    assert math.isnan(table["good_only"]["image_auroc"])
    assert category_means(table)["image_auroc"] == 1.0


def test_means_are_unweighted_over_categories_and_skip_missing_none_and_nan():
    per = {"a": {"image_auroc": 0.6, "pixel_auroc": None}, "b": {"image_auroc": 1.0, "pixel_auroc": float("nan")},
           "c": {"image_auroc": 0.8}}
    means = category_means(per, ("image_auroc", "pixel_auroc"))
    assert means["image_auroc"] == pytest.approx(0.8) and math.isnan(means["pixel_auroc"])


def test_table_bad_input_is_one_clear_error():
    with pytest.raises(MetricInputError, match="lengths differ"):
        category_table(["a", "a"], [0, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricInputError, match="unknown"):
        category_metrics([0, 1], [0.1, 0.2], metrics=("image_auroc", "iou"))


def test_metric_subset_computes_only_those():
    row = category_metrics([0, 1], [0.1, 0.2], metrics=("image_auroc",))
    assert row == {"image_auroc": 1.0, "n_images": 2, "n_anomalous": 1}


# ---------------------------------------------------------------------------------------------------
# correlations


def test_average_ranks_by_hand():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks(np.array([[0.5], [0.1]], np.float32)).tolist() == [2.0, 1.0]  # flattened


def test_pearson_by_hand():
    # a − ā = [−1, 0, 1], b − b̄ = [−7/3, −1/3, 8/3]: Σ = 5, Σa² = 2, Σb² = 114/9 → r = 5 / √(228/9) = 15/√228
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228), abs=1e-15)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_known_values_with_ties():
    # ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: Σ da·db = 4.5, Σ da² = 4.5, Σ db² = 5 → 4.5 / √22.5
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-15)
    # ties on both sides that cancel: ranks [1.5, 1.5, 3.5, 3.5] vs [1.5, 3.5, 1.5, 3.5] → 0
    assert spearman([1, 1, 2, 2], [1, 2, 1, 2]) == 0.0
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)  # any increasing map: 1
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)


def test_spearman_matches_scipy_on_tied_data():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 60)
    b = np.round(a + rng.normal(scale=2.0, size=60))
    np.testing.assert_allclose(average_ranks(a), scipy_stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0], abs=1e-12)


def test_correlations_undefined_are_nan_and_unequal_sizes_an_error():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # constant: undefined, not 0
    assert math.isnan(pearson([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(MetricInputError, match="equal size"):
        pearson([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------------------------------------
# int8 accuracy guard (AUROC points)


def test_auroc_points_unit():
    assert to_auroc_points(0.01) == pytest.approx(1.0)
    assert auroc_drop_points(0.90, 0.885) == pytest.approx(1.5)
    assert auroc_drop_points(0.90, 0.95) == pytest.approx(-5.0)  # int8 better: a negative drop
    assert auroc_drop_points(None, 0.9) is None and auroc_drop_points(0.9, None) is None


@pytest.mark.parametrize("drop, fails", [
    (0.0, False),
    (-3.0, False),                             # int8 better than fp32
    (1.0, False),                              # exactly the limit: within
    (auroc_drop_points(0.9, 0.89), False),     # 1.0000000000000009 points: float noise of an exact 1-point drop
    (1.0 + GUARD_TOLERANCE_POINTS, False),     # exactly at the tolerance
    (1.0 + 2 * GUARD_TOLERANCE_POINTS, True),  # just over it
    (1.01, True),
    (float("nan"), True),                      # measured but undefined: nothing shows it is within
    (None, False),                             # not measured: not checked
])
def test_guard_auroc_drop_boundary(drop, fails):
    for check, args in (("image_auroc_drop", (drop, None, None)), ("pixel_auroc_drop", (None, drop, None))):
        failed = guard_failures(*args)
        assert (check in failed) is fails and set(failed) <= {check}


@pytest.mark.parametrize("rho, fails", [(0.95, False), (1.0, False), (0.9499999999, True), (-1.0, True),
                                        (float("nan"), True), (None, False)])
def test_guard_spearman_boundary(rho, fails):
    assert ("score_spearman" in guard_failures(None, None, rho)) is fails


def test_guard_reports_every_failed_check_with_its_value_and_takes_limits():
    failed = guard_failures(2.5, 0.2, 0.9)
    assert failed == {"image_auroc_drop": 2.5, "score_spearman": 0.9}
    assert guard_failures(2.5, 0.2, 0.9, GuardLimits(max_image_auroc_drop=3.0, min_score_spearman=0.8)) == {}
    assert GuardLimits() == GuardLimits(1.0, 1.0, 0.95)  # dcam-export's defaults (README)


def test_dcam_export_and_bench_latency_give_the_same_verdict():
    from bench.report import guard_verdict
    from export.guard import guard_violations

    fp32 = 0.9
    for int8, rho in itertools.product([0.9, 0.89, 0.8899, 0.95, 0.5], [None, 0.95, 0.94, 1.0]):
        accuracy_section = {"validation_normals": {"finite": True, "n_images": 12, "score_spearman": rho},
                            "test": {"drop_points": {"image_auroc": auroc_drop_points(fp32, int8),
                                                     "pixel_auroc": None}}}
        exported = guard_violations("int8", accuracy_section, 1.0, 1.0, 0.95)
        benched = guard_verdict({"image_auroc_delta": int8 - fp32, "pixel_auroc_delta": None,
                                 "score_spearman_vs_fp32": rho})
        assert (benched != "holds") is bool(exported), (int8, rho, exported, benched)


def test_recorded_guard_is_read_the_same_way_everywhere():
    assert recorded_guard(None) is None and recorded_guard({}) is None
    assert recorded_guard({"guard": {"violations": ["x"]}}) is None  # no verdict recorded
    assert recorded_guard({"guard": {"passed": None}}) is None
    passed = recorded_guard({"guard": {"passed": True, "violations": []}})
    assert passed is not None and passed.passed and not passed.refuses
    failed = recorded_guard({"guard": {"passed": False, "violations": ["score Spearman 0.80 < 0.95"]}})
    assert failed is not None and failed.refuses and failed.violations == ("score Spearman 0.80 < 0.95",)
    accepted = recorded_guard({"guard": {"passed": False, "violations": ["v"], "allowed_by_flag": True}})
    assert accepted is not None and not accepted.refuses


def test_accuracy_module_is_numpy_only():
    tree = ast.parse(pathlib.Path(accuracy.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"sklearn", "scipy", "torch", "skimage", "bench", "train", "export"}


def test_metric_warnings_pass_through_unprefixed_without_a_category():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        row = category_metrics([0, 0], [0.1, 0.2])
    assert math.isnan(row["image_auroc"])
    assert any(str(w.message).startswith("image AUROC is undefined") for w in caught)

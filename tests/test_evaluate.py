"""train.evaluate / train.visualize on a tiny hand-built MVTec folder scored by a fake model with known maps."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from edge.metrics import MetricWarning
from edge.preprocess import PreprocessSpec
from train import evaluate
from train.config import TrainConfig
from train.data import list_test_samples
from train.visualize import heatmap_range

SIZE = 32
BACKGROUND, BRIGHT = 40, 220  # grey levels; the fake model's map is the normalised brightness
SPEC = PreprocessSpec.for_normalization("half", SIZE)


def level(grey: int) -> float:
    """The fake model's map value for a grey level under SPEC ((x/255 − 0.5)/0.5), computed independently."""
    return (grey / 255.0 - 0.5) / 0.5


class BrightnessModel(nn.Module):
    """Anomaly map = channel mean of the normalised input, score = its max (a known, exact map)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map = x.mean(dim=1, keepdim=True)
        return anomaly_map, anomaly_map.amax(dim=(1, 2, 3))


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _image_with(square: tuple[int, int, int] | None) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), BACKGROUND, np.uint8)
    if square is not None:
        y, x, s = square
        img[y:y + s, x:x + s] = BRIGHT
    return img


# Test layout per category: name → (bright square (y, x, side) or None, is it a labelled defect?)
WIDGET_TEST = {
    ("good", "000"): (None, False),
    ("good", "001"): (None, False),
    ("good", "002"): ((20, 20, 4), False),   # a bright spot on a normal image: image- and pixel-level false positive
    ("scratch", "000"): ((2, 2, 4), True),
    ("scratch", "001"): ((10, 12, 6), True),
    ("dent", "000"): ((25, 3, 3), True),
}
GADGET_TEST = {  # perfectly separable
    ("good", "000"): (None, False),
    ("crack", "000"): ((5, 5, 5), True),
}


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    for cat, layout in (("widget", WIDGET_TEST), ("gadget", GADGET_TEST)):
        for i in range(5):
            _write(root / cat / "train" / "good" / f"{i:03d}.png", _image_with(None))
        for (defect, name), (square, is_defect) in layout.items():
            _write(root / cat / "test" / defect / f"{name}.png", _image_with(square))
            if is_defect:
                mask = np.zeros((SIZE, SIZE), np.uint8)
                y, x, s = square
                mask[y:y + s, x:x + s] = 255
                _write(root / cat / "ground_truth" / defect / f"{name}_mask.png", mask)
    return root


def expected_arrays(layout: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores, masks, maps the fake model must produce, in list_test_samples order (defect dir, name)."""
    labels, masks, maps = [], [], []
    for key in sorted(layout):
        square, is_defect = layout[key]
        amap = np.full((SIZE, SIZE), level(BACKGROUND))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if square is not None:
            y, x, s = square
            amap[y:y + s, x:x + s] = level(BRIGHT)
            if is_defect:
                mask[y:y + s, x:x + s] = 1
        labels.append(int(is_defect))
        masks.append(mask)
        maps.append(amap)
    maps = np.array(maps)
    return np.array(labels), maps.max(axis=(1, 2)), np.array(masks), maps


def test_score_samples_returns_the_models_maps_in_sample_order(dataset):
    samples = list_test_samples(dataset, ["widget"])
    maps, scores = evaluate.score_samples(BrightnessModel(), samples, SPEC, batch_size=4, device="cpu",
                                          progress=False)
    _, exp_scores, _, exp_maps = expected_arrays(WIDGET_TEST)
    assert maps.shape == (6, SIZE, SIZE) and maps.dtype == np.float32 and scores.shape == (6,)
    np.testing.assert_allclose(maps, exp_maps, atol=1e-6)
    np.testing.assert_allclose(scores, exp_scores, atol=1e-6)


def test_evaluate_model_known_metrics(dataset):
    result = evaluate.evaluate_model(BrightnessModel(), SPEC, dataset, ["widget", "gadget"], batch_size=4,
                                     device="cpu", progress=False)
    w, g = result["categories"]["widget"], result["categories"]["gadget"]
    # widget: scores normal [b, b, B], anomalous [B, B, B] → AUROC (6 wins + 3 ties/2) / 9; best F1 at B: 2·3/(2·3+1)
    assert w["image_auroc"] == pytest.approx(7.5 / 9)
    assert w["image_f1_max"] == pytest.approx(6 / 7)
    labels, scores, masks, maps = expected_arrays(WIDGET_TEST)
    assert w["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    # PRO curve: (0,0) → (16/N_normal, 1) (all defect pixels and the 4×4 false-positive spot at one level) → (1,1)
    x1 = 16 / (masks.size - masks.sum())
    assert w["aupro"] == pytest.approx((x1 / 2 + (0.3 - x1)) / 0.3)
    assert (w["n_images"], w["n_anomalous"]) == (6, 3)
    assert w["ms_per_image"] > 0
    assert g["image_auroc"] == g["pixel_auroc"] == g["aupro"] == g["image_f1_max"] == pytest.approx(1.0)
    mean = result["mean"]
    for key in evaluate.METRIC_KEYS:
        assert mean[key] == pytest.approx((w[key] + g[key]) / 2)
    assert (mean["n_images"], mean["n_anomalous"]) == (8, 4)


def test_evaluate_scores_groups_by_category_and_matches_sklearn():
    rng = np.random.default_rng(0)
    cats = ["a"] * 10 + ["b"] * 12
    labels = np.r_[rng.permutation([0] * 5 + [1] * 5), rng.permutation([0] * 6 + [1] * 6)]
    scores = rng.integers(0, 4, 22).astype(np.float32) + labels
    result = evaluate.evaluate_scores(cats, labels, scores, ms_per_image={"a": 2.0, "b": 4.0})
    assert list(result["categories"]) == ["a", "b"]
    for cat, idx in (("a", slice(0, 10)), ("b", slice(10, 22))):
        row = result["categories"][cat]
        assert set(row) == set(evaluate.RESULT_KEYS)
        assert row["image_auroc"] == pytest.approx(roc_auc_score(labels[idx], scores[idx]))
        assert math.isnan(row["pixel_auroc"]) and math.isnan(row["aupro"])  # no masks given
    assert result["mean"]["ms_per_image"] == pytest.approx((2.0 * 10 + 4.0 * 12) / 22)  # per image, not per category


def test_degenerate_category_is_null_in_json_and_named_in_warning(tmp_path):
    with pytest.warns(MetricWarning) as caught:
        result = evaluate.evaluate_scores(["only_good"] * 3 + ["ok"] * 2, [0, 0, 0, 0, 1], [0.1, 0.2, 0.3, 0.1, 0.9])
    assert any(str(w.message).startswith("only_good: image AUROC is undefined") for w in caught)
    assert math.isnan(result["categories"]["only_good"]["image_auroc"])
    assert result["mean"]["image_auroc"] == 1.0  # the mean skips undefined categories
    path = evaluate.write_json(result, tmp_path / "out" / "eval.json")
    loaded = json.loads(path.read_text())  # strict JSON: nan written as null
    assert loaded["categories"]["only_good"]["image_auroc"] is None
    assert set(loaded) == {"categories", "mean"} and set(loaded["mean"]) == set(evaluate.RESULT_KEYS)


def test_visualize_writes_one_figure_per_image_and_curves(dataset, tmp_path):
    out = tmp_path / "figs"
    evaluate.evaluate_model(BrightnessModel(), SPEC, dataset, ["widget"], batch_size=8, device="cpu",
                            visualize_dir=out, progress=False)
    images = sorted(p.name for p in (out / "widget" / "images").iterdir())
    assert images == sorted(f"{d}_{n}.png" for d, n in WIDGET_TEST)  # defect-prefixed: names repeat across folders
    for path in [out / "widget" / "roc.png", out / "widget" / "pro.png", out / "widget" / "images" / images[0]]:
        picture = cv2.imread(str(path))
        assert picture is not None and picture.std() > 0
    h, w = cv2.imread(str(out / "widget" / "images" / images[0])).shape[:2]
    assert w > 2 * h  # three panels side by side


def test_heatmap_range_comes_from_normal_maps():
    normal = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 2.0), np.full((4, 4), 3.0)])
    normal[2, 0, 0] = 9.0
    assert heatmap_range(normal) == (2.0, 9.0)
    vmin, vmax = heatmap_range(np.ones((2, 4, 4)))
    assert vmin == 1.0 and vmax > vmin  # flat maps still give a valid colour scale


# --------------------------------------------------------------------------------------------------
# CLI errors: one line, exit 2, no traceback (no trained weights needed to reach them)


def _run_dir(tmp_path: Path, categories: str = "widget") -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(categories=categories, image_size=SIZE)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    return run


@pytest.mark.parametrize("case,expected", [
    ("missing_run", "run directory not found"),
    ("missing_data", "--data"),
    ("unknown_category", "unknown category 'nope'"),
    ("bad_batch", "--batch-size"),
])
def test_cli_errors(case, expected, dataset, tmp_path, capsys):
    run = _run_dir(tmp_path)
    args = {"missing_run": ["--run", str(tmp_path / "absent"), "--data", str(dataset)],
            "missing_data": ["--run", str(run), "--data", str(tmp_path / "absent")],
            "unknown_category": ["--run", str(run), "--data", str(dataset), "--categories", "widget,nope"],
            "bad_batch": ["--run", str(run), "--data", str(dataset), "--batch-size", "0"]}[case]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# end to end through the CLI on the lead's tiny trained run


def test_cli_on_tiny_run_writes_table_json_and_figures(tiny_run, synthetic_root, tmp_path, capsys):
    from train.data import discover_categories
    from train.runs import load_run, preprocess_spec

    first = discover_categories(synthetic_root)[0]
    out_json, figs = tmp_path / "eval.json", tmp_path / "figs"
    code = evaluate.main(["--run", str(tiny_run), "--data", str(synthetic_root), "--categories", first,
                          "--json", str(out_json), "--visualize", str(figs), "--device", "cpu", "--batch-size", "4"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert first in stdout and "mean" in stdout
    result = json.loads(out_json.read_text())
    assert list(result["categories"]) == [first]
    assert (result["method"], result["backbone"]) == ("dcam", "efficientnet_lite0")
    row = result["categories"][first]
    assert set(row) == {*evaluate.RESULT_KEYS, "defects"} and set(result["mean"]) == set(evaluate.RESULT_KEYS)
    # Independent check of the wiring: the run's model scored sample by sample, AUROC by sklearn.
    model, cfg = load_run(tiny_run, "cpu")
    samples = list_test_samples(synthetic_root, [first])
    spec = preprocess_spec(cfg)
    with torch.no_grad():
        from edge.preprocess import load_image
        scores = [float(model.inference_model()(torch.from_numpy(load_image(s.path, spec))[None])[1])
                  for s in samples]
    labels = [s.label for s in samples]
    assert row["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert (row["n_images"], row["n_anomalous"]) == (len(samples), sum(labels))
    assert len(list((figs / first / "images").glob("*.png"))) == len(samples)
    assert (figs / first / "roc.png").is_file() and (figs / first / "pro.png").is_file()


def test_evaluate_run_defaults_to_the_runs_categories_and_blur_override(tiny_run, synthetic_root):
    from train.data import parse_categories
    from train.runs import load_config

    plain = evaluate.evaluate_run(tiny_run, synthetic_root, device="cpu", progress=False)
    assert list(plain["categories"]) == parse_categories(load_config(tiny_run).categories, synthetic_root)
    assert plain["blur_sigma"] == load_config(tiny_run).model.blur_sigma == 6.0  # the dcam default preset blurs
    sharp = evaluate.evaluate_run(tiny_run, synthetic_root, device="cpu", blur_sigma=0.0, progress=False)
    assert sharp["blur_sigma"] == 0.0
    assert any(sharp["categories"][c]["pixel_auroc"] != plain["categories"][c]["pixel_auroc"]
               for c in plain["categories"])


def test_evaluate_model_reports_auroc_per_defect_type_and_every_images_score(dataset, tmp_path):
    result = evaluate.evaluate_model(BrightnessModel(), SPEC, dataset, ["widget"], batch_size=4, device="cpu",
                                     progress=False)
    labels, scores, _, _ = expected_arrays(WIDGET_TEST)
    keys = sorted(WIDGET_TEST)
    defects = np.array([d for d, _ in keys])
    per_defect = result["categories"]["widget"]["defects"]
    assert set(per_defect) == {"scratch", "dent"}
    for defect in ("scratch", "dent"):  # each defect type against the normal test images, by sklearn
        pick = (defects == "good") | (defects == defect)
        assert per_defect[defect]["image_auroc"] == pytest.approx(roc_auc_score(labels[pick], scores[pick]))
        assert per_defect[defect]["n_images"] == int((defects == defect).sum())
    images = result["images"]
    assert [(Path(r["path"]).parent.name, Path(r["path"]).stem) for r in images] == keys
    np.testing.assert_allclose([r["score"] for r in images], scores, atol=1e-6)
    assert [r["label"] for r in images] == labels.tolist()
    csv_path = evaluate.write_scores_csv(result, tmp_path / "scores.csv")
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "path,category,defect,label,score" and len(rows) == 1 + len(keys)
    assert "dent" in evaluate.format_table(result)


def test_a_category_without_masks_gets_image_metrics_and_a_notice(dataset, capsys):
    import shutil

    shutil.rmtree(dataset / "widget" / "ground_truth")
    result = evaluate.evaluate_model(BrightnessModel(), SPEC, dataset, ["widget", "gadget"], batch_size=4,
                                     device="cpu", progress=False)
    w = result["categories"]["widget"]
    assert w["image_auroc"] == pytest.approx(7.5 / 9)  # as with masks
    assert math.isnan(w["pixel_auroc"]) and math.isnan(w["aupro"])
    assert result["mean"]["pixel_auroc"] == pytest.approx(1.0)  # only gadget has masks
    assert "widget: no ground_truth/ masks" in capsys.readouterr().err


def test_level_scale_override_rescores_the_same_student(tiny_run, synthetic_root):
    from train.config import ModelConfig, TrainConfig
    from train.models import build_model
    from train.runs import load_run

    model, cfg = load_run(tiny_run)
    assert cfg.model.level_scale == (1.0, 0.5, 1.0) and cfg.model.levels == (1, 2)  # the dcam default
    fitted = model.head.level_weights.clone()
    evaluate._set_level_scale(model, cfg, (1.0, 1.0, 0.5))
    # Independent: stride 8 fitted at 0.5 → 1 doubles its weight; stride 16 fitted at 1 → 0.5 halves it.
    assert torch.allclose(model.head.level_weights, fitted * torch.tensor([2.0, 0.5]))
    assert cfg.model.level_scale == (1.0, 1.0, 0.5)
    result = evaluate.evaluate_run(tiny_run, synthetic_root, device="cpu", level_scale=(1.0, 1.0, 1.0),
                                   progress=False)
    assert result["level_scale"] == [1.0, 1.0, 1.0]
    stfpm = TrainConfig(data="d", model=ModelConfig(method="stfpm", backbone="efficientnet_lite0", pretrained=False))
    with pytest.raises(evaluate.EvalError, match="--level-scale: the run was trained without --level-normalize"):
        evaluate._set_level_scale(build_model(stfpm.model), stfpm, (1.0, 0.5, 1.0))
    with pytest.raises(evaluate.EvalError, match="--level-scale: expected three factors"):
        evaluate._set_level_scale(model, cfg, (1.0, -1.0, 1.0))

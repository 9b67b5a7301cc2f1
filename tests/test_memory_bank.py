"""--method knn (PatchCore-style memory bank): distances against brute force, coreset, fit, eval, export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_train_config


def test_nearest_distance_map_equals_brute_force_nearest_neighbour() -> None:
    from train.models.knn.model import nearest_distance_map

    g = torch.Generator().manual_seed(0)
    patches = torch.randn(2, 5, 3, 4, generator=g) * 3
    bank = torch.randn(7, 5, generator=g) * 3
    got = nearest_distance_map(patches, bank[:, :, None, None], (bank * bank).sum(1))
    flat = patches.permute(0, 2, 3, 1).reshape(-1, 5)
    expected = torch.cdist(flat.double(), bank.double()).min(1).values.reshape(2, 3, 4)
    assert got.shape == (2, 1, 3, 4)
    assert torch.allclose(got[:, 0].double(), expected, atol=1e-4)


def test_greedy_coreset_is_the_k_center_sequence_and_covers_outliers() -> None:
    from train.models.knn.model import greedy_coreset

    g = torch.Generator().manual_seed(1)
    points = torch.cat([torch.randn(200, 4, generator=g) * 0.1, torch.tensor([[50.0, 0, 0, 0], [0, -50.0, 0, 0]])])
    chosen = greedy_coreset(points, 21, progress=False)  # 21 × 10 candidates ≥ 202: no pre-sampling
    assert len(set(chosen.tolist())) == 21
    assert {200, 201} <= set(chosen[:3].tolist())  # the two far points come right after the random seed
    # Every k-center step picks the point farthest from those chosen before it.
    for k in range(1, 21):
        d = torch.cdist(points, points[chosen[:k]]).min(1).values
        assert int(chosen[k]) == int(torch.argmax(d))
    assert torch.equal(greedy_coreset(points, 500, progress=False), torch.arange(202))


def test_patch_features_average_neighbourhood_and_align_levels() -> None:
    from train.models.knn.model import PatchFeatures

    class Levels(torch.nn.Module):
        channels = [1, 2, 3]

        def forward(self, x):
            return [x[:, :1], x[:, :2, ::2, ::2], x[:, :3, ::4, ::4]]

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    features = PatchFeatures(Levels(), (1, 2), 3)(x)
    assert features.shape == (2, 5, 4, 4)
    level1 = F.avg_pool2d(x[:, :2, ::2, ::2], 3, 1, 1, count_include_pad=False)
    assert torch.allclose(features[:, :2], level1)


def test_knn_fits_without_gradients_evaluates_and_exports(synthetic_root, tmp_path) -> None:
    from export.cli import main as export_main
    from train.config import ModelConfig
    from train.evaluate import evaluate_run
    from train.runs import load_run
    from train.trainer import train

    cfg = tiny_train_config(synthetic_root, tmp_path / "knn", epochs=5,
                            model=ModelConfig(method="knn", backbone="efficientnet_lite0", knn=dict(bank_size=300)))
    run = train(cfg)
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and history[0]["val_loss"] > 0  # one pass, not 5 epochs
    model, _ = load_run(run)
    assert model.bank.shape == (300, 40 + 112)  # Lite0 strides 8 + 16
    result = evaluate_run(run, synthetic_root, device="cpu", progress=False)
    assert result["method"] == "knn" and result["mean"]["image_auroc"] > 0.5
    out = tmp_path / "export"
    assert export_main(["--run", str(run), "--out", str(out), "--formats", "onnx", "--no-progress"]) == 0
    manifest = json.loads((out / "dcam.json").read_text())
    assert manifest["files"]["dcam.onnx"]["accuracy"]["guard"]["passed"]  # fp32 parity, distances ~10–100
    assert not (out / "dcam.int8.onnx").exists()  # int8 is skipped with a warning, fp32 written
    assert export_main(["--run", str(run), "--out", str(out), "--formats", "onnx", "--precisions", "int8",
                        "--no-progress"]) == 2


def test_knn_rejects_bad_levels() -> None:
    from train.config import ModelConfig

    with pytest.raises(ValueError, match="--levels"):
        ModelConfig(method="knn", levels=(1, 5))
    with pytest.raises(ValueError, match="--levels"):
        ModelConfig(method="knn", levels=(2, 1))
    with pytest.raises(ValueError, match="--levels: rd"):
        ModelConfig(method="rd", levels=(1, 2))
    with pytest.raises(ValueError, match="--knn-coreset"):
        ModelConfig(method="knn", knn=dict(coreset="kmeans"))


def test_levels_flag_takes_several_values_and_knn_defaults_to_strides_8_and_16() -> None:
    from train.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--data", "d", "--method", "knn", "--levels", "0", "2"]))
    assert cfg.model.levels == (0, 2)
    assert config_from_args(build_parser().parse_args(["--data", "d", "--method", "knn"])).model.levels == (1, 2)
    assert np.isclose(cfg.model.blur_sigma, 4.0)

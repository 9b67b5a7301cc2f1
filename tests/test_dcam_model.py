"""DCAM / STFPM: losses, attention and inference head against independent numpy/scipy computations."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.special import softmax

from train.cli import build_parser, config_from_args
from train.config import METHOD_OPTIONS, ModelConfig, TrainConfig
from train.models import build_model
from train.models.dcam.attention import ChannelAttention, DCAMBlock, SpatialAttention
from train.models.dcam.loss import (
    FeatureMatchingLoss,
    channel_cosine_distance,
    channel_kl_divergence,
    normalized_mse,
    spatial_cosine_distance,
    spatial_kl_divergence,
)
from train.models.head import DistanceHead, bilinear_matrix, channel_sum, gaussian_blur_matrix, pyramid_cosine_head

rng = np.random.default_rng(0)


def _pair(shape=(2, 5, 3, 4)):
    t = rng.normal(size=shape).astype(np.float32)
    s = rng.normal(size=shape).astype(np.float32)
    return t, s, torch.from_numpy(t), torch.from_numpy(s)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_channel_cosine_distance_matches_per_pixel_loop():
    t, s, tt, st = _pair()
    b, c, h, w = t.shape
    expected = np.mean([[1 - _cos(t[i, :, y, x], s[i, :, y, x]) for y in range(h) for x in range(w)] for i in range(b)])
    assert channel_cosine_distance(tt, st).item() == pytest.approx(expected, rel=1e-5)


def test_spatial_cosine_distance_matches_per_channel_loop():
    t, s, tt, st = _pair()
    b, c, h, w = t.shape
    expected = np.mean([[1 - _cos(t[i, d].ravel(), s[i, d].ravel()) for d in range(c)] for i in range(b)])
    assert spatial_cosine_distance(tt, st).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_kl_divergences_match_explicit_softmax_kl(reduction):
    t, s, tt, st = _pair()
    b, c, h, w = t.shape
    agg = np.sum if reduction == "sum" else np.mean
    # channel: softmax over C at every pixel, then sum (or mean) over pixels, mean over batch
    pt, ps = softmax(t, axis=1), softmax(s, axis=1)
    channel = np.mean([agg((pt[i] * np.log(pt[i] / ps[i])).sum(0)) for i in range(b)])
    assert channel_kl_divergence(tt, st, reduction).item() == pytest.approx(channel, rel=1e-4)
    # spatial: softmax over H·W for every channel, then sum (or mean) over channels
    pt = softmax(t.reshape(b, c, -1), axis=2)
    ps = softmax(s.reshape(b, c, -1), axis=2)
    spatial = np.mean([agg((pt[i] * np.log(pt[i] / ps[i])).sum(1)) for i in range(b)])
    assert spatial_kl_divergence(tt, st, reduction).item() == pytest.approx(spatial, rel=1e-4)


def test_kl_is_zero_for_identical_features_and_positive_otherwise():
    _, _, tt, st = _pair()
    assert channel_kl_divergence(tt, tt).item() == pytest.approx(0.0, abs=1e-6)
    assert spatial_kl_divergence(st, st).item() == pytest.approx(0.0, abs=1e-6)
    assert spatial_kl_divergence(tt, st).item() > 0


def test_stfpm_normalised_mse_equals_channel_cosine_distance():
    # ½‖t̂ − ŝ‖² = 1 − cos(t, s) for unit vectors: an independent identity check of both functions.
    _, _, tt, st = _pair()
    assert normalized_mse(tt, st).item() == pytest.approx(channel_cosine_distance(tt, st).item(), rel=1e-5)


def test_feature_matching_loss_is_weighted_sum_over_levels():
    levels = [_pair((2, c, 4, 4))[2:] for c in (3, 6)]
    teacher = [t for t, _ in levels]
    student = [s for _, s in levels]
    loss, parts = FeatureMatchingLoss(channel_cosine=1.0, spatial_kl=0.5)(teacher, student)
    expected = sum(channel_cosine_distance(t, s) + 0.5 * spatial_kl_divergence(t, s) for t, s in levels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"channel_cosine", "spatial_kl"}
    with pytest.raises(ValueError, match="loss weight"):
        FeatureMatchingLoss(0, 0, 0, 0, 0)


def test_channel_attention_formula():
    torch.manual_seed(0)
    att = ChannelAttention(8, reduction=2)
    x = torch.randn(2, 8, 5, 5)
    w0 = att.mlp[0].weight[:, :, 0, 0].detach().numpy()
    w1 = att.mlp[2].weight[:, :, 0, 0].detach().numpy()
    xn = x.numpy()
    mlp = lambda v: w1 @ np.maximum(w0 @ v, 0)  # noqa: E731
    expected = [1 / (1 + np.exp(-(mlp(xn[i].mean((1, 2))) + mlp(xn[i].max((1, 2)))))) for i in range(2)]
    got = att(x)[:, :, 0, 0].detach().numpy()
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5)


def test_spatial_attention_formula_and_dcam_order():
    torch.manual_seed(0)
    block = DCAMBlock(4, "both", reduction=2, kernel_size=7)
    x = torch.randn(1, 4, 9, 9)
    sa: SpatialAttention = block.spatial
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    conv = ndimage_conv = torch.nn.functional.conv2d(pooled, sa.conv.weight, padding=3)
    np.testing.assert_allclose(sa(x).detach().numpy(), torch.sigmoid(conv).detach().numpy(), rtol=1e-5)
    del ndimage_conv
    refined = block.channel(x) * x
    expected = sa(refined) * refined
    np.testing.assert_allclose(block(x).detach().numpy(), expected.detach().numpy(), rtol=1e-5)


def test_head_matches_cv2_bilinear_sum_and_max():
    levels = [_pair((1, 4, n, n))[2:] for n in (8, 4, 2)]
    teacher = [t for t, _ in levels]
    student = [s for _, s in levels]
    amap, score = pyramid_cosine_head(DistanceHead(0.0), teacher, student, (32, 32))
    expected = np.zeros((32, 32), np.float32)
    for t, s in levels:
        t, s = t.numpy()[0], s.numpy()[0]
        d = 1 - (t * s).sum(0) / (np.linalg.norm(t, axis=0) * np.linalg.norm(s, axis=0))
        expected += cv2.resize(d.astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(amap[0, 0].numpy(), expected, atol=1e-5)
    assert score.item() == pytest.approx(expected.max(), abs=1e-5)


@pytest.mark.parametrize("n", [40, 7])  # 7 < 4σ: the radius is clipped to n − 1
def test_gaussian_blur_matrix_matches_scipy(n):
    x = rng.random((n, n))
    blur = gaussian_blur_matrix(n, 4.0)
    got = blur @ x @ blur.T
    radius = min(16, n - 1)  # scipy renormalises its truncated kernel too: the same filter
    expected = ndimage.gaussian_filter(x, sigma=4.0, mode="mirror", truncate=radius / 4.0)
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("n_in, n_out", [(8, 32), (16, 256), (5, 17), (3, 3)])
def test_bilinear_matrix_matches_interpolate_and_cv2(n_in, n_out):
    x = rng.random((n_in, n_in))
    up = bilinear_matrix(n_out, n_in)
    got = up @ x @ up.T
    torch_up = F.interpolate(torch.from_numpy(x)[None, None], size=(n_out, n_out), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(got, torch_up, atol=1e-12)
    np.testing.assert_allclose(got, cv2.resize(x, (n_out, n_out), interpolation=cv2.INTER_LINEAR), atol=1e-6)


def test_head_with_blur_is_upsample_sum_then_scipy_blur():
    levels = [torch.rand(2, 1, n, n) for n in (16, 8, 4)]
    amap, score = DistanceHead(2.0)(levels, (48, 48))
    summed = sum(F.interpolate(d.double(), size=(48, 48), mode="bilinear", align_corners=False) for d in levels)
    expected = np.stack([ndimage.gaussian_filter(m[0].numpy(), sigma=2.0, mode="mirror", truncate=4.0)
                         for m in summed])
    np.testing.assert_allclose(amap[:, 0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(score.numpy(), expected.reshape(2, -1).max(1), atol=1e-6)


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_product_fusion_is_stfpms_product_of_upsampled_maps_then_scipy_blur(sigma: float) -> None:
    levels = [torch.rand(2, 1, n, n) + 0.1 for n in (16, 8, 4)]
    amap, score = DistanceHead(sigma, fusion="product")(levels, (48, 48))
    product = np.prod([F.interpolate(d.double(), size=(48, 48), mode="bilinear", align_corners=False).numpy()
                       for d in levels], axis=0)[:, 0]
    expected = (np.stack([ndimage.gaussian_filter(m, sigma=sigma, mode="mirror", truncate=4.0) for m in product])
                if sigma else product)
    np.testing.assert_allclose(amap[:, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(score.numpy(), expected.reshape(2, -1).max(1), rtol=1e-5)
    # STFPM's paper preset fuses by product; runs saved before the option summed and still do.
    assert ModelConfig(method="stfpm", preset="paper").level_fusion == "product"
    assert ModelConfig(method="dcam", preset="paper").level_fusion == "sum"
    assert TrainConfig.from_dict({"model": {"method": "stfpm"}}).model.level_fusion == "sum"
    with pytest.raises(ValueError, match="--level-fusion"):
        ModelConfig(method="stfpm", level_fusion="max")


def test_channel_sum_is_sum_over_channels():
    x = torch.randn(3, 5, 4, 6)
    np.testing.assert_allclose(channel_sum(x).numpy(), x.sum(1, keepdim=True).numpy(), atol=1e-6)


def test_dcam_attention_is_training_only_unless_asked():
    torch.manual_seed(0)
    model = build_model(ModelConfig(method="dcam", backbone="resnet18", pretrained=False))
    model.train()
    assert not model.teacher.training, "the frozen teacher must stay in eval mode"
    assert all(not p.requires_grad for p in model.teacher.parameters())
    plain = model.inference_model()
    assert not any("attention" in name for name, _ in plain.named_modules() if name)
    model.cfg.attention_at_inference = True
    kept = model.inference_model()
    assert any(name.startswith("attention") for name, _ in kept.named_modules())
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, _ = plain(x)
        b, _ = kept(x)
    assert a.shape == (1, 1, 64, 64) and not torch.allclose(a, b)


def test_method_presets_and_table_rows_from_flags():
    assert ModelConfig(method="dcam").attention == "channel"
    dcam = ModelConfig(method="dcam")
    assert (dcam.loss_channel_cosine, dcam.loss_spatial_kl, dcam.loss_mse) == (1.0, 0.5, 0.0)
    stfpm = ModelConfig(method="stfpm")
    assert (stfpm.attention, stfpm.loss_mse, stfpm.loss_channel_cosine) == ("none", 1.0, 0.0)
    # Table 3, spatial-attention row: MSE only with spatial attention.
    cfg = config_from_args(build_parser().parse_args(
        ["--data", "x", "--method", "dcam", "--attention", "spatial", "--loss-mse", "1",
         "--loss-channel-cosine", "0", "--loss-spatial-kl", "0"]))
    assert (cfg.model.attention, cfg.model.loss_mse, cfg.model.loss_channel_cosine, cfg.model.loss_spatial_kl) == \
        ("spatial", 1.0, 0.0, 0.0)
    # Table 6, second row: no attention, CD channel + 0.5 KLD spatial.
    cfg = config_from_args(build_parser().parse_args(["--data", "x", "--attention", "none"]))
    assert cfg.model.attention == "none" and cfg.model.loss_spatial_kl == 0.5
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.optimizer) == (0.1, 32, 400, "sgd")


def test_every_config_field_has_exactly_one_flag():
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    def expected(cls: type, prefix: str):  # a method's option group (ModelConfig.rd) has one flag per option
        for field in dataclasses.fields(cls):
            option_group = METHOD_OPTIONS.get(field.name) if cls is ModelConfig else None
            if option_group is not None:
                yield from expected(option_group, f"{prefix}.{field.name}")
            elif field.name != "model":
                yield f"{prefix}.{field.name}"

    for cls, prefix in ((TrainConfig, "train"), (ModelConfig, "train.model")):
        for dest in expected(cls, prefix):
            assert dest in dests, dest
    assert "train.model.rd.loss_mode" in dests and "train.model.knn.bank_size" in dests


def test_bad_option_values_are_one_line_errors():
    with pytest.raises(ValueError, match="--method"):
        ModelConfig(method="nope")
    with pytest.raises(ValueError, match="--attention"):
        ModelConfig(attention="everywhere")
    with pytest.raises(ValueError, match="--image-size"):
        TrainConfig(data="x", image_size=100)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_forward_from_a_level_equals_the_full_forward(backbone):
    from train.backbones import build_backbone

    net = build_backbone(backbone, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = net(x)
        for level in (0, 1):
            rest = net.forward_from(full[level], level)
            assert len(rest) == 2 - level
            for a, b in zip(full[level + 1:], rest):
                torch.testing.assert_close(a, b)


def test_student_sharing_the_teachers_first_level_learns_only_the_later_levels():
    from train.models import build_model

    model = build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False, levels=(1, 2),
                                    student_shared_levels=1))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loss, _ = model.compute_loss(x)
    loss.backward()
    assert model.student._blocks[3]._project_conv.weight.grad is not None  # its own stride-8 stage learns
    assert model.student._conv_stem.weight.grad is None  # the shared stride-4 stage is the teacher's
    assert all(p.grad is None for p in model.teacher.parameters())
    with torch.no_grad():
        amap, score = model.inference_model()(x)
    assert amap.shape == (2, 1, 64, 64) and torch.isfinite(score).all()
    with pytest.raises(ValueError, match="--student-shared-levels"):
        ModelConfig(method="dcam", levels=(0, 1, 2), student_shared_levels=1)


def test_smaller_student_architecture_distils_a_larger_teacher() -> None:
    from train.models import build_model

    cfg = ModelConfig(method="dcam", backbone="efficientnet_lite1", student_backbone="efficientnet_lite0",
                      pretrained=False)
    model = build_model(cfg)
    assert len(model.teacher._blocks) == 15 and len(model.student._blocks) == 11  # Lite1 / Lite0 up to stride 16
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loss, _ = model.compute_loss(x)
    loss.backward()
    assert model.student._blocks[10]._project_conv.weight.grad is not None
    with torch.no_grad():
        amap, score = model.inference_model()(x)
    assert amap.shape == (2, 1, 64, 64) and torch.isfinite(score).all()
    assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))).student_backbone == "efficientnet_lite0"
    # Lite2's taps are wider (48, 120 channels): no one-to-one student for a Lite0 teacher.
    with pytest.raises(ValueError, match=r"--student-backbone efficientnet_lite2: .*\[24, 48, 120\]"):
        build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0", student_backbone="efficientnet_lite2",
                                pretrained=False))


def test_feature_standardisation_uses_the_teachers_channel_statistics_of_the_training_normals() -> None:
    from train.models.feature_transform import MatchedFeatureTransform
    torch.manual_seed(0)
    batches = [[torch.randn(3, 4, 5, 6) * torch.tensor([1.0, 2.0, 5.0, 0.5]).view(1, 4, 1, 1) + 3.0,
                torch.randn(3, 2, 3, 3)] for _ in range(2)]
    transform = MatchedFeatureTransform([4, 2], standardize=True, neighbourhood=1)
    transform.fit(iter(batches))
    level0 = torch.cat([b[0] for b in batches]).double()  # independent: all positions of all images, per channel
    mean = level0.mean(dim=(0, 2, 3))
    std = level0.var(dim=(0, 2, 3), unbiased=False).sqrt()
    assert torch.allclose(transform.mean_0.flatten().double(), mean, atol=1e-5)
    assert torch.allclose(transform.std_0.flatten().double(), std, atol=1e-5)
    out = transform([batches[0][0], batches[0][1]])
    assert torch.allclose(out[0], (batches[0][0] - mean.float().view(1, 4, 1, 1)) / std.float().view(1, 4, 1, 1),
                          atol=1e-5)
    averaged = MatchedFeatureTransform([4], standardize=False, neighbourhood=3)([batches[0][0]])[0]
    x = batches[0][0]
    assert torch.allclose(averaged[:, :, 2, 3], x[:, :, 1:4, 2:5].mean(dim=(2, 3)), atol=1e-6)  # interior: 3×3 mean
    assert torch.allclose(averaged[:, :, 0, 0], x[:, :, 0:2, 0:2].mean(dim=(2, 3)), atol=1e-6)  # corner: valid part


def test_standardised_dcam_fits_statistics_before_training_and_exports_them_in_its_graph() -> None:
    cfg = ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False, feature_standardize=True)
    model = build_model(cfg).eval()
    images = torch.randn(2, 3, 64, 64)
    model.fit_training_statistics(iter([images]))
    assert not torch.allclose(model.feature_transform.std_1, torch.ones_like(model.feature_transform.std_1))
    inference = model.inference_model()
    with torch.no_grad():
        teacher = [model.teacher(images)[i] for i in cfg.levels]
        student = [model.student(images)[i] for i in cfg.levels]
        t, s = model.feature_transform(teacher), model.feature_transform(student)
        expected, _ = model.head([1 - F.cosine_similarity(a, b, dim=1, eps=1e-8).unsqueeze(1) for a, b in zip(t, s)],
                                 images.shape[-2:])
        anomaly_map, _ = inference(images)
    assert torch.allclose(anomaly_map, expected, atol=1e-4)
    assert "feature_transform.mean_1" in model.state_dict()
    # Without standardisation the transform has no state: checkpoints of earlier runs still load strictly.
    plain = build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False))
    assert not any(k.startswith("feature_transform.") for k in plain.state_dict())


def test_hard_feature_loss_averages_only_the_worst_positions() -> None:
    from train.models.dcam.loss import hard_mean
    values = torch.arange(100, dtype=torch.float32)
    assert float(hard_mean(values, 0.0)) == pytest.approx(49.5)
    assert float(hard_mean(values, 0.9)) == pytest.approx(float(values[values >= torch.quantile(values, 0.9)].mean()))
    with pytest.raises(ValueError, match="--loss-hard-quantile"):
        ModelConfig(method="dcam", loss_hard_quantile=1.0)
    with pytest.raises(ValueError, match="--feature-neighbourhood"):
        ModelConfig(method="dcam", feature_neighbourhood=2)


def test_level_normalised_head_weights_each_level_by_its_normal_spread_and_exports_the_weights() -> None:
    cfg = ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False, level_normalize=True,
                      level_scale=(1.0, 1.0, 1.0))
    model = build_model(cfg).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.fit_normal_statistics(iter([images[:2], images[2:]]))
        inference = model.inference_model()
        distances = inference.level_distances(images)
        # Independent: numpy quantiles of each level's pooled distances.
        expected_weights = [1.0 / float(np.diff(np.quantile(d.numpy().ravel(), [0.9, 0.995]))[0]) for d in distances]
        assert np.allclose(model.head.level_weights.numpy(), expected_weights, rtol=1e-3)
        weighted, _ = inference(images)
        plain, _ = DistanceHead(cfg.blur_sigma)([d * w for d, w in zip(distances, expected_weights)],
                                                images.shape[-2:])
    assert torch.allclose(weighted, plain, rtol=1e-3, atol=1e-5)
    assert "head.level_weights" in model.state_dict()
    # Off (every earlier run): no buffer, so their checkpoints still load strictly; they read back as off.
    unweighted = build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False,
                                         level_normalize=False))
    assert "head.level_weights" not in unweighted.state_dict()
    assert TrainConfig.from_dict({"model": {"method": "dcam", "preset": "default"}}).model.level_normalize is False
    assert ModelConfig(method="dcam").level_normalize is True and ModelConfig(method="stfpm").level_normalize is False


def test_level_scale_multiplies_each_levels_normalised_weight() -> None:
    cfg = ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False, level_normalize=True,
                      levels=(1, 2), level_scale=(7.0, 0.25, 2.0))
    model = build_model(cfg).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.fit_normal_statistics(iter([images]))
        distances = model.inference_model().level_distances(images)
    # Independent: s_k / (q0.995 − q0.9) with numpy quantiles; stride 4 (factor 7) is not scored.
    spreads = [float(np.diff(np.quantile(d.numpy().ravel(), [0.9, 0.995]))[0]) for d in distances]
    assert np.allclose(model.head.level_weights.numpy(), [0.25 / spreads[0], 2.0 / spreads[1]], rtol=1e-3)
    # dcam's default halves stride 8; other methods, paper presets and runs saved before the field scale nothing.
    assert ModelConfig(method="dcam").level_scale == (1.0, 0.5, 1.0)
    assert ModelConfig(method="dcam", preset="paper").level_scale == ModelConfig(method="stfpm").level_scale \
        == (1.0, 1.0, 1.0)
    old_run = {"model": {"method": "dcam", "preset": "default", "level_normalize": True}}
    assert TrainConfig.from_dict(old_run).model.level_scale == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="--level-scale: expected three factors"):
        ModelConfig(method="dcam", level_scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="--level-scale: expected three factors"):
        ModelConfig(method="dcam", levels=(1, 2), level_scale=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="needs --level-normalize"):
        ModelConfig(method="stfpm", level_scale=(1.0, 0.5, 1.0))
    assert ModelConfig(method="dcam", level_normalize=False).level_scale == (1.0, 1.0, 1.0)  # the preset's: unused


def test_augmentation_draws_symmetries_of_the_square_reproducibly() -> None:
    from train.augment import augment_batch, augment_generator
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4).repeat(8, 1, 1, 1)
    out = augment_batch(images, "dihedral", augment_generator(0, 0, 1, 5))
    again = augment_batch(images, "dihedral", augment_generator(0, 0, 1, 5))
    assert torch.equal(out, again)
    symmetries = [images[0].rot90(k, (-2, -1)) for k in range(4)]
    symmetries += [s.flip(-1) for s in symmetries]
    for image in out[::2]:
        assert any(torch.equal(image, s) for s in symmetries)
    assert len({tuple(image.flatten().tolist()) for image in out[::2]}) > 1  # not one fixed transform
    flips = augment_batch(images, "flip", augment_generator(0, 0, 1, 5))
    assert all(any(torch.equal(image, s) for s in (images[0], images[0].flip(-1), images[0].flip(-2),
                                                   images[0].flip(-1).flip(-2))) for image in flips[::2])
    assert torch.equal(augment_batch(images, "none", augment_generator(0, 0, 0, 0)), images)


@pytest.mark.parametrize("table", sorted(__import__("train.models.dcam.tables", fromlist=["x"]).PAPER_TABLES))
def test_every_attention_of_a_paper_table_row_receives_gradient_under_that_rows_loss(table: str) -> None:
    from train.models.dcam.tables import PAPER_TABLES
    rows = PAPER_TABLES[table]
    configs = [config_from_args(build_parser().parse_args(["--data", "x", "--backbone", "efficientnet_lite0",
                                                           "--no-pretrained", *row.args])).model for row in rows]
    assert len({json_key(c) for c in configs}) == len(rows)  # every row a distinct experiment
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    for row, cfg in zip(rows, configs):
        model = build_model(cfg)
        loss, _ = model.compute_loss(images)
        loss.backward()
        if cfg.attention == "none":
            assert model.attention is None, row.label
            continue
        for name, parameter in model.attention.named_parameters():
            assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, (row.label, name)


def json_key(cfg: ModelConfig) -> str:
    import json
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)


def test_inline_attention_feeds_the_next_stage_and_a_branch_does_not() -> None:
    kwargs = dict(method="stfpm", backbone="efficientnet_lite0", pretrained=False, attention="spatial",
                  levels=(0, 1, 2))
    images = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    branch = build_model(ModelConfig(**kwargs, attention_placement="branch")).train()
    inline = build_model(ModelConfig(**kwargs, attention_placement="inline")).train()
    inline.load_state_dict(branch.state_dict())
    _, branch_student = branch.features(images)
    _, inline_student = inline.features(images)
    plain = branch.student(images)
    # Branch: each level is the attention of the plain student's map; inline: later stages read refined maps.
    assert torch.allclose(branch_student[1], branch.attention.blocks[1](plain[1]), atol=1e-6)
    refined_0 = inline.attention.blocks[0](inline.student.first_level(images))
    assert torch.allclose(inline_student[0], refined_0, atol=1e-6)
    assert torch.allclose(inline_student[1], inline.attention.blocks[1](inline.student.next_level(refined_0, 0)),
                          atol=1e-5)
    assert not torch.allclose(inline_student[1], branch_student[1], atol=1e-4)
    # Under STFPM's normalised loss a branch spatial attention's scale cancels; inline, the earlier blocks learn.
    grads = {}
    for placement, model in (("branch", branch), ("inline", inline)):
        model.zero_grad()
        model.compute_loss(images)[0].backward()
        grads[placement] = [float(b.spatial.conv.weight.grad.abs().sum()) if b.spatial.conv.weight.grad is not None
                            else 0.0 for b in model.attention.blocks]
    # Branch: zero up to float rounding (threads change it), far below what the inline blocks receive.
    assert max(grads["branch"]) < 1e-3 * min(grads["inline"][:2]), grads
    with pytest.raises(ValueError, match="--attention-placement"):
        ModelConfig(method="dcam", attention_placement="side")
    with pytest.raises(ValueError, match="--loss-mse-mode"):
        ModelConfig(method="dcam", loss_mse_mode="l1")


@pytest.mark.parametrize("fields", [
    dict(level_normalize=True),
    dict(level_fusion="product", blur_sigma=2.0),
    dict(attention="both", attention_placement="inline", attention_at_inference=True),
], ids=["level-normalize", "product", "inline-attention"])
def test_new_heads_and_placements_export_to_onnx_with_parity(fields: dict, tmp_path) -> None:
    import contextlib
    import io
    import warnings
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False, **fields)).eval()
    x = torch.randn(2, 3, 64, 64)
    if fields.get("level_normalize"):
        model.fit_normal_statistics(iter([x]))
        assert not torch.allclose(model.head.level_weights, torch.ones(2))
    inference = model.inference_model().eval()
    with torch.no_grad():
        amap, score = inference(x[:1])
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(inference, (x[:1],), str(path), dynamo=True, external_data=False, optimize=False,
                          input_names=["image"], output_names=["anomaly_map", "score"])
    got_map, got_score = ort.InferenceSession(str(path)).run(None, {"image": x[:1].numpy()})
    np.testing.assert_allclose(got_map, amap.numpy(), rtol=1e-4, atol=1e-4 * float(amap.abs().max()))
    np.testing.assert_allclose(got_score, score.numpy(), rtol=1e-4)


def test_photometric_augmentation_re_lights_each_image_within_the_jitter_and_keeps_its_structure() -> None:
    from train.augment import PHOTOMETRIC_JITTER, augment_batch, augment_generator
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    flat = torch.full((16, 3, 8, 8), 0.4)  # a uniform grey: contrast leaves it, brightness scales it
    out = augment_batch((flat - m) / s, "photometric", augment_generator(0, 0, 2, 3), (mean, std)) * s + m
    gains = out[:, :, 0, 0] / 0.4
    assert torch.allclose(gains, gains[:, :1].expand_as(gains), atol=1e-5)  # one brightness per image, all channels
    assert gains.min() >= 1 - PHOTOMETRIC_JITTER - 1e-5 and gains.max() <= 1 + PHOTOMETRIC_JITTER + 1e-5
    assert gains[:, 0].std() > 0.05  # drawn per image
    # A textured image stays an affine copy of itself where nothing clips (pixels in [0.3, 0.7] never do).
    texture = 0.3 + 0.4 * torch.rand((4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    lit = augment_batch((texture - m) / s, "photometric", augment_generator(0, 0, 0, 0), (mean, std)) * s + m
    for before, after in zip(texture, lit):
        slope, offset = torch.linalg.lstsq(torch.stack([before.flatten(), torch.ones(before.numel())], 1),
                                           after.flatten().unsqueeze(1)).solution.flatten()
        assert torch.allclose(after, slope * before + offset, atol=1e-5)
        assert (1 - PHOTOMETRIC_JITTER) ** 2 - 1e-4 <= slope <= (1 + PHOTOMETRIC_JITTER) ** 2 + 1e-4
    bright = augment_batch(torch.full((8, 3, 4, 4), 2.0), "photometric", augment_generator(0, 0, 0, 1),
                           ((0.5,) * 3, (0.5,) * 3))
    assert bright.max() <= 1.0 + 1e-6  # clamped to the brightest pixel value (1.0 normalised with 0.5 / 0.5)
    assert torch.equal(augment_batch(texture, "photometric", augment_generator(0, 0, 0, 0), (mean, std)),
                       augment_batch(texture, "photometric", augment_generator(0, 0, 0, 0), (mean, std)))
    with pytest.raises(ValueError, match="photometric"):
        augment_batch(texture, "photometric", augment_generator(0, 0, 0, 0))

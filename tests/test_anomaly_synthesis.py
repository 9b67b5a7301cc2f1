"""Synthetic anomalies of the denoising student (train/anomaly_synthesis.py) and where the student sees them."""
from __future__ import annotations

import pytest
import torch

from train.anomaly_synthesis import COVERAGE, blob_masks, paste_synthetic_anomalies
from train.config import ModelConfig
from train.models import build_model


def test_blob_masks_cover_the_drawn_fraction_in_few_connected_blobs() -> None:
    import cv2
    import numpy as np
    masks = blob_masks(12, 64, 80, torch.Generator().manual_seed(0))
    assert masks.shape == (12, 1, 64, 80) and set(masks.unique().tolist()) <= {0.0, 1.0}
    cover = masks.mean(dim=(1, 2, 3))
    assert (cover >= COVERAGE[0] - 0.005).all() and (cover <= COVERAGE[1] + 0.005).all()
    assert cover.std() > 0.01  # the coverage is drawn per mask
    for mask in masks:  # low-frequency blobs, not salt-and-pepper noise
        count, _ = cv2.connectedComponents(mask[0].numpy().astype(np.uint8))
        assert float(mask.sum()) / (count - 1) >= 8  # pixels per blob (independent pixels: ~1)
    assert torch.equal(masks, blob_masks(12, 64, 80, torch.Generator().manual_seed(0)))


def test_pasting_changes_only_the_chosen_images_and_only_inside_a_blob() -> None:
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert paste_synthetic_anomalies(images, 0.0) is images
    pasted = paste_synthetic_anomalies(images, 0.5, torch.Generator().manual_seed(2))
    changed = (pasted != images).any(dim=1)  # B×H×W
    per_image = changed.float().mean(dim=(1, 2))
    assert 0 < int((per_image > 0).sum()) < 16  # some images, not all
    assert (per_image <= COVERAGE[1] + 0.01).all()
    everything = paste_synthetic_anomalies(images, 1.0, torch.Generator().manual_seed(2))
    assert ((everything != images).any(dim=1).float().mean(dim=(1, 2)) >= COVERAGE[0] - 0.005).all()
    one = paste_synthetic_anomalies(images[:1], 1.0, torch.Generator().manual_seed(3))
    assert (one != images[:1]).any()  # a batch of one pastes its own flipped content


def test_a_denoising_student_sees_the_pasted_image_and_the_teacher_the_clean_one() -> None:
    with pytest.raises(ValueError, match="--student-denoise"):
        ModelConfig(method="dcam", student_denoise=1.5)
    with pytest.raises(ValueError, match="--student-denoise: only stfpm and dcam"):
        ModelConfig(method="rd", student_denoise=0.5)
    model = build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False,
                                    student_denoise=1.0)).train()
    seen: dict[str, torch.Tensor] = {}
    model.teacher.register_forward_pre_hook(lambda _m, args: seen.__setitem__("teacher", args[0]))
    model.student.register_forward_pre_hook(lambda _m, args: seen.__setitem__("student", args[0]))
    images = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    loss, _ = model.compute_loss(images)
    assert torch.isfinite(loss)
    assert torch.equal(seen["teacher"], images)
    assert not torch.equal(seen["student"], images) and seen["student"].shape == images.shape
    model.eval()  # scoring never pastes
    model.compute_loss(images)
    assert torch.equal(seen["student"], images)

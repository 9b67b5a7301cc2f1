"""Synthetic anomalies for a denoising student (DeSTSeg, Zhang et al., CVPR 2023, §3.2).

A forward-distillation student trained on normal images alone keeps getting better at imitating the teacher on
*any* input, defects included: on near-uniform real parts (magnetic tiles) image AUROC falls as the optimiser
takes more steps (measured: 6 epochs at batch 32, 16 and 8 → 0.816, 0.804, 0.758). DeSTSeg's remedy: show the
student images with pasted blobs of foreign content and train it to output the teacher's features of the *clean*
image there, so it learns to map anything abnormal back to normal features and its discrepancy with the teacher
grows on real defects instead of shrinking.

The blobs follow DRAEM's recipe (Zavrtanik et al., ICCV 2021, §3.2) without its external texture set: a thresholded
low-frequency noise field (DRAEM: Perlin noise) is the mask; the fill is another training image of the batch,
flipped and re-lit, blended with opacity β ∈ [0.5, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Blob scales: noise grids of 4–16 cells across the image (blobs of 1/4 to 1/16 of its side).
NOISE_GRIDS = (4, 8, 16)
COVERAGE = (0.02, 0.15)  # fraction of the image a mask covers, drawn uniformly
OPACITY = (0.5, 1.0)  # β of the blend x·(1 − βm) + fill·βm
FILL_GAIN = (0.5, 1.5)  # brightness factor of the fill (in normalised units around the batch mean)


def blob_masks(batch: int, height: int, width: int, generator: torch.Generator | None = None,
               device: torch.device | None = None) -> torch.Tensor:
    """B×1×H×W masks in {0, 1}: each a low-frequency Gaussian noise field, bilinearly upsampled from a random grid
    size and thresholded at the quantile that leaves a random COVERAGE of the image set."""
    masks = []
    for _ in range(batch):
        grid = NOISE_GRIDS[int(torch.randint(len(NOISE_GRIDS), (1,), generator=generator))]
        noise = torch.randn((1, 1, grid, grid), generator=generator)
        field = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False).flatten()
        coverage = COVERAGE[0] + (COVERAGE[1] - COVERAGE[0]) * float(torch.rand((), generator=generator))
        threshold = torch.kthvalue(field, max(1, int(round(field.numel() * (1.0 - coverage))))).values
        masks.append((field > threshold).float().view(1, 1, height, width))
    return torch.cat(masks).to(device)


def paste_synthetic_anomalies(images: torch.Tensor, fraction: float, generator: torch.Generator | None = None
                              ) -> torch.Tensor:
    """Normalised B×C×H×W → a copy where a ``fraction`` of the images (at least one, if fraction > 0) carry a blob
    of another image of the batch (flipped both ways, re-lit by FILL_GAIN) blended with opacity β; ``generator``
    None draws from torch's global generator (seeded by dcam-train's --seed)."""
    if fraction <= 0.0 or images.shape[0] == 0:
        return images
    b, _, h, w = images.shape
    chosen = torch.rand(b, generator=generator) < fraction
    if not bool(chosen.any()):
        chosen[int(torch.randint(b, (1,), generator=generator))] = True
    masks = blob_masks(b, h, w, generator, images.device) * chosen.view(b, 1, 1, 1).to(images.device)
    opacity = OPACITY[0] + (OPACITY[1] - OPACITY[0]) * torch.rand((b, 1, 1, 1), generator=generator)
    gain = FILL_GAIN[0] + (FILL_GAIN[1] - FILL_GAIN[0]) * torch.rand((b, 1, 1, 1), generator=generator)
    donors = images.roll(1, dims=0).flip(-1, -2)  # another image (itself when B = 1), mis-registered by the flip
    centre = images.mean(dim=(0, 2, 3), keepdim=True)
    fill = (donors - centre) * gain.to(images) + centre
    blend = masks * opacity.to(images)
    return images * (1.0 - blend) + fill * blend

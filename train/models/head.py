"""The inference head shared by every method: per-level 1 − cos distance, bilinear upsampling to the
input size, sum over levels, optional Gaussian blur, image score = max of the map.

DCAM paper §4.3: Ω(I) = Σ_k Upsample(Ω^k(I)), Ω^k = 1 − cos(f_t^k, f_s^k) along channels.
Written with elementary ops (mul, sum, sqrt, div, interpolate, max) so every exporter maps it 1:1
and the int8 quantisers can keep it in fp32 by op type.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


def cosine_distance_map(teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
    """1 − cos(f_t, f_s) along channels: B×C×h×w, B×C×h×w → B×1×h×w (DCAM Eq. CD_channel, per pixel)."""
    dot = (teacher_features * student_features).sum(dim=1, keepdim=True)
    norm_t = torch.sqrt((teacher_features * teacher_features).sum(dim=1, keepdim=True) + EPS)
    norm_s = torch.sqrt((student_features * student_features).sum(dim=1, keepdim=True) + EPS)
    return 1.0 - dot / (norm_t * norm_s)


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius 4σ (kernel 2·⌊4σ + 0.5⌋ + 1, as anomalib / RD use)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of a B×1×H×W map with reflect padding (fixed weights, exportable)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        kernel = gaussian_kernel_1d(sigma)
        self.radius = (kernel.numel() - 1) // 2
        self.register_buffer("kernel_h", kernel.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", kernel.view(1, 1, -1, 1), persistent=False)

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        r = min(self.radius, anomaly_map.shape[-1] - 1, anomaly_map.shape[-2] - 1)  # reflect needs pad < size
        k_h = self.kernel_h[..., self.radius - r: self.radius + r + 1]
        k_v = self.kernel_v[..., self.radius - r: self.radius + r + 1, :]
        k_h, k_v = k_h / k_h.sum(), k_v / k_v.sum()
        x = F.pad(anomaly_map, (r, r, 0, 0), mode="reflect")
        x = F.conv2d(x, k_h)
        x = F.pad(x, (0, 0, r, r), mode="reflect")
        return F.conv2d(x, k_v)


class DistanceHead(nn.Module):
    """Per-level distance maps → anomaly map at the input size and image score (max over pixels)."""

    def __init__(self, blur_sigma: float = 0.0) -> None:
        super().__init__()
        self.blur = GaussianBlur(blur_sigma) if blur_sigma > 0 else None

    def forward(self, distance_maps: list[torch.Tensor], output_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map = None
        for distance in distance_maps:
            up = F.interpolate(distance, size=output_size, mode="bilinear", align_corners=False)
            anomaly_map = up if anomaly_map is None else anomaly_map + up
        if self.blur is not None:
            anomaly_map = self.blur(anomaly_map)
        score = torch.amax(anomaly_map, dim=(1, 2, 3))
        return anomaly_map, score


def pyramid_cosine_head(head: DistanceHead, teacher_features: list[torch.Tensor],
                        student_features: list[torch.Tensor], output_size: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_k Upsample(1 − cos(f_t^k, f_s^k)) then blur/max: the anomaly map of every method here."""
    distances = [cosine_distance_map(t, s) for t, s in zip(teacher_features, student_features)]
    return head(distances, output_size)


"""DCAM: Distributed Convolutional Attention Module (DCAM paper §3.1, after CBAM).

One block per student feature level; used during training only (unless attention_at_inference).
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """M_c(F) = σ(W1(W0(F_avg)) + W1(W0(F_max))) — shared MLP over spatially pooled features (DCAM Eq. 1)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        # 1×1 convs = the shared MLP (W0, W1) applied to C×1×1 pooled vectors.
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(features, dim=(2, 3), keepdim=True)
        mx = torch.amax(features, dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """M_s(F) = σ(f^{7×7}([F_avg; F_max])) — pooled along channels, one conv (DCAM Eq. 2)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(features, dim=1, keepdim=True)
        mx = torch.amax(features, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([avg, mx], dim=1)))


class DCAMBlock(nn.Module):
    """F' = M_c(F) ⊗ F, then F'' = M_s(F') ⊗ F' (CBAM order); either part can be switched off."""

    def __init__(self, channels: int, mode: str = "channel", reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        if mode not in ("channel", "spatial", "both"):
            raise ValueError(f"attention mode must be channel, spatial or both, got {mode!r}")
        self.channel = ChannelAttention(channels, reduction) if mode in ("channel", "both") else None
        self.spatial = SpatialAttention(kernel_size) if mode in ("spatial", "both") else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            features = self.channel(features) * features
        if self.spatial is not None:
            features = self.spatial(features) * features
        return features


class DistributedAttention(nn.Module):
    """One DCAMBlock per distilled feature-pyramid level ("distributed" across conv2_x..conv4_x).

    Two placements (--attention-placement): "branch" refines the student's tapped maps on the side (what the loss
    sees; the next stage still reads the unrefined map), "inline" inserts each block into the student's forward
    after its stage, as CBAM is used, so the refined map feeds the next stage (``refine``)."""

    def __init__(self, levels: tuple[int, ...], channels: list[int], mode: str, reduction: int = 16,
                 kernel_size: int = 7) -> None:
        super().__init__()
        if len(levels) != len(channels):
            raise ValueError(f"attention: {len(levels)} levels but {len(channels)} channel counts")
        self.levels = tuple(levels)
        self.blocks = nn.ModuleList(DCAMBlock(c, mode, reduction, kernel_size) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Branch placement: the distilled levels' maps, each refined by its block."""
        return [block(f) for block, f in zip(self.blocks, features)]

    def refine(self, level: int, feature: torch.Tensor) -> torch.Tensor:
        """Inline placement: backbone level ``level``'s map refined by its block (undistilled levels pass through)."""
        return self.blocks[self.levels.index(level)](feature) if level in self.levels else feature

"""What forward distillation compares: the teacher's and the student's maps, each channel standardised by the
teacher's statistics over the training normals and averaged over a p×p neighbourhood.

Both are the same fixed map applied to teacher and student, so the loss, the anomaly map and the exported graph
see identical features (a per-channel affine and an average pool: a few elementwise ops at the edge).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

STD_FLOOR = 1e-4  # channels that are constant on the normals are not amplified into noise


def local_average(feature: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over each position's size×size neighbourhood (PatchCore Eq. 2).

    Same map size; at the borders the mean is over the valid part."""
    if size == 1:
        return feature
    return F.avg_pool2d(feature, size, 1, size // 2, count_include_pad=False)


class MatchedFeatureTransform(nn.Module):
    """f ↦ avg_p((f − μ_c) / σ_c) per level; μ, σ = the teacher's per-channel mean and std on the training normals."""

    def __init__(self, channels: list[int], standardize: bool, neighbourhood: int) -> None:
        super().__init__()
        self.standardize = bool(standardize)
        self.neighbourhood = int(neighbourhood)
        # Only a standardising transform has state: runs trained without it keep their checkpoint keys.
        for k, c in enumerate(channels if self.standardize else []):
            self.register_buffer(f"mean_{k}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"std_{k}", torch.ones(1, c, 1, 1))

    @property
    def is_identity(self) -> bool:
        return not self.standardize and self.neighbourhood == 1

    @torch.no_grad()
    def fit(self, teacher_batches: Iterable[list[torch.Tensor]]) -> None:
        """μ_c, σ_c of every level's teacher channels over all positions of all training images (float64 sums)."""
        if not self.standardize:
            return
        sums: list[torch.Tensor] = []
        squares: list[torch.Tensor] = []
        count = 0
        for features in teacher_batches:
            values = [f.double().transpose(0, 1).flatten(1) for f in features]  # C × (B·h·w)
            if not sums:
                sums = [torch.zeros(v.shape[0], dtype=torch.float64, device=v.device) for v in values]
                squares = [torch.zeros_like(s) for s in sums]
            for k, v in enumerate(values):
                sums[k] += v.sum(1)
                squares[k] += (v * v).sum(1)
            count += values[0].shape[1]
        if count == 0:
            raise ValueError("feature standardisation needs at least one training image")
        for k, (total, square) in enumerate(zip(sums, squares)):
            mean = total / count
            std = torch.sqrt(torch.clamp(square / count - mean * mean, min=0.0)).clamp(min=STD_FLOOR)
            getattr(self, f"mean_{k}").copy_(mean.view(1, -1, 1, 1))
            getattr(self, f"std_{k}").copy_(std.view(1, -1, 1, 1))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.is_identity:
            return features
        out = []
        for k, f in enumerate(features):
            if self.standardize:
                f = (f - getattr(self, f"mean_{k}")) / getattr(self, f"std_{k}")
            out.append(local_average(f, self.neighbourhood))
        return out

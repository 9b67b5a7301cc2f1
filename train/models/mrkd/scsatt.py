"""SCSAtt of masked reverse distillation (§3.4–3.6): SCConv (SRU → CRU; Li et al., CVPR 2023) followed by
the parameter-free SimAM attention (Yang et al., ICML 2021), applied to the MSFF output in the bottleneck.

Everything is written with elementary ops (mean, mul, sqrt, where, softmax-free sigmoid gates) so
the bottleneck exports unchanged to ONNX / OpenVINO / TFLite.
"""
from __future__ import annotations

import torch
from torch import nn


class GroupNorm2d(nn.Module):
    """Group normalisation (Wu & He 2018) as SCConv's SRU uses it: per-sample, per-group mean/variance,
    then a per-channel affine γ, β (γ is read by the SRU as channel importance)."""

    def __init__(self, channels: int, groups: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"GroupNorm2d: {channels} channels are not divisible into {groups} groups")
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n, self.groups, -1)
        centred = grouped - grouped.mean(dim=2, keepdim=True)
        var = (centred * centred).mean(dim=2, keepdim=True)
        normed = (centred / torch.sqrt(var + self.eps)).reshape(n, c, h, w)
        return normed * self.weight + self.bias


class SRU(nn.Module):
    """Spatial Reconstruction Unit (SCConv §3.1, masked-RD §3.5).

    W_γ = γ_i / Σ_j γ_j (GN's scale as importance), W = sigmoid(W_γ · GN(X)); gate at the threshold:
    W1 = 1 where W > 0.5 else W (informative), W2 = 0 where W > 0.5 else W (redundant) — as the
    reference implementation, which keeps the gate differentiable; X1 = W1 ⊙ X, X2 = W2 ⊙ X;
    cross reconstruction X^w = [X1¹ + X2², X1² + X2¹] (halves along channels).
    """

    def __init__(self, channels: int, groups: int = 4, gate_threshold: float = 0.5) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"SRU: the cross reconstruction needs an even channel count, got {channels}")
        self.norm = GroupNorm2d(channels, groups)
        self.gate_threshold = gate_threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        importance = (self.norm.weight / self.norm.weight.sum()).reshape(1, -1, 1, 1)
        reweights = torch.sigmoid(self.norm(x) * importance)
        above = reweights > self.gate_threshold
        informative = torch.where(above, torch.ones_like(reweights), reweights)
        redundant = torch.where(above, torch.zeros_like(reweights), reweights)
        x11, x12 = torch.chunk(informative * x, 2, dim=1)
        x21, x22 = torch.chunk(redundant * x, 2, dim=1)
        return torch.cat([x11 + x22, x12 + x21], dim=1)


class CRU(nn.Module):
    """Channel Reconstruction Unit (SCConv §3.2, masked-RD §3.5): split, transform, fuse.

    Split C into αC (upper) and (1−α)C (lower), squeeze each by 1×1 convs (ratio r);
    Y1 = GWC(X_up) + PWC1(X_up); Y2 = [PWC2(X_low), X_low];
    S_m = GAP(Y_m); β1 = e^{S1} / (e^{S1} + e^{S2}), β2 = 1 − β1 (channel soft attention between
    the two branches, written as sigmoid(S1 − S2)); Y = β1 ⊙ Y1 + β2 ⊙ Y2.
    """

    def __init__(self, channels: int, alpha: float = 0.5, squeeze_ratio: int = 2, group_size: int = 2,
                 group_kernel: int = 3) -> None:
        super().__init__()
        up = int(alpha * channels)
        low = channels - up
        up_sq, low_sq = up // squeeze_ratio, low // squeeze_ratio
        if min(up_sq, low_sq) < 1 or up_sq % group_size or channels % group_size:
            raise ValueError(f"CRU: {channels} channels do not split with alpha={alpha}, squeeze {squeeze_ratio}, "
                             f"groups {group_size}")
        self.split_sizes = [up, low]
        self.squeeze_up = nn.Conv2d(up, up_sq, 1, bias=False)
        self.squeeze_low = nn.Conv2d(low, low_sq, 1, bias=False)
        self.gwc = nn.Conv2d(up_sq, channels, group_kernel, padding=group_kernel // 2, groups=group_size)
        self.pwc_up = nn.Conv2d(up_sq, channels, 1, bias=False)
        self.pwc_low = nn.Conv2d(low_sq, channels - low_sq, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, low = torch.split(x, self.split_sizes, dim=1)
        up, low = self.squeeze_up(up), self.squeeze_low(low)
        y1 = self.gwc(up) + self.pwc_up(up)
        y2 = torch.cat([self.pwc_low(low), low], dim=1)
        beta1 = torch.sigmoid(y1.mean(dim=(2, 3), keepdim=True) - y2.mean(dim=(2, 3), keepdim=True))
        return beta1 * y1 + (1.0 - beta1) * y2


class SimAM(nn.Module):
    """Parameter-free 3-D attention (SimAM Eq. 5 and its fast form, masked-RD §3.6).

    Minimal energy of neuron t: e_t* = 4(σ̂² + λ) / ((t − μ̂)² + 2σ̂² + 2λ), with μ̂ and
    σ̂² = Σ(x − μ̂)²/(M − 1) over the channel's M = H·W neurons (the reference implementation's
    estimate); output X ⊙ sigmoid(1 / E), where 1/e_t* = (t − μ̂)² / (4(σ̂² + λ)) + 0.5.
    """

    def __init__(self, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        others = x.shape[2] * x.shape[3] - 1
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        d = centred * centred
        variance = d.sum(dim=(2, 3), keepdim=True) / others
        inverse_energy = d / (4.0 * (variance + self.e_lambda)) + 0.5
        return x * torch.sigmoid(inverse_energy)


class SCSAtt(nn.Sequential):
    """SCConv (SRU → CRU) then SimAM (masked-RD §3.4, Fig. 3); either part can be switched off (Table 6)."""

    def __init__(self, channels: int, scconv: bool = True, simam: bool = True) -> None:
        parts: list[nn.Module] = [SRU(channels), CRU(channels)] if scconv else []
        if simam:
            parts.append(SimAM())
        super().__init__(*parts)

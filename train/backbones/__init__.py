"""Backbone registry: teachers (ImageNet-pretrained) and students (same architecture, random init).

``build_backbone(name)`` returns a :class:`FeatureExtractor` giving the three maps at strides
4, 8 and 16 that STFPM/DCAM distil (ResNet conv2_x..conv4_x; Lite0 blocks 2, 4, 10).
``build_classifier(name)`` returns the full ImageNet classifier (used to check the weights).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from torch import nn

from . import weights
from .base import FEATURE_STRIDES, BackboneError, FeatureExtractor
from .efficientnet_lite import (
    LITE0_TAP_BLOCKS,
    LITE_VARIANTS,
    EfficientNetLite,
    EfficientNetLiteFeatures,
    efficientnet_lite,
    efficientnet_lite0,
)
from .resnet import BasicBlock, Bottleneck, ResNet, ResNetFeatures, resnet18, resnet50, wide_resnet50_2
from .weights import WeightsError, WeightsSource

Classifier = TypeVar("Classifier", bound=nn.Module)  # the torch model a BackboneSpec builds and cuts


ResidualBlock = type[BasicBlock] | type[Bottleneck]


@dataclass(frozen=True)
class DecoderSpec:
    """Block type and depths of the reverse-distillation bottleneck and decoder that mirror this teacher.

    layers: residual blocks of the decoder stages producing the teacher's levels 3, 2, 1 (RD's
    ``de_resnet`` reuses the encoder's [layer1, layer2, layer3] counts in that order);
    bottleneck_blocks: blocks of the one-class bottleneck's stride-2 stage (RD's ``BN_layer``);
    signed_features: the teacher's taps take negative values (Lite0's linear MBConv projections), so each
    decoder level gets a linear 1×1 conv output head — a residual stage ends in ReLU and could not match them.
    """

    block: ResidualBlock
    layers: tuple[int, int, int]
    base_width: int = 64
    bottleneck_blocks: int = 2
    signed_features: bool = False


@dataclass(frozen=True)
class BackboneSpec(Generic[Classifier]):
    """How to build one backbone: classifier constructor, feature cut, input normalisation, weights."""

    classifier: Callable[[], Classifier]
    features: Callable[[Classifier, str, str], FeatureExtractor]  # cuts the feature maps out of that classifier
    normalization: str  # key of edge.preprocess.NORMALIZATIONS
    weights: WeightsSource
    decoder: DecoderSpec  # the reverse decoder (rd, dskd, mrkd) that mirrors this teacher's taps


BACKBONES: dict[str, BackboneSpec[Any]] = {
    # RD4AD: resnet18 → BasicBlock [2, 2, 2], BN_layer(…, 2); wide_resnet50_2 → Bottleneck [3, 4, 6], width 128,
    # BN_layer(…, 3). Lite0 has no residual-stage counterpart: the light BasicBlock decoder keeps it edge-sized.
    "resnet18": BackboneSpec(resnet18, ResNetFeatures, "imagenet", weights.RESNET18_WEIGHTS,
                             DecoderSpec(BasicBlock, (2, 2, 2), 64, 2)),
    "resnet50": BackboneSpec(resnet50, ResNetFeatures, "imagenet", weights.RESNET50_WEIGHTS,
                             DecoderSpec(Bottleneck, (3, 4, 6), 64, 3)),
    "wide_resnet50_2": BackboneSpec(wide_resnet50_2, ResNetFeatures, "imagenet", weights.WIDE_RESNET50_2_WEIGHTS,
                                    DecoderSpec(Bottleneck, (3, 4, 6), 128, 3)),
}
# The Lite family was trained on (x/255 − 0.5)/0.5 inputs; its taps are linear projections (signed features).
LITE_WEIGHTS = {"efficientnet_lite0": weights.EFFICIENTNET_LITE0_WEIGHTS,
                "efficientnet_lite1": weights.EFFICIENTNET_LITE1_WEIGHTS,
                "efficientnet_lite2": weights.EFFICIENTNET_LITE2_WEIGHTS}
for _name in LITE_VARIANTS:
    BACKBONES[_name] = BackboneSpec(partial(efficientnet_lite, _name), EfficientNetLiteFeatures, "half",
                                    LITE_WEIGHTS[_name],
                                    DecoderSpec(BasicBlock, (2, 2, 2), 64, 2, signed_features=True))

BACKBONE_NORMALIZATION: dict[str, str] = {name: spec.normalization for name, spec in BACKBONES.items()}


def backbone_spec(name: str) -> BackboneSpec[Any]:
    """The table entry of a backbone name (BackboneError listing the known ones)."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_classifier(name: str, pretrained: bool = True, weights_path: str | Path | None = None) -> nn.Module:
    """Full ImageNet classifier (ResNet with ``fc``, EfficientNetLite with head) for ``name``.

    pretrained=True loads ``weights_path`` if given, else the published ImageNet weights
    (pip package for Lite0; download/cache for ResNets). pretrained=False: random init.
    """
    spec = backbone_spec(name)
    if weights_path is not None and not pretrained:
        raise BackboneError(f"weights file {weights_path} given for {name} with pretrained=False; "
                            f"a random-init student takes no weights file")
    # Locate the file first: a missing download fails before allocating a 69 M-parameter model.
    path = weights.resolve_weights(spec.weights, name, weights_path) if pretrained else None
    model = spec.classifier()
    if path is not None:
        weights.load_weights_into(model, path, name)
    return model


def build_backbone(name: str, pretrained: bool = True, weights_path: str | Path | None = None) -> FeatureExtractor:
    """Feature extractor returning the maps at strides 4, 8, 16 (see :func:`build_classifier` for weights).

    A teacher is ``build_backbone(name)``; a student is ``build_backbone(name, pretrained=False)``.
    """
    spec = backbone_spec(name)
    return spec.features(build_classifier(name, pretrained, weights_path), name, spec.normalization)


__all__ = [
    "BACKBONES", "BACKBONE_NORMALIZATION", "FEATURE_STRIDES", "LITE0_TAP_BLOCKS", "BackboneError",
    "BackboneSpec", "BasicBlock", "Bottleneck", "DecoderSpec", "EfficientNetLite", "EfficientNetLiteFeatures",
    "FeatureExtractor", "ResNet", "ResNetFeatures", "ResidualBlock", "WeightsError", "WeightsSource",
    "backbone_spec", "build_backbone", "build_classifier", "efficientnet_lite0", "resnet18", "resnet50",
    "wide_resnet50_2",
]

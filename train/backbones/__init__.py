"""Backbone registry: teachers (ImageNet-pretrained) and students (same architecture, random init).

``build_backbone(name)`` returns a :class:`FeatureExtractor` giving the three maps at strides
4, 8 and 16 that STFPM/DCAM distil (ResNet conv2_x..conv4_x; Lite0 blocks 2, 4, 10).
``build_classifier(name)`` returns the full ImageNet classifier (used to check the weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from . import weights
from .base import FEATURE_STRIDES, BackboneError, FeatureExtractor
from .efficientnet_lite import LITE0_TAP_BLOCKS, EfficientNetLite, EfficientNetLiteFeatures, efficientnet_lite0
from .resnet import BasicBlock, Bottleneck, ResNet, ResNetFeatures, resnet18, wide_resnet50_2
from .weights import WeightsError, WeightsSource


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: classifier constructor, feature cut, input normalisation, weights."""

    classifier: Callable[[], nn.Module]
    features: Callable[[nn.Module, str, str], FeatureExtractor]
    normalization: str  # key of edge.preprocess.NORMALIZATIONS
    weights: WeightsSource


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(resnet18, ResNetFeatures, "imagenet", weights.RESNET18_WEIGHTS),
    "wide_resnet50_2": BackboneSpec(wide_resnet50_2, ResNetFeatures, "imagenet", weights.WIDE_RESNET50_2_WEIGHTS),
    # Lite0 was trained on (x/255 − 0.5)/0.5 inputs.
    "efficientnet_lite0": BackboneSpec(efficientnet_lite0, EfficientNetLiteFeatures, "half",
                                       weights.EFFICIENTNET_LITE0_WEIGHTS),
}

BACKBONE_NORMALIZATION: dict[str, str] = {name: spec.normalization for name, spec in BACKBONES.items()}


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_classifier(name: str, pretrained: bool = True, weights_path: str | Path | None = None) -> nn.Module:
    """Full ImageNet classifier (ResNet with ``fc``, EfficientNetLite with head) for ``name``.

    pretrained=True loads ``weights_path`` if given, else the published ImageNet weights
    (pip package for Lite0; download/cache for ResNets). pretrained=False: random init.
    """
    spec = _spec(name)
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
    spec = _spec(name)
    return spec.features(build_classifier(name, pretrained, weights_path), name, spec.normalization)


__all__ = [
    "BACKBONES", "BACKBONE_NORMALIZATION", "FEATURE_STRIDES", "LITE0_TAP_BLOCKS", "BackboneError",
    "BackboneSpec", "BasicBlock", "Bottleneck", "EfficientNetLite", "EfficientNetLiteFeatures",
    "FeatureExtractor", "ResNet", "ResNetFeatures", "WeightsError", "WeightsSource", "build_backbone",
    "build_classifier", "efficientnet_lite0", "resnet18", "wide_resnet50_2",
]

"""Common interface of the feature extractors used as teachers and students.

STFPM/DCAM distil the first three stages of a CNN (ResNet conv2_x..conv4_x, i.e. the
feature pyramid at strides 4, 8 and 16); every backbone exposes exactly these three maps.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

# Output strides of the three tapped stages, shared by every backbone.
FEATURE_STRIDES: tuple[int, int, int] = (4, 8, 16)


class BackboneError(ValueError):
    """Unknown backbone name or an invalid backbone option (one-line message)."""


class FeatureExtractor(nn.Module):
    """A truncated CNN returning the feature maps at strides 4, 8 and 16.

    Subclasses keep the parameter names of the classifier they were cut from, so the
    extractor's ``state_dict()`` keys are a subset of the published weights' keys.
    """

    def __init__(self, name: str, channels: list[int], normalization: str) -> None:
        super().__init__()
        self.name = name
        self._channels = list(channels)
        self.normalization = normalization

    @property
    def channels(self) -> list[int]:
        """Channels of the three returned maps (a copy, so callers cannot mutate it)."""
        return list(self._channels)

    @property
    def strides(self) -> list[int]:
        """Output strides of the three returned maps: [4, 8, 16]."""
        return list(FEATURE_STRIDES)

    def first_level(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Normalised B×3×H×W input → the stride-4 map (level 0)."""
        raise NotImplementedError

    def next_level(self, feature: Tensor, level: int) -> Tensor:  # pragma: no cover - abstract
        """The map of level+1 computed from the map of ``level`` (0 or 1)."""
        raise NotImplementedError

    def forward(self, x: Tensor, refine: Callable[[int, Tensor], Tensor] | None = None) -> list[Tensor]:
        """Normalised B×3×H×W input → [B×C1×H/4×W/4, B×C2×H/8×W/8, B×C3×H/16×W/16].

        ``refine(level, map)``: a module placed inline after each level (CBAM's placement, DCAM
        --attention-placement inline): its output is both the returned map and the next stage's input."""
        feature = self.first_level(x)
        if refine is not None:
            feature = refine(0, feature)
        return [feature, *self.forward_from(feature, 0, refine)]

    def forward_from(self, feature: Tensor, level: int,
                     refine: Callable[[int, Tensor], Tensor] | None = None) -> list[Tensor]:
        """The maps of levels level+1 … 2 computed from the map of ``level`` (a student that shares the
        teacher's first levels starts here)."""
        maps = []
        for next_level in range(level + 1, len(FEATURE_STRIDES)):
            feature = self.next_level(feature, next_level - 1)
            if refine is not None:
                feature = refine(next_level, feature)
            maps.append(feature)
        return maps

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self._channels}, normalization={self.normalization!r}"

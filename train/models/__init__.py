"""Models, one folder per method (each registers a MethodSpec on import); ``build_model(cfg)`` for every --method.

Shared parts stay here: the model contract (base), the distance head, the RD-family decoder, feature transforms.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

# isort: off
from . import dcam, rd, dskd, mrkd, knn  # noqa: F401  (registration order = the order of METHODS)
# isort: on
from .registry import METHOD_REGISTRY, MethodConfig, MethodSpec, method_spec, register_method

if TYPE_CHECKING:
    from .base import DistillationModel

METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)


def build_model(cfg: MethodConfig) -> DistillationModel:
    """The method's model for a configuration (its module is imported here, not at configuration time)."""
    return method_spec(cfg.method).model_class()(cfg)


def __getattr__(name: str):  # DistillationModel imports torch: only on use
    if name == "DistillationModel":
        from .base import DistillationModel
        return DistillationModel
    raise AttributeError(name)


__all__ = ["METHODS", "METHOD_REGISTRY", "DistillationModel", "MethodSpec", "build_model", "method_spec",
           "register_method"]

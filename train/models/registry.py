"""The method registry (timm's ``register_model`` idea): every ``--method`` is one ``MethodSpec``, registered by its
folder's ``__init__.py``. ``METHODS``, the presets, the method-option CLI flags and ``build_model`` read it.

Torch-free: configuration and CLI parsing import it; a method's model module is imported only when it is built.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol


@dataclass(frozen=True)
class MethodSpec:
    """What a method is: its model class, its option dataclass and its presets (paper, then measured overrides).

    ``model``: "module:Class" relative to train.models, imported on build (keeps torch out of config parsing).
    ``options``: the method's own option dataclass, stored in ``ModelConfig.<options_field>`` (CLI flags
    ``--<options_field>-<option>``); several methods of one family may share one (rd, dskd, mrkd read ``rd``).
    ``paper_model`` / ``paper_train``: the paper's ModelConfig / TrainConfig values (``--preset paper``).
    ``measured_model`` / ``measured_train``: overrides the real-image benchmark found better (``--preset default``).
    ``fp32_only``: why int8 export is not offered ("" = it is).
    """

    name: str
    paper: str
    model: str
    paper_model: Mapping[str, Any] = field(default_factory=dict)
    paper_train: Mapping[str, Any] = field(default_factory=dict)
    measured_model: Mapping[str, Any] = field(default_factory=dict)
    measured_train: Mapping[str, Any] = field(default_factory=dict)
    fp32_only: str = ""
    needs_all_levels: bool = False  # decoders reconstruct every teacher level: --levels must be 0 1 2

    def model_class(self) -> type:
        module_name, _, class_name = self.model.partition(":")
        return getattr(importlib.import_module(f"train.models.{module_name}"), class_name)


class MethodConfig(Protocol):
    """What building a model needs to know of its configuration here: the method (train.config.ModelConfig)."""

    method: str


_REGISTRY: dict[str, MethodSpec] = {}
METHOD_REGISTRY: Mapping[str, MethodSpec] = MappingProxyType(_REGISTRY)


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def method_spec(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise ValueError(f"--method: unknown method {name!r}; expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]

"""Model registry: ``build_model(cfg)`` for every --method."""
from __future__ import annotations

from collections.abc import Callable

from ..config import ModelConfig
from .base import DistillationModel


def _stfpm(cfg: ModelConfig) -> DistillationModel:
    from .stfpm import STFPMModel
    return STFPMModel(cfg)


def _rd(cfg: ModelConfig) -> DistillationModel:
    from .rd import ReverseDistillationModel
    return ReverseDistillationModel(cfg)


def _dskd(cfg: ModelConfig) -> DistillationModel:
    from .dskd import DualStudentModel
    return DualStudentModel(cfg)


def _mrkd(cfg: ModelConfig) -> DistillationModel:
    from .mrkd import MaskedReverseDistillationModel
    return MaskedReverseDistillationModel(cfg)


def _knn(cfg: ModelConfig) -> DistillationModel:
    from .memory_bank import MemoryBankModel
    return MemoryBankModel(cfg)


BUILDERS: dict[str, Callable[[ModelConfig], DistillationModel]] = {"stfpm": _stfpm, "dcam": _stfpm,
                                                                   "rd": _rd, "dskd": _dskd, "mrkd": _mrkd,
                                                                   "knn": _knn}


def build_model(cfg: ModelConfig) -> DistillationModel:
    if cfg.method not in BUILDERS:
        raise ValueError(f"--method {cfg.method!r} is not available; expected one of {', '.join(sorted(BUILDERS))}")
    return BUILDERS[cfg.method](cfg)


__all__ = ["BUILDERS", "DistillationModel", "build_model"]

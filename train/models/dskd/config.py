"""Dual-student distillation's options and presets (Zhang, Suganuma & Okatani, contextual-affinity DSKD)."""
from __future__ import annotations

from dataclasses import dataclass

from ..rd.config import RD_PAPER_TRAIN
from ..registry import MethodSpec

STUDENT_LOSSES = ("pi", "ca")  # DSKD Table 5: per-pixel cosine | contextual affinity


@dataclass
class DSKDOptions:
    """``--dskd-*`` flags. g: GCCB channels (Table 6; 0 = no GCCB, "w/o"); temperature: T of the contextual
    affinity (Eq. 4, 6); local_loss / global_loss: each student's loss (Table 5)."""

    g: int = 1024
    temperature: float = 1.0
    local_loss: str = "pi"
    global_loss: str = "ca"

    def __post_init__(self) -> None:
        if self.g < 0:
            raise ValueError(f"--dskd-g: expected >= 0 (0 = no GCCB), got {self.g}")
        if self.temperature <= 0:
            raise ValueError(f"--dskd-temperature: expected > 0, got {self.temperature}")
        for name in ("local_loss", "global_loss"):
            if getattr(self, name) not in STUDENT_LOSSES:
                raise ValueError(f"--dskd-{name.replace('_', '-')}: expected one of {', '.join(STUDENT_LOSSES)}, "
                                 f"got {getattr(self, name)!r}")


# DSKD trains as RD does (Adam lr 0.005, 200 epochs, batch 16) and smooths the map with σ = 4.
SPEC = MethodSpec(name="dskd", paper="Zhang, Suganuma & Okatani, contextual-affinity dual-student KD",
                  model="dskd.model:DualStudentModel", paper_model=dict(blur_sigma=4.0), paper_train=RD_PAPER_TRAIN,
                  needs_all_levels=True)

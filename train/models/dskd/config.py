"""Dual-student distillation's options and presets (Zhang, Suganuma & Okatani, contextual-affinity DSKD)."""
from __future__ import annotations

from dataclasses import dataclass

from ..rd.config import RD_PAPER_BACKBONE, RD_PAPER_TRAIN
from ..registry import MethodSpec

STUDENT_LOSSES = ("pi", "ca")  # DSKD Table 5: per-pixel cosine | contextual affinity
STUDENTS = ("both", "local", "global")  # DSKD Table 4: both students, or one (e.g. "Global-CA" alone)
# OCBE_glo's start: "teacher" = the pretrained teacher's 4th residual stage (§3.4: "the 4-th residual stage of ResNet
# as trainable OCBE_glo"); "random" = RD's init; "auto" = "teacher" where the backbone has one (ResNets).
GLOBAL_INITS = ("auto", "teacher", "random")


@dataclass
class DSKDOptions:
    """``--dskd-*`` flags. g: GCCB channels (Table 6; 0 = no GCCB, "w/o"; unset = half the bottleneck's channels,
    the paper's 1024 of WideResNet-50's 2048, so GCCB condenses on every backbone: 256 of ResNet-18's 512);
    temperature: T of the contextual affinity (Eq. 4, 6); local_loss / global_loss: each student's loss (Table 5);
    students: both or one (Table 4);
    global_init: OCBE_glo's initial weights (GLOBAL_INITS)."""

    g: int | None = None
    temperature: float = 1.0
    local_loss: str = "pi"
    global_loss: str = "ca"
    students: str = "both"
    global_init: str = "auto"

    def __post_init__(self) -> None:
        if self.g is not None and self.g < 0:
            raise ValueError(f"--dskd-g: expected >= 0 (0 = no GCCB), got {self.g}")
        if self.temperature <= 0:
            raise ValueError(f"--dskd-temperature: expected > 0, got {self.temperature}")
        for name, choices in (("students", STUDENTS), ("global_init", GLOBAL_INITS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"--dskd-{name.replace('_', '-')}: expected one of {', '.join(choices)}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("local_loss", "global_loss"):
            if getattr(self, name) not in STUDENT_LOSSES:
                raise ValueError(f"--dskd-{name.replace('_', '-')}: expected one of {', '.join(STUDENT_LOSSES)}, "
                                 f"got {getattr(self, name)!r}")


# DSKD trains as RD does (Adam lr 0.005, 200 epochs, batch 16) and smooths the map with σ = 4.
SPEC = MethodSpec(name="dskd", paper="Zhang, Suganuma & Okatani, contextual-affinity dual-student KD",
                  model="dskd.model:DualStudentModel", paper_model=dict(blur_sigma=4.0, backbone=RD_PAPER_BACKBONE),
                  paper_train=RD_PAPER_TRAIN,
                  needs_all_levels=True)

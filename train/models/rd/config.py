"""Reverse distillation's options and presets (Deng & Li, "Anomaly detection via reverse distillation from
one-class embedding", CVPR 2022). The RD family (rd, dskd, mrkd) shares these options."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import MethodSpec

LOSS_MODES = ("pixel", "flat")  # RD Eq. 2 per position | the official RD4AD code's flattened maps


@dataclass
class RDOptions:
    """``--rd-*`` flags. loss_mode: "pixel" = Eq. 2, mean over positions of 1 − cos along C; "flat" = the official
    RD4AD code, 1 − cos of each level's flattened C·h·w map (rd, mrkd and DSKD's "pi" students).
    bottleneck_layers: residual blocks of the one-class bottleneck's stride-2 stage; 0 = RD's count."""

    loss_mode: str = "pixel"
    bottleneck_layers: int = 0

    def __post_init__(self) -> None:
        if self.loss_mode not in LOSS_MODES:
            raise ValueError(f"--rd-loss-mode: expected one of {', '.join(LOSS_MODES)}, got {self.loss_mode!r}")
        if self.bottleneck_layers < 0:
            raise ValueError(f"--rd-bottleneck-layers: expected >= 0 (0 = RD's count), got {self.bottleneck_layers}")


# RD §4.1: Adam lr 0.005, betas (0.5, 0.999), 200 epochs, batch 16; the map is smoothed with σ = 4 before the max.
# The RD family's papers all distil a WideResNet-50 teacher (RD4AD §4.1, DSKD §4.1, masked RD §4).
RD_PAPER_BACKBONE = "wide_resnet50_2"
RD_PAPER_TRAIN = dict(optimizer="adam", lr=0.005, epochs=200, batch_size=16)
SPEC = MethodSpec(name="rd", paper="Deng & Li, CVPR 2022 (RD4AD)", model="rd.model:ReverseDistillationModel",
                  paper_model=dict(blur_sigma=4.0, backbone=RD_PAPER_BACKBONE), paper_train=RD_PAPER_TRAIN,
                  needs_all_levels=True)

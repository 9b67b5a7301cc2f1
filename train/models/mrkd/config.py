"""Masked reverse distillation's options and presets (feature-mask module + SCSAtt; paper §3.4–3.7, §4.2)."""
from __future__ import annotations

from dataclasses import dataclass

from ..rd.config import RD_PAPER_BACKBONE
from ..registry import MethodSpec


@dataclass
class MRKDOptions:
    """``--mrkd-*`` flags. fmm: the feature-mask module (§3.7); mask_rate: λ, share of masked positions (not in
    the paper; Jiang et al.'s code: 0.2); fmm_weight: the FMM term next to the direct decoder term; scconv / simam:
    the SCSAtt parts (Tables 5–6 ablations); score_through_fmm: the anomaly map compares the teacher with the
    unmasked FMM's output (§3.8's reading) instead of the decoder's (the FMM then stays in the exported graph)."""

    fmm: bool = True
    mask_rate: float = 0.2
    fmm_weight: float = 1.0
    scconv: bool = True
    simam: bool = True
    score_through_fmm: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_rate < 1.0:
            raise ValueError(f"--mrkd-mask-rate: expected a value in [0, 1), got {self.mask_rate}")
        if self.fmm_weight < 0:
            raise ValueError(f"--mrkd-fmm-weight: expected >= 0, got {self.fmm_weight}")


# §4.2: Adam lr 1e-3 (its L2 regularisation has no stated coefficient: none here); σ = 4 as the RD family.
SPEC = MethodSpec(name="mrkd", paper="Masked reverse distillation with SCSAtt",
                  model="mrkd.model:MaskedReverseDistillationModel",
                  paper_model=dict(blur_sigma=4.0, backbone=RD_PAPER_BACKBONE),
                  paper_train=dict(optimizer="adam", lr=0.001, epochs=200, batch_size=16),
                  needs_all_levels=True)

"""The memory bank's options and presets (PatchCore: Roth et al., CVPR 2022)."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import MethodSpec

CORESETS = ("greedy", "random")


@dataclass
class KNNOptions:
    """``--knn-*`` flags. neighbourhood: p×p local averaging (§3.1, Eq. 2); bank_size: bank entries; coreset:
    how they are chosen (greedy k-center, §3.2, or random)."""

    neighbourhood: int = 3
    bank_size: int = 16384
    coreset: str = "greedy"

    def __post_init__(self) -> None:
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"--knn-neighbourhood: expected an odd size >= 1, got {self.neighbourhood}")
        if self.bank_size < 1:
            raise ValueError(f"--knn-bank-size: expected >= 1, got {self.bank_size}")
        if self.coreset not in CORESETS:
            raise ValueError(f"--knn-coreset: expected one of {', '.join(CORESETS)}, got {self.coreset!r}")


# PatchCore: strides 8 + 16, map smoothed with σ = 4. Fitted in one pass: epochs / optimiser are unused.
SPEC = MethodSpec(name="knn", paper="Roth et al., CVPR 2022 (PatchCore)", model="knn.model:MemoryBankModel",
                  paper_model=dict(blur_sigma=4.0, levels=(1, 2)),
                  paper_train=dict(optimizer="adam", lr=0.001, epochs=1, batch_size=16),
                  fp32_only="the int8 quantisers do not yet keep its nearest-bank distance product in fp32")

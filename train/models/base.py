"""The model contract every distillation method implements (training loop, export and runtime stay outside)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class DistillationModel(nn.Module):
    """A frozen pretrained teacher plus trainable student(s).

    Subclasses set ``self.teacher`` and implement ``compute_loss`` and ``inference_model``.
    """

    teacher: nn.Module
    # False for methods fitted in one pass over the normals (the memory bank): the trainer then skips the epochs.
    needs_gradient_training: bool = True

    def freeze_teacher(self) -> None:
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> DistillationModel:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics are ImageNet's and never change
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.") and p.requires_grad]

    def compute_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch of normalised images and its named components."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The training view (what DistributedDataParallel wraps): the loss of a batch."""
        return self.compute_loss(images)

    def inference_model(self) -> nn.Module:
        """Attention-/mask-free graph: forward(x) → (anomaly_map B×1×H×W, score B). Shares weights with self."""
        raise NotImplementedError

    def fit_training_statistics(self, normal_batches: Iterable[torch.Tensor]) -> None:
        """Before training: statistics of the training normals the model needs (teacher feature mean/std,
        the memory bank). Deterministic for a given data split, so a resumed run recomputes them. Default: none."""

    def fit_normal_statistics(self, normal_batches: Iterable[torch.Tensor]) -> None:
        """Collect statistics on normal images that inference needs (e.g. DSKD's μ, σ). Default: none."""

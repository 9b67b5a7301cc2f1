"""Nearest-neighbour memory bank on the frozen teacher (PatchCore: Roth et al., "Towards total recall in
industrial anomaly detection", CVPR 2022) — the reference every distillation result is measured against,
and a method of its own (``--method knn``): no student, no gradients, fitted in one pass over the normals.

Patch feature (PatchCore §3.1, Eq. 2): the teacher's maps at the chosen levels, each averaged over a p×p
neighbourhood (local aggregation), brought to the finest chosen level's resolution and concatenated.
Bank (§3.2): all training patches, reduced to ``knn_bank_size`` by greedy k-center coreset selection
(Eq. 3–4, on a random projection as the paper does) or random subsampling.
Anomaly map (§3.3, Eq. 6): per position the Euclidean distance to the nearest bank entry, upsampled and
blurred by the shared head; image score = its maximum.

At inference the distance to every bank entry is a 1×1 convolution with the bank as its weight,
‖x − b‖² = ‖x‖² − 2·x·b + ‖b‖², so the exported graph is plain convolutions and a channel minimum.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...backbones import FeatureExtractor, build_backbone
from ...config import ModelConfig
from ..base import DistillationModel
from ..feature_transform import local_average
from ..head import DistanceHead, channel_sum

CORESET_PROJECTION_DIM = 128  # PatchCore §3.2: Johnson–Lindenstrauss projection for the k-center search
# Each k-center step reads every candidate: pre-sample at most this many candidates per bank entry (CPU cost).
CORESET_CANDIDATES_PER_ENTRY = 10


class PatchFeatures(nn.Module):
    """Teacher levels → locally averaged, upsampled, concatenated patch features B×C×h×w (PatchCore Eq. 2)."""

    def __init__(self, teacher: FeatureExtractor, levels: tuple[int, ...], neighbourhood: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.levels = tuple(levels)
        self.neighbourhood = int(neighbourhood)

    @property
    def channels(self) -> int:
        return sum(self.teacher.channels[i] for i in self.levels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.teacher(images)
        chosen = [features[i] for i in self.levels]
        chosen = [local_average(f, self.neighbourhood) for f in chosen]
        size = chosen[0].shape[-2:]
        chosen = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                  for f in chosen]
        return torch.cat(chosen, dim=1)


def nearest_distance_map(patches: torch.Tensor, bank_weight: torch.Tensor, bank_sq_norms: torch.Tensor
                         ) -> torch.Tensor:
    """min_j ‖x − b_j‖ per position, B×C×h×w → B×1×h×w; bank_weight M×C×1×1 (as a 1×1 conv), bank_sq_norms M."""
    products = F.conv2d(patches, bank_weight, bias=bank_sq_norms * -0.5)  # x·b_j − ‖b_j‖²/2
    nearest = torch.amax(products, dim=1, keepdim=True)
    return torch.sqrt(torch.clamp(channel_sum(patches * patches) - 2.0 * nearest, min=0.0))


class MemoryBankInference(nn.Module):
    """Patch features → nearest-bank distance → shared head: x → (anomaly_map, score)."""

    bank_weight: torch.Tensor  # buffers (register_buffer)
    bank_sq_norms: torch.Tensor

    def __init__(self, patch_features: PatchFeatures, bank: torch.Tensor, head: DistanceHead) -> None:
        super().__init__()
        self.patch_features = patch_features
        self.register_buffer("bank_weight", bank[:, :, None, None].clone())
        self.register_buffer("bank_sq_norms", (bank * bank).sum(1))
        self.head = head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances = nearest_distance_map(self.patch_features(images), self.bank_weight, self.bank_sq_norms)
        return self.head([distances], images.shape[-2:])


def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Indices of a k-center coreset (PatchCore Eq. 4): repeatedly add the point farthest from the chosen set.

    Distances are measured on a random Gaussian projection to CORESET_PROJECTION_DIM dims (§3.2), among at most
    CORESET_CANDIDATES_PER_ENTRY·size randomly pre-sampled candidates.
    """
    n = features.shape[0]
    if size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    if n > CORESET_CANDIDATES_PER_ENTRY * size:
        candidates = torch.randperm(n, generator=generator)[:CORESET_CANDIDATES_PER_ENTRY * size]
        return candidates[greedy_coreset(features[candidates], size, seed, progress)]
    if features.shape[1] > CORESET_PROJECTION_DIM:
        projection = torch.randn(features.shape[1], CORESET_PROJECTION_DIM, generator=generator)
        features = features @ projection / CORESET_PROJECTION_DIM ** 0.5
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    # Squared distances as ‖x‖² − 2·x·c + ‖c‖²: one matrix-vector product per step instead of an N×d difference.
    sq_norms = (features * features).sum(1)
    nearest = torch.full((n,), float("inf"))
    for i in tqdm(range(size), desc="coreset", disable=not progress, leave=False, mininterval=1.0):
        if i:
            chosen[i] = int(torch.argmax(nearest))
        center = features[chosen[i]]
        nearest = torch.minimum(nearest, sq_norms - 2.0 * (features @ center) + sq_norms[chosen[i]])
    return chosen


class MemoryBankModel(DistillationModel):
    """``--method knn``: a frozen teacher and a bank of normal patch features; fitted, not trained."""

    needs_gradient_training = False
    bank: torch.Tensor  # a buffer (register_buffer): the fitted patch features, M×C

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = build_backbone(cfg.backbone, pretrained=cfg.pretrained, weights_path=cfg.teacher_weights)
        self.freeze_teacher()
        self.patch_features = PatchFeatures(self.teacher, cfg.levels, cfg.knn.neighbourhood)
        self.register_buffer("bank", torch.zeros(0, self.patch_features.channels))
        self.head = DistanceHead(cfg.blur_sigma)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        bank = state_dict.get(prefix + "bank")
        if bank is not None:  # the bank's length is known only once fitted: take the checkpoint's
            self.bank = torch.zeros_like(bank, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit_training_statistics(self, normal_batches: Iterable[torch.Tensor]) -> None:
        """Collect every training patch, then keep ``knn_bank_size`` of them (coreset or random)."""
        patches = [self.patch_features(images).permute(0, 2, 3, 1).reshape(-1, self.patch_features.channels).cpu()
                   for images in normal_batches]
        if not patches:
            raise ValueError("knn: no training images to build the memory bank from")
        everything = torch.cat(patches).float()
        size = min(self.cfg.knn.bank_size, everything.shape[0])
        if self.cfg.knn.coreset == "greedy":
            keep = greedy_coreset(everything, size)
        else:
            keep = torch.randperm(everything.shape[0], generator=torch.Generator().manual_seed(0))[:size]
        self.bank = everything[keep].contiguous().to(self.bank.device)

    def compute_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean nearest-bank distance of the batch: the "validation loss" a fitted bank is reported with."""
        with torch.no_grad():
            distances = nearest_distance_map(self.patch_features(images), self.bank[:, :, None, None],
                                             (self.bank * self.bank).sum(1))
        return distances.mean(), {"nearest_distance": float(distances.mean())}

    def inference_model(self) -> nn.Module:
        if self.bank.shape[0] == 0:
            raise ValueError("knn: the memory bank is empty (fit it on training images first)")
        return MemoryBankInference(self.patch_features, self.bank, self.head)

"""Masked reverse distillation with SCSAtt and a feature-mask module ("mrkd").

RD whose bottleneck is MSFF (§3.3) → SCSAtt (SCConv + SimAM, §3.4–3.6) → OCE, plus the training-only
feature mask generation module FMM (§3.7, after Masked Generative Distillation, Yang et al. 2022):
random positions of each student level are zeroed and a small conv block must regenerate the
teacher's features from the rest. The FMM is not part of the inference graph.
"""
from __future__ import annotations

import torch
from torch import nn

from ...config import ModelConfig
from ..decoder import DecoderSpec, init_rd_weights
from ..rd.loss import multi_level_cosine_loss
from ..rd.model import OneClassBottleneck, ReverseDistillationInference, ReverseDistillationModel
from .scsatt import SCSAtt


class FeatureMaskModule(nn.Module):
    """FMM (masked-RD §3.7, after MGD's random mask + generation block), one branch per level.

    M_{h,w} = 0 if R_{h,w} < λ else 1, R ~ U(0, 1) per position (λ = mask rate);
    restored = W_l2(ReLU(W_l1(f_align(F_S) ⊙ M))) with f_align a 1×1 conv and W_l1, W_l2 3×3 convs.
    """

    def __init__(self, channels: list[int], mask_rate: float) -> None:
        super().__init__()
        self.mask_rate = mask_rate
        self.align = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)
        self.generate = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1))
            for c in channels)
        init_rd_weights(self)

    def forward(self, student_features: list[torch.Tensor], masked: bool = True) -> list[torch.Tensor]:
        """Masked (training) or whole (scoring through the FMM: a random mask would make scores random)."""
        restored = []
        for features, align, generate in zip(student_features, self.align, self.generate):
            aligned = align(features)
            if masked:
                b, _, h, w = features.shape
                aligned = aligned * (torch.rand(b, 1, h, w, device=features.device) >= self.mask_rate).to(aligned.dtype)
            restored.append(generate(aligned))
        return restored


class DecoderThroughFMM(nn.Module):
    """D then the unmasked FMM: the student features the paper scores with (§3.8, "outputting the features via the
    mask generation module ... generate a two-dimensional anomaly score map at each level")."""

    def __init__(self, decoder: nn.Module, fmm: FeatureMaskModule) -> None:
        super().__init__()
        self.decoder = decoder
        self.fmm = fmm

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.fmm(self.decoder(x), masked=False)


class MaskedReverseDistillationModel(ReverseDistillationModel):
    """E → MSFF → SCSAtt → OCE → D; training loss Σ_k (1 − cos)(f_E^k, f_D^k) + w·Σ_k (1 − cos)(f_E^k, FMM(f_D)^k).

    The paper's loss (§3.8) compares the teacher with the FMM output only; the direct decoder term is
    kept because the FMM is dropped at inference, where the map is Σ_k Upsample(1 − cos(f_E^k, f_D^k)).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.fmm = FeatureMaskModule(self.teacher.channels, cfg.mrkd.mask_rate) if cfg.mrkd.fmm else None

    def build_bottleneck(self, channels: list[int], spec: DecoderSpec) -> OneClassBottleneck:
        use_attention = self.cfg.mrkd.scconv or self.cfg.mrkd.simam
        attention = SCSAtt(channels[2], self.cfg.mrkd.scconv, self.cfg.mrkd.simam) if use_attention else None
        return OneClassBottleneck(channels, spec, "msff", attention)

    def compute_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        teacher_features = self.teacher_features(images)
        student_features = self.reconstruct(teacher_features)
        loss = multi_level_cosine_loss(teacher_features, student_features, self.cfg.rd.loss_mode)
        parts = {"cosine": float(loss.detach())}
        # Masking is a training-time regulariser: validation losses stay deterministic and comparable.
        if self.fmm is not None and self.training:
            fmm_loss = multi_level_cosine_loss(teacher_features, self.fmm(student_features), self.cfg.rd.loss_mode)
            parts["fmm"] = float(fmm_loss.detach())
            loss = loss + self.cfg.mrkd.fmm_weight * fmm_loss
        return loss, parts

    def inference_model(self) -> nn.Module:
        """Scored from the decoder (default: the FMM is a training-time regulariser) or, with
        --mrkd-score-through-fmm, from the FMM's regenerated features as the paper's §3.8 describes."""
        if self.cfg.mrkd.score_through_fmm and self.fmm is not None:
            decoder = DecoderThroughFMM(self.decoder, self.fmm)
            return ReverseDistillationInference(self.teacher, self.bottleneck, decoder, self.head)
        return super().inference_model()

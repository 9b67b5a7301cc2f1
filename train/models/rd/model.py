"""Reverse distillation (Deng & Li, "Anomaly detection via reverse distillation from one-class
embedding", CVPR 2022): frozen teacher encoder E → one-class bottleneck embedding (OCBE) → student
decoder D that reconstructs E's three levels; loss and anomaly map are the per-level 1 − cos.

Also home of the pieces the family shares: the multi-scale fusion in front of the bottleneck
(RD's OCBE / masked-RD's MSFF), the bottleneck itself and the RD inference graph.
"""
from __future__ import annotations

import torch
from torch import nn

from ...backbones import FeatureExtractor, build_backbone
from ...backbones.resnet import conv1x1, conv3x3
from ...config import ModelConfig
from ..base import DistillationModel
from ..decoder import DecoderSpec, ReverseDecoder, decoder_spec, init_rd_weights, residual_stage
from ..head import DistanceHead, pyramid_cosine_head
from .loss import multi_level_cosine_loss

FUSIONS = ("concat", "msff", "last")


def _conv_bn_relu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))


class MultiScaleFusion(nn.Module):
    """Brings teacher levels 1 and 2 to level 3's resolution and concatenates them with it.

    Level 1 is down-sampled twice, level 2 once, each step a 3×3 stride-2 conv + BN + ReLU (RD's OCBE
    "MFF"; masked-RD §3.3 MSFF). project=True adds MSFF's 1×1 conv + BN + ReLU from 3·C3 to C3 channels.
    """

    def __init__(self, channels: list[int], project: bool = False) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(_conv_bn_relu(conv3x3(c1, c2, stride=2)), _conv_bn_relu(conv3x3(c2, c3, stride=2)))
        self.down2 = _conv_bn_relu(conv3x3(c2, c3, stride=2))
        self.project = _conv_bn_relu(conv1x1(3 * c3, c3)) if project else None
        self.out_channels = c3 if project else 3 * c3

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[f1, f2, f3] (strides 4, 8, 16) → B×out_channels×H/16×W/16."""
        fused = torch.cat([self.down1(features[0]), self.down2(features[1]), features[2]], dim=1)
        return fused if self.project is None else self.project(fused)


class OneClassBottleneck(nn.Module):
    """OCBE (RD §3.2, Fig. 3): fusion → (optional attention) → a stride-2 residual stage ("OCE").

    fusion: "concat" = RD's multi-scale concatenation; "msff" = masked-RD's MSFF (concat + 1×1 projection);
    "last" = teacher level 3 only (DSKD's OCBE_glo, "the 4-th residual stage of ResNet", Fig. 3).
    Output: 2·C3 channels at stride 32 (RD: 2048 for Wide-ResNet-50-2, 512 for ResNet-18).
    """

    def __init__(self, channels: list[int], spec: DecoderSpec, fusion: str = "concat",
                 attention: nn.Module | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"bottleneck fusion: expected one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.fusion = None if fusion == "last" else MultiScaleFusion(channels, project=fusion == "msff")
        in_channels = channels[2] if self.fusion is None else self.fusion.out_channels
        self.attention = attention
        self.out_channels = 2 * channels[2]
        self.stage = residual_stage(spec.block, in_channels, self.out_channels, spec.bottleneck_blocks, "down",
                                    spec.base_width)
        init_rd_weights(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[2] if self.fusion is None else self.fusion(features)
        if self.attention is not None:
            x = self.attention(x)
        return self.stage(x)


class ReverseDistillationInference(nn.Module):
    """Teacher → bottleneck → decoder → Σ_k Upsample(1 − cos) (+ blur) → (map, max score) (RD §3.3)."""

    def __init__(self, teacher: nn.Module, bottleneck: nn.Module, decoder: nn.Module, head: DistanceHead) -> None:
        super().__init__()
        self.teacher = teacher
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.head = head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher_features = self.teacher(images)
        student_features = self.decoder(self.bottleneck(teacher_features))
        return pyramid_cosine_head(self.head, teacher_features, student_features, images.shape[-2:])


class ReverseDistillationModel(DistillationModel):
    """RD: E (frozen, pretrained) → OCBE → D; L = Σ_k 1/(h_k w_k) Σ (1 − cos(f_E^k, f_D^k)) (RD Eq. 1–2)."""

    teacher: FeatureExtractor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = build_backbone(cfg.backbone, pretrained=cfg.pretrained, weights_path=cfg.teacher_weights)
        self.freeze_teacher()
        channels = self.teacher.channels
        self.spec = decoder_spec(cfg.backbone, cfg.rd.bottleneck_layers)
        self.bottleneck = self.build_bottleneck(channels, self.spec)
        self.decoder = ReverseDecoder(channels, self.bottleneck.out_channels, self.spec)
        self.head = DistanceHead(cfg.blur_sigma)

    def build_bottleneck(self, channels: list[int], spec: DecoderSpec) -> OneClassBottleneck:
        """RD's OCBE (masked RD overrides this with MSFF + SCSAtt)."""
        return OneClassBottleneck(channels, spec, "concat")

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.teacher(images)

    def reconstruct(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """D(OCBE(E(I))): the student's three levels."""
        return self.decoder(self.bottleneck(teacher_features))

    def compute_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        teacher_features = self.teacher_features(images)
        loss = multi_level_cosine_loss(teacher_features, self.reconstruct(teacher_features), self.cfg.rd.loss_mode)
        return loss, {"cosine": float(loss.detach())}

    def inference_model(self) -> nn.Module:
        return ReverseDistillationInference(self.teacher, self.bottleneck, self.decoder, self.head)

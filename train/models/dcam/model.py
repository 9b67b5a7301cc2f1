"""STFPM (Wang et al. 2021) and DCAM (Jena et al., "Attend, Distill, Detect") — forward distillation.

Teacher and student share the backbone architecture; the student (random init) learns to reproduce the
teacher's conv2_x..conv4_x features. DCAM adds training-only attention on the student's features and
channel-cosine + spatial-KL matching (paper §3); STFPM is the same model with no attention and the
L2-normalised MSE.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ...anomaly_synthesis import paste_synthetic_anomalies
from ...backbones import FeatureExtractor, build_backbone
from ...config import ModelConfig
from ..base import DistillationModel
from ..feature_transform import MatchedFeatureTransform
from ..head import DistanceHead, level_cosine_distances
from .attention import DistributedAttention
from .loss import FeatureMatchingLoss


def select_levels(features: list[torch.Tensor], levels: tuple[int, ...]) -> list[torch.Tensor]:
    """The distilled levels of a backbone's three maps (0 = stride 4, 1 = stride 8, 2 = stride 16)."""
    return features if len(levels) == len(features) else [features[i] for i in levels]


def student_pyramid(student: FeatureExtractor, images: torch.Tensor, teacher_features: list[torch.Tensor],
                    shared_levels: int, refine: Callable[[int, torch.Tensor], torch.Tensor] | None = None
                    ) -> list[torch.Tensor]:
    """The student's three maps; with shared levels the first ones are the teacher's and the student continues
    from the last shared map (backbones' forward_from). ``refine``: inline attention after each level."""
    if shared_levels == 0:
        return student(images, refine)
    shared = teacher_features[:shared_levels]
    return [*shared, *student.forward_from(shared[-1], shared_levels - 1, refine)]


def matched_features(all_teacher: list[torch.Tensor], student: FeatureExtractor, images: torch.Tensor,
                     levels: tuple[int, ...], shared_levels: int, attention: DistributedAttention | None,
                     transform: MatchedFeatureTransform, placement: str = "branch"
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The teacher's and the (attention-refined) student's maps at the distilled levels, both through the same
    standardise/average transform: what loss and anomaly map compare. ``images`` is the student's input (the
    teacher's own, or a copy with synthetic anomalies for a denoising student)."""
    teacher_features = select_levels(all_teacher, levels)
    inline = attention.refine if attention is not None and placement == "inline" else None
    student_features = select_levels(student_pyramid(student, images, all_teacher, shared_levels, inline), levels)
    if attention is not None and placement == "branch":
        student_features = attention(student_features)
    return transform(teacher_features), transform(student_features)


class FeaturePyramidInference(nn.Module):
    """Teacher + student (+ optional attention) + distance head as one module: x → (anomaly_map, score)."""

    def __init__(self, teacher: nn.Module, student: FeatureExtractor, head: DistanceHead,
                 attention: DistributedAttention | None = None, levels: tuple[int, ...] = (0, 1, 2),
                 shared_levels: int = 0, transform: MatchedFeatureTransform | None = None,
                 placement: str = "branch") -> None:
        super().__init__()
        self.transform = transform if transform is not None else MatchedFeatureTransform([], False, 1)
        self.teacher = teacher
        self.student = student
        self.attention = attention
        self.head = head
        self.levels = tuple(levels)
        self.shared_levels = shared_levels
        self.placement = placement

    def level_distances(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Ω^k per distilled level at its own resolution, before the head weights, upsamples and sums them."""
        teacher_features, student_features = matched_features(self.teacher(images), self.student, images, self.levels,
                                                              self.shared_levels, self.attention, self.transform,
                                                              self.placement)
        return level_cosine_distances(teacher_features, student_features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.level_distances(images), images.shape[-2:])


def build_student(name: str, teacher: FeatureExtractor) -> FeatureExtractor:
    """A random-init student of architecture ``name`` that can reproduce ``teacher``'s maps one to one."""
    student = build_backbone(name, pretrained=False)
    if (student.channels, student.normalization) != (teacher.channels, teacher.normalization):
        raise ValueError(f"--student-backbone {name}: its maps have {student.channels} channels on "
                         f"{student.normalization!r} inputs; the teacher {teacher.name} has {teacher.channels} on "
                         f"{teacher.normalization!r} (expected the same)")
    return student


class STFPMModel(DistillationModel):
    """Student-teacher feature pyramid matching, with DCAM attention when cfg.attention != "none"."""

    head: DistanceHead

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = build_backbone(cfg.backbone, pretrained=cfg.pretrained, weights_path=cfg.teacher_weights)
        self.student = build_student(cfg.student_backbone or cfg.backbone, self.teacher)
        if cfg.student_bn_momentum is not None:
            for module in self.student.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.momentum = cfg.student_bn_momentum
        self.freeze_teacher()
        self.attention = (DistributedAttention(cfg.levels, [self.teacher.channels[i] for i in cfg.levels],
                                               cfg.attention, cfg.attention_reduction, cfg.attention_kernel)
                          if cfg.attention != "none" else None)
        self.loss = FeatureMatchingLoss(cfg.loss_channel_cosine, cfg.loss_spatial_cosine, cfg.loss_channel_kl,
                                        cfg.loss_spatial_kl, cfg.loss_mse, cfg.kl_reduction,
                                        cfg.loss_hard_quantile, cfg.loss_mse_mode)
        self.head = DistanceHead(cfg.blur_sigma, len(cfg.levels) if cfg.level_normalize else 0, cfg.level_fusion)
        self.feature_transform = MatchedFeatureTransform([self.teacher.channels[i] for i in cfg.levels],
                                                         cfg.feature_standardize, cfg.feature_neighbourhood)

    def fit_training_statistics(self, normal_batches: Iterable[torch.Tensor]) -> None:
        """The teacher's channel mean/std on the training normals (--feature-standardize)."""
        self.feature_transform.fit(select_levels(self.teacher(images), self.cfg.levels) for images in normal_batches)

    def fit_normal_statistics(self, normal_batches: Iterable[torch.Tensor]) -> None:
        """Per-level map weights from the validation normals' distances (--level-normalize), as inference sees them."""
        if self.cfg.level_normalize:
            inference = self.inference_model()
            self.head.fit_level_weights((inference.level_distances(images) for images in normal_batches),
                                        scale=self.cfg.scored_level_scale)

    def features(self, images: torch.Tensor, student_images: torch.Tensor | None = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features (no grad) of ``images`` and the student's features of ``student_images`` (default:
        the same images) refined by DCAM (training view)."""
        with torch.no_grad():
            all_teacher = self.teacher(images)
        return matched_features(all_teacher, self.student, images if student_images is None else student_images,
                                self.cfg.levels, self.cfg.student_shared_levels, self.attention,
                                self.feature_transform, self.cfg.attention_placement)

    def compute_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The feature-matching loss; with --student-denoise the student sees synthetic anomalies and is held to
        the teacher's features of the clean image (DeSTSeg §3.2, train/anomaly_synthesis.py)."""
        student_images = None
        if self.training and self.cfg.student_denoise > 0.0:
            student_images = paste_synthetic_anomalies(images, self.cfg.student_denoise)
        teacher_features, student_features = self.features(images, student_images)
        return self.loss(teacher_features, student_features)

    def inference_model(self) -> FeaturePyramidInference:
        attention = self.attention if self.cfg.attention_at_inference else None
        return FeaturePyramidInference(self.teacher, self.student, self.head, attention, self.cfg.levels,
                                       self.cfg.student_shared_levels, self.feature_transform,
                                       self.cfg.attention_placement)

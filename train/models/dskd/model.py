"""Dual-student knowledge distillation with contextual affinity (Zhang, Suganuma & Okatani, "Contextual
Affinity Distillation for Image Anomaly Detection"), "dskd".

Local student = RD unchanged (OCBE_loc → S_loc, per-pixel cosine, §3.3). Global student = OCBE_glo
(a ResNet-4th-stage-like residual stage on the teacher's deepest level) → GCCB → S_glo, trained with
the contextual affinity loss (§3.4). Each student's map is standardised with μ, σ measured on
normal validation images and the two are added (Eq. 8), then blurred; score = max.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from ...backbones import backbone_spec, build_classifier
from ...config import ModelConfig
from ..base import DistillationModel
from ..decoder import ReverseDecoder, decoder_spec
from ..head import DistanceHead
from ..rd.loss import student_distance_maps, student_loss
from ..rd.model import OneClassBottleneck

SIGMA_FLOOR = 1e-6


class GlobalContextCondensingBlock(nn.Module):
    """GCCB (DSKD §3.4, Fig. 3, Table 6): condense B×C×h×w to one C-vector (global average), compress
    it to g channels and restore it to C by 1×1 convs, then restore the h×w size by broadcasting.

    g == C uses no 1×1 convs (Table 6, "g = 2048"); the output keeps only image-level context.
    """

    def __init__(self, channels: int, g: int) -> None:
        super().__init__()
        self.transform = None if g == channels else nn.Sequential(
            nn.Conv2d(channels, g, 1), nn.ReLU(inplace=True), nn.Conv2d(g, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(dim=(2, 3), keepdim=True)
        if self.transform is not None:
            context = self.transform(context)
        return context.expand(-1, -1, x.shape[2], x.shape[3])


class ScoreStandardizer(nn.Module):
    """Eq. 8 as inputs of the shared head: (Σ_l Ψ(M_loc^l) − μ_loc)/σ_loc + (Σ_l Ψ(M_glo^l) − μ_glo)/σ_glo.

    Bilinear up-sampling, the level sum, a normalised blur and the max all commute with x ↦ x/σ − c, so
    each level map is divided by its student's σ and the constant μ_loc/σ_loc + μ_glo/σ_glo is subtracted
    from one level. μ, σ are buffers (saved in checkpoints, constants in exported graphs); before
    ``DualStudentModel.fit_normal_statistics`` they are 0 and 1.
    """

    mean: torch.Tensor  # buffers (register_buffer): μ_loc, μ_glo and σ_loc, σ_glo
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("std", torch.ones(2))

    def forward(self, local_maps: list[torch.Tensor] | None,
                global_maps: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """The standardised level maps of the students present (a single-student model has one)."""
        present = [(k, maps) for k, maps in enumerate((local_maps, global_maps)) if maps is not None]
        scaled = [m / self.std[k] for k, maps in present for m in maps]
        offset = functools.reduce(operator.add, (self.mean[k] / self.std[k] for k, _ in present))
        return [scaled[0] - offset] + scaled[1:]


class DualStudents(nn.Module):
    """OCBE_loc → S_loc and OCBE_glo → GCCB → S_glo (DSKD §3.2, Fig. 2–3): teacher levels → both students' levels."""

    def __init__(self, cfg: ModelConfig, channels: list[int]) -> None:
        super().__init__()
        spec = decoder_spec(cfg.backbone, cfg.rd.bottleneck_layers)
        self.local_bottleneck: nn.Module | None = None
        self.local_decoder: nn.Module | None = None
        self.global_bottleneck: nn.Sequential | None = None
        self.global_decoder: nn.Module | None = None
        if cfg.dskd.students in ("both", "local"):
            self.local_bottleneck = OneClassBottleneck(channels, spec, "concat")
            self.local_decoder = ReverseDecoder(channels, self.local_bottleneck.out_channels, spec)
        if cfg.dskd.students in ("both", "global"):
            ocbe_global = OneClassBottleneck(channels, spec, "last")
            g = cfg.dskd.g if cfg.dskd.g is not None else ocbe_global.out_channels // 2
            gccb = GlobalContextCondensingBlock(ocbe_global.out_channels, g) if g else nn.Identity()
            self.global_bottleneck = nn.Sequential(ocbe_global, gccb)
            self.global_decoder = ReverseDecoder(channels, ocbe_global.out_channels, spec)

    def start_global_from(self, fourth_stage: nn.Module) -> None:
        """OCBE_glo's residual stage ← the teacher's pretrained 4th stage (same blocks and shapes, DSKD §3.4)."""
        if self.global_bottleneck is not None:
            cast(OneClassBottleneck, self.global_bottleneck[0]).stage.load_state_dict(fourth_stage.state_dict())

    def forward(self, teacher_features: list[torch.Tensor]
                ) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        local_features = (self.local_decoder(self.local_bottleneck(teacher_features))
                          if self.local_decoder is not None and self.local_bottleneck is not None else None)
        global_features = (self.global_decoder(self.global_bottleneck(teacher_features))
                           if self.global_decoder is not None and self.global_bottleneck is not None else None)
        return local_features, global_features


class DualStudentInference(nn.Module):
    """Teacher → both students → standardised level maps (Eq. 8) → upsample, sum, blur, max."""

    def __init__(self, teacher: nn.Module, students: DualStudents, standardizer: ScoreStandardizer,
                 head: DistanceHead, cfg: ModelConfig) -> None:
        super().__init__()
        self.teacher = teacher
        self.students = students
        self.standardizer = standardizer
        self.head = head
        self.kinds = (cfg.dskd.local_loss, cfg.dskd.global_loss)
        self.temperature = cfg.dskd.temperature

    def level_maps(self, images: torch.Tensor) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """M_loc^l and M_glo^l, each student scored with its own loss's discrepancy (Eq. 1 or Eq. 6, §3.5)."""
        teacher_features = self.teacher(images)
        features = self.students(teacher_features)
        local_maps, global_maps = (None if f is None else
                                   student_distance_maps(teacher_features, f, kind, self.temperature)
                                   for f, kind in zip(features, self.kinds))
        return local_maps, global_maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local_maps, global_maps = self.level_maps(images)
        return self.head(self.standardizer(local_maps, global_maps), images.shape[-2:])


class DualStudentModel(DistillationModel):
    """DSKD: L = L_loc + L_glo (Eq. 2 and Eq. 7 by default; Table 5 loss pairs via dskd_local/global_loss)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        classifier = build_classifier(cfg.backbone, pretrained=cfg.pretrained, weights_path=cfg.teacher_weights)
        backbone = backbone_spec(cfg.backbone)
        self.teacher = backbone.features(classifier, cfg.backbone, backbone.normalization)
        self.freeze_teacher()
        self.students = DualStudents(cfg, self.teacher.channels)
        fourth_stage = getattr(classifier, "layer4", None)
        if cfg.dskd.global_init == "teacher" and fourth_stage is None:
            raise ValueError(f"--dskd-global-init teacher: {cfg.backbone} has no 4th residual stage "
                             f"(a ResNet teacher has); use auto or random")
        if cfg.dskd.global_init != "random" and fourth_stage is not None and cfg.pretrained:
            self.students.start_global_from(fourth_stage)  # a run being loaded gets its trained weights instead
        self.standardizer = ScoreStandardizer()
        self.head = DistanceHead(cfg.blur_sigma)

    def compute_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        with torch.no_grad():
            teacher_features = self.teacher(images)
        terms = {name: student_loss(teacher_features, features, kind, cfg.dskd.temperature, cfg.rd.loss_mode)
                 for name, features, kind in zip(("local", "global"), self.students(teacher_features),
                                                 (cfg.dskd.local_loss, cfg.dskd.global_loss)) if features is not None}
        total = functools.reduce(operator.add, terms.values())
        return total, {name: float(term.detach()) for name, term in terms.items()}

    @torch.no_grad()
    def student_anomaly_maps(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """M_loc = Σ_l Ψ(M_loc^l) and M_glo (Eq. 8, before standardisation and blur), each B×1×H×W (None for a
        student a single-student model does not have)."""
        plain = DistanceHead(0.0)
        local_maps, global_maps = (None if maps is None else plain(maps, images.shape[-2:])[0]
                                   for maps in self.inference_model().level_maps(images))
        return local_maps, global_maps

    @torch.no_grad()
    def fit_normal_statistics(self, normal_batches: Iterable[torch.Tensor]) -> None:
        """μ, σ of each student's map over all pixels of the normal (validation) images (Eq. 8)."""
        was_training = self.training
        self.eval()
        device = self.standardizer.mean.device
        sums = torch.zeros(2, dtype=torch.float64)
        squares = torch.zeros(2, dtype=torch.float64)
        count = 0
        for batch in normal_batches:
            images = batch["image"] if isinstance(batch, dict) else batch
            for k, m in enumerate(self.student_anomaly_maps(images.to(device))):
                if m is None:
                    continue  # a single-student model: the absent student's μ, σ stay 0, 1
                m = m.to("cpu", torch.float64)
                sums[k] += m.sum()
                squares[k] += (m * m).sum()
            count += images.shape[0] * images.shape[2] * images.shape[3]
        self.train(was_training)
        if count == 0:
            raise ValueError("dskd normal statistics: the validation set yielded no images "
                             "(μ, σ of Eq. 8 need normal images)")
        mean = sums / count
        std = torch.sqrt(torch.clamp(squares / count - mean * mean, min=0.0)).clamp_min(SIGMA_FLOOR)
        absent = torch.tensor([self.students.local_decoder is None, self.students.global_decoder is None])
        mean, std = mean.masked_fill(absent, 0.0), std.masked_fill(absent, 1.0)  # an absent student: identity
        self.standardizer.mean.copy_(mean.to(self.standardizer.mean.dtype))
        self.standardizer.std.copy_(std.to(self.standardizer.std.dtype))

    def inference_model(self) -> DualStudentInference:
        return DualStudentInference(self.teacher, self.students, self.standardizer, self.head, self.cfg)

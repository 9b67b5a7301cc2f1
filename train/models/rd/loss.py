"""Losses (and the matching per-position score maps) of the reverse-distillation family.

* per-pixel cosine distance — RD (Deng & Li 2022) Eq. 1–2, DSKD Eq. 1–2, masked-RD §3.8;
* contextual affinity KL — DSKD (Zhang et al.) Eq. 3–7, also its global student's score map (§3.5).

Maps use elementary ops (mul, sum, sqrt, div, matmul, softmax, exp, log) so exporters map them 1:1.
Losses are computed in float32 (softmax / cosine under autocast lose too much precision).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dskd.config import STUDENT_LOSSES
from ..head import EPS, channel_sum, cosine_distance_map, level_sum
from .config import LOSS_MODES


def cosine_loss(teacher: torch.Tensor, student: torch.Tensor, mode: str = "pixel") -> torch.Tensor:
    """One level's 1 − cos loss.

    mode="pixel": 1/(h·w) Σ_{h,w} (1 − cos(f_t(h,w), f_s(h,w))), vectors along C (RD Eq. 2, DSKD Eq. 2).
    mode="flat": 1 − cos(vec(f_t), vec(f_s)) over the whole C·h·w map, as the official RD4AD code computes it.
    Averaged over the batch.
    """
    teacher, student = teacher.float(), student.float()
    if mode == "pixel":
        return cosine_distance_map(teacher, student).mean()
    if mode == "flat":
        return (1.0 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1, eps=EPS)).mean()
    raise ValueError(f"--rd-loss-mode: expected one of {', '.join(LOSS_MODES)}, got {mode!r}")


def multi_level_cosine_loss(teacher_features: list[torch.Tensor], student_features: list[torch.Tensor],
                            mode: str = "pixel") -> torch.Tensor:
    """L_KD = Σ_k cosine_loss(f_t^k, f_s^k) over the three levels (RD Eq. 2)."""
    return level_sum(cosine_loss(t, s, mode) for t, s in zip(teacher_features, student_features))


def _unit_vectors(features: torch.Tensor) -> torch.Tensor:
    """B×C×h×w → B×(h·w)×C, each position's vector divided by its L2 norm.

    Normalised on the 4-D map (a per-pixel Σ over channels, like the cosine head) so that exporters' head
    detection finds the affinity computation and keeps it in fp32.
    """
    unit = features / torch.sqrt(channel_sum(features * features) + EPS)
    return unit.flatten(2).transpose(1, 2)


def _log1p(x: torch.Tensor) -> torch.Tensor:
    """log(1 + x) to float32 accuracy for small x with exporter-friendly ops: log(u) − ((u − 1) − x)/u, u = 1 + x
    (the correction removes the rounding of 1 + x; torch.log1p exports as log(1 + x) and loses it)."""
    u = 1.0 + x
    return torch.log(u) - ((u - 1.0) - x) / u


def contextual_affinity_map(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position contextual-affinity KL of one level: B×C×h×w, B×C×h×w → B×1×h×w (DSKD Eq. 3–6).

    a^t_{i,j} = cos(f_T,i, f_T,j) (Eq. 3), a^s_{i,j} = cos(f_S,i, f_T,j) — the student vector against the
    *teacher's* map (Eq. 5); P = softmax_j(a / T) (Eq. 4); value at i = T² Σ_j P_T,i^j log(P_T,i^j / P_S,i^j) (Eq. 6).
    """
    t_unit = _unit_vectors(teacher)
    s_unit = _unit_vectors(student)
    keys = t_unit.transpose(1, 2)  # B×C×N
    p_teacher = torch.softmax(torch.matmul(t_unit, keys) / temperature, dim=2)  # B×N×N, row i = P_T,i
    # Written so that float32 keeps the small KL values accurate (Eq. 8 divides them by a small σ):
    # with d_ij = (a^t_ij − a^s_ij)/T = (f̂_T,i − f̂_S,i)·f̂_T,j / T, log P_T − log P_S = d + log E_{P_T}[e^{−d}],
    # so KL_i = E[d] + log E[e^{−d}] for d shifted by any constant; shifting by E[d] leaves two small terms,
    # and log E[e^{−d}] = log1p(E[e^{−d} − 1]) avoids rounding 1 + KL.
    d = torch.matmul(t_unit - s_unit, keys) / temperature
    d = d - (p_teacher * d).sum(dim=2, keepdim=True)
    mean_d = (p_teacher * d).sum(dim=2)
    excess = (p_teacher * (torch.exp(-d) - 1.0)).sum(dim=2)
    kl = mean_d + _log1p(excess)  # B×N
    return (temperature * temperature) * kl.reshape(teacher.shape[0], 1, teacher.shape[2], teacher.shape[3])


def contextual_affinity_loss(teacher_features: list[torch.Tensor], student_features: list[torch.Tensor],
                             temperature: float = 1.0) -> torch.Tensor:
    """L_glo = Σ_l 1/(h_l·w_l) Σ_i KL(P_T,i^l, P_S,i^l) (DSKD Eq. 7), averaged over the batch."""
    # Autocast would run the affinity matmuls in bf16/fp16, far too coarse for KL values of ~1e-3.
    with torch.autocast(device_type=teacher_features[0].device.type, enabled=False):
        return level_sum(contextual_affinity_map(t.float(), s.float(), temperature).mean()
                         for t, s in zip(teacher_features, student_features))


def student_distance_maps(teacher_features: list[torch.Tensor], student_features: list[torch.Tensor],
                          kind: str, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per-level score maps M^l of a student trained with loss ``kind``: "pi" → 1 − cos (DSKD Eq. 1),
    "ca" → contextual-affinity KL (Eq. 6); DSKD §3.5 scores each student with its own discrepancy."""
    if kind == "pi":
        return [cosine_distance_map(t, s) for t, s in zip(teacher_features, student_features)]
    if kind == "ca":
        return [contextual_affinity_map(t, s, temperature) for t, s in zip(teacher_features, student_features)]
    raise ValueError(f"student loss: expected one of {', '.join(STUDENT_LOSSES)}, got {kind!r}")


def student_loss(teacher_features: list[torch.Tensor], student_features: list[torch.Tensor], kind: str,
                 temperature: float = 1.0, mode: str = "pixel") -> torch.Tensor:
    """One DSKD student's training loss: "pi" = per-pixel cosine (Eq. 2), "ca" = contextual affinity (Eq. 7)."""
    if kind == "pi":
        return multi_level_cosine_loss(teacher_features, student_features, mode)
    if kind == "ca":
        return contextual_affinity_loss(teacher_features, student_features, temperature)
    raise ValueError(f"student loss: expected one of {', '.join(STUDENT_LOSSES)}, got {kind!r}")

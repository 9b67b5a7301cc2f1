"""Feature-matching losses of the DCAM paper (§3.2–3.3) and STFPM's loss, each with a weight.

All take lists of teacher / student feature maps (B×C×H×W per level) and sum over levels k;
each term is averaged over the batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..head import EPS, level_sum
from .config import MSE_MODES


def global_batch_world() -> int:
    """Processes of a DDP run (1 without one): a training batch is split across them."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_padded(local: torch.Tensor, world: int) -> torch.Tensor:
    """Every process's 1-D values, concatenated (the last global batch may split unevenly: NaN-padded)."""
    size = torch.tensor([local.numel()], device=local.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.full((longest,), float("nan"), dtype=local.dtype, device=local.device)
    padded[:local.numel()] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat(gathered)


def hard_mean(values: torch.Tensor, quantile: float, world: int = 1) -> torch.Tensor:
    """Mean of the values at or above their `quantile` (EfficientAD's hard feature loss, §3.2); 0 = plain mean.

    world > 1 (a DDP training step, all processes calling): the quantile and the count are the global batch's,
    and each process's sum is divided by count / world, so the averaged gradients equal one process's.
    """
    if quantile <= 0.0:
        return values.mean()
    flat = values.flatten()
    if world == 1:
        threshold = torch.quantile(flat.detach().float(), quantile)
        return flat[flat >= threshold].mean()
    local = flat.detach().float()
    threshold = torch.nanquantile(_gather_padded(local, world), quantile)
    selected = flat >= threshold
    count = selected.sum().to(local.dtype)
    dist.all_reduce(count)
    return flat[selected].sum() / (count / world)


def channel_cosine_distance(teacher: torch.Tensor, student: torch.Tensor, hard_quantile: float = 0.0,
                            world: int = 1) -> torch.Tensor:
    """CD_channel for one level: 1/(HW) Σ_h Σ_w (1 − cos(f_t, f_s)), vectors along C (DCAM Eq. 3); with a hard
    quantile only the worst-matched positions of the batch are averaged."""
    cos = F.cosine_similarity(teacher, student, dim=1, eps=EPS)  # B×H×W
    return hard_mean(1.0 - cos, hard_quantile, world)


def spatial_cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """CD_spatial for one level: 1/D Σ_d (1 − cos(f_t^d, f_s^d)), vectors are each channel's H·W map (DCAM Eq. 4)."""
    cos = F.cosine_similarity(teacher.flatten(2), student.flatten(2), dim=2, eps=EPS)  # B×C
    return (1.0 - cos).mean()


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ φ(t) log(φ(t)/φ(s)) along `dim`, with φ = softmax along `dim`."""
    log_p_t = F.log_softmax(teacher_logits, dim=dim)
    log_p_s = F.log_softmax(student_logits, dim=dim)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=dim)


def channel_kl_divergence(teacher: torch.Tensor, student: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KLD_channel for one level: Σ_w Σ_h KL(φ_C(f_t) ‖ φ_C(f_s)), softmax over channels (DCAM Eq. 5).

    reduction="sum" sums over positions as the equation does; "mean" averages them.
    """
    per_position = _kl(teacher, student, dim=1)  # B×H×W
    per_image = per_position.flatten(1).sum(1) if reduction == "sum" else per_position.flatten(1).mean(1)
    return per_image.mean()


def spatial_kl_divergence(teacher: torch.Tensor, student: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KLD_spatial for one level: Σ_d KL(φ_HW(f_t^d) ‖ φ_HW(f_s^d)), softmax over H·W per channel (DCAM Eq. 6)."""
    per_channel = _kl(teacher.flatten(2), student.flatten(2), dim=2)  # B×C
    per_image = per_channel.sum(1) if reduction == "sum" else per_channel.mean(1)
    return per_image.mean()


def normalized_mse(teacher: torch.Tensor, student: torch.Tensor, hard_quantile: float = 0.0,
                   world: int = 1) -> torch.Tensor:
    """STFPM's loss for one level: 1/(2HW) Σ_h Σ_w ‖f̂_t − f̂_s‖², f̂ = f/‖f‖ along channels (STFPM Eq. 1)."""
    t = F.normalize(teacher, dim=1, eps=EPS)
    s = F.normalize(student, dim=1, eps=EPS)
    return hard_mean(0.5 * ((t - s) ** 2).sum(dim=1), hard_quantile, world)


def raw_mse(teacher: torch.Tensor, student: torch.Tensor, hard_quantile: float = 0.0, world: int = 1) -> torch.Tensor:
    """Plain MSE for one level: 1/(CHW) Σ (f_t − f_s)², no normalisation (DCAM Table 3's "only MSE", read as
    written: a per-position or per-channel attention scale does not cancel in it, unlike in STFPM's loss)."""
    return hard_mean(((teacher - student) ** 2).mean(dim=1), hard_quantile, world)


# --loss-mse-mode: what the MSE term is, in config.MSE_MODES' order.
MSE_FUNCTIONS = dict(zip(MSE_MODES, (normalized_mse, raw_mse), strict=True))


class FeatureMatchingLoss(nn.Module):
    """L = Σ_k [w_cc·CD_ch + w_cs·CD_sp + w_kc·KLD_ch + w_ks·KLD_sp + w_mse·MSE] (DCAM §3.2–3.3); MSE is
    STFPM's normalised one or the plain one (mse_mode).

    DCAM Table 6's best: 1·CD_ch + 0.5·KLD_sp."""

    def __init__(self, channel_cosine: float = 1.0, spatial_cosine: float = 0.0, channel_kl: float = 0.0,
                 spatial_kl: float = 0.5, mse: float = 0.0, kl_reduction: str = "sum",
                 hard_quantile: float = 0.0, mse_mode: str = "normalized") -> None:
        super().__init__()
        if mse_mode not in MSE_FUNCTIONS:
            raise ValueError(f"--loss-mse-mode: expected one of {', '.join(MSE_MODES)}, got {mse_mode!r}")
        self.mse = MSE_FUNCTIONS[mse_mode]
        self.weights = {"channel_cosine": channel_cosine, "spatial_cosine": spatial_cosine,
                        "channel_kl": channel_kl, "spatial_kl": spatial_kl, "mse": mse}
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("at least one loss weight must be > 0 (--loss-channel-cosine, --loss-spatial-kl, ...)")
        self.kl_reduction = kl_reduction
        self.hard_quantile = hard_quantile

    def _world(self) -> int:
        """DDP processes sharing this training batch; 1 in eval mode (validation runs on one process only)."""
        return global_batch_world() if self.training else 1

    def _term(self, name: str, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        if name == "channel_cosine":
            return channel_cosine_distance(teacher, student, self.hard_quantile, self._world())
        if name == "spatial_cosine":
            return spatial_cosine_distance(teacher, student)
        if name == "channel_kl":
            return channel_kl_divergence(teacher, student, self.kl_reduction)
        if name == "spatial_kl":
            return spatial_kl_divergence(teacher, student, self.kl_reduction)
        return self.mse(teacher, student, self.hard_quantile, self._world())

    def forward(self, teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        total = teacher_features[0].new_zeros(())
        parts: dict[str, float] = {}
        for name, weight in self.weights.items():
            if weight <= 0:
                continue
            term = level_sum(self._term(name, t.float(), s.float())
                             for t, s in zip(teacher_features, student_features))
            parts[name] = float(term.detach())
            total = total + weight * term
        return total, parts

"""The inference head shared by every method: per-level 1 − cos distance, bilinear upsampling to the
input size, sum over levels, optional Gaussian blur, image score = max of the map.

DCAM paper §4.3: Ω(I) = Σ_k Upsample(Ω^k(I)), Ω^k = 1 − cos(f_t^k, f_s^k) along channels.
Every step but the max is a per-pixel channel sum or linear in the level maps, so it is written as
products with constant operands — channel sums as a 1×1 convolution by ones, upsample + sum + blur as
one matrix product — which every engine runs far faster than its ReduceSum over channels or its
single-channel Resize, and the int8 quantisers still find the head by structure and keep it fp32
(export.head_scope).
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ_c x per pixel, B×C×h×w → B×1×h×w, as a 1×1 convolution with a constant all-ones kernel.

    Engines run a convolution in their native layout: onnxruntime's ReduceSum over channels is ~10× slower,
    and a matmul over the flattened map makes OpenVINO reorder its NHWC/blocked tensor first (+5 ms).
    """
    return F.conv2d(x, torch.ones(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device))


def level_sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ_k of one term per feature level (at least one), added left to right as sum() does, typed as a tensor."""
    return functools.reduce(operator.add, terms)


def cosine_distance_map(teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
    """1 − cos(f_t, f_s) along channels: B×C×h×w, B×C×h×w → B×1×h×w (DCAM Eq. CD_channel, per pixel)."""
    dot = channel_sum(teacher_features * student_features)
    norm_t = torch.sqrt(channel_sum(teacher_features * teacher_features) + EPS)
    norm_s = torch.sqrt(channel_sum(student_features * student_features) + EPS)
    return 1.0 - dot / (norm_t * norm_s)


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian, radius 4σ (kernel 2·⌊4σ + 0.5⌋ + 1, as anomalib / RD use)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """n_out×n_in matrix U with U·x = 1-D bilinear resize of x (align_corners=False, as F.interpolate / cv2)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    weight_hi = src - lo
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), lo), 1.0 - weight_hi)
    np.add.at(matrix, (np.arange(n_out), hi), weight_hi)
    return matrix


def gaussian_blur_matrix(n: int, sigma: float) -> np.ndarray:
    """n×n matrix G with G·x = 1-D Gaussian blur of x with reflect padding (scipy mode "mirror");
    the radius is clipped to n − 1 (reflection needs pad < n) and the clipped kernel renormalised."""
    kernel = gaussian_kernel_1d(sigma)
    full_radius = (kernel.size - 1) // 2
    radius = min(full_radius, n - 1)
    kernel = kernel[full_radius - radius: full_radius + radius + 1]
    kernel = kernel / kernel.sum()
    matrix = np.zeros((n, n))
    for offset, weight in zip(range(-radius, radius + 1), kernel):
        source = np.abs(np.arange(n) + offset)  # reflect at 0: −j → j
        source = np.where(source > n - 1, 2 * (n - 1) - source, source)  # reflect at n − 1
        np.add.at(matrix, (np.arange(n), source), weight)
    return matrix


def level_to_image_matrix(n_level: int, n_image: int, blur_sigma: float) -> np.ndarray:
    """One axis of "upsample a level map to the image, then blur": G·U (n_image×n_level), float64."""
    matrix = bilinear_matrix(n_image, n_level)
    return gaussian_blur_matrix(n_image, blur_sigma) @ matrix if blur_sigma > 0 else matrix


class DistanceHead(nn.Module):
    """Per-level distance maps → anomaly map at the input size and image score (max over pixels).

    blur(Σ_k up(Ω^k)) = Σ_k R_k Ω^k C_kᵀ with R_k = G_H U_k, C_k = G_W V_k (upsampling U, V and Gaussian
    blur G are linear per axis), computed as one product: [R_1 … R_K] · concat_k(Ω^k C_kᵀ).
    """

    level_weights: torch.Tensor  # a buffer, present only with weighted_levels (hasattr)

    def __init__(self, blur_sigma: float = 0.0, weighted_levels: int = 0, fusion: str = "sum") -> None:
        """fusion: "sum" (DCAM §4.3, RD) or "product" (STFPM); config.LEVEL_FUSIONS."""
        super().__init__()
        self.blur_sigma = float(blur_sigma)
        self.fusion = fusion
        self._matrices: dict[tuple, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        # w_k of Σ_k w_k·up(Ω^k) (--level-normalize); a buffer only when asked for: earlier checkpoints load strictly.
        if weighted_levels:
            self.register_buffer("level_weights", torch.ones(weighted_levels))

    def set_blur_sigma(self, blur_sigma: float) -> None:
        """Another σ for the same head (dcam-eval --blur-sigma); level weights are kept."""
        self.blur_sigma = float(blur_sigma)
        self._matrices.clear()

    @torch.no_grad()
    def fit_level_weights(self, distance_maps: Iterable[list[torch.Tensor]], low: float = 0.9,
                          high: float = 0.995, scale: Sequence[float] | None = None) -> None:
        """w_k = 1 / (q_high − q_low) of level k's distances on normal images (EfficientAD §3.4's quantile map
        normalisation; its offset q_low adds one constant to the summed map and is dropped): every level then
        contributes in units of its own normal spread, so one noisy level no longer drowns the others. ``scale``:
        a factor s_k per level on top (w_k = s_k / spread_k; --level-scale)."""
        per_level: list[list[torch.Tensor]] = []
        for maps in distance_maps:
            per_level = per_level or [[] for _ in maps]
            for values, level_map in zip(per_level, maps):
                values.append(level_map.detach().float().flatten().cpu())
        if len(per_level) != len(self.level_weights):
            raise ValueError(f"level weights: expected {len(self.level_weights)} levels, got {len(per_level)}")
        scale = [1.0] * len(per_level) if scale is None else list(scale)
        if len(scale) != len(per_level):
            raise ValueError(f"level scale: expected {len(per_level)} factors, got {len(scale)}")
        weights = []
        for values, factor in zip(per_level, scale):
            quantiles = torch.quantile(torch.cat(values)[:16_000_000], torch.tensor([low, high]))
            spread = float(quantiles[1] - quantiles[0])
            weights.append(factor / spread if spread > 1e-6 else factor)  # a flat level has no scale to normalise
        self.level_weights.copy_(torch.tensor(weights, dtype=self.level_weights.dtype))

    def matrices(self, level_sizes: list[tuple[int, int]], output_size: Sequence[int],
                 dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """([R_1 … R_K] as H×Σh_k, [C_kᵀ as w_k×W]), cached per level sizes / output size / dtype / device."""
        height, width = (int(v) for v in output_size)
        key = (tuple(level_sizes), height, width, dtype, device)
        if key not in self._matrices:
            rows = np.concatenate([level_to_image_matrix(h, height, self.blur_sigma) for h, _ in level_sizes], 1)
            columns = [level_to_image_matrix(w, width, self.blur_sigma).T for _, w in level_sizes]
            self._matrices[key] = (torch.tensor(rows, dtype=dtype, device=device),
                                   [torch.tensor(c, dtype=dtype, device=device) for c in columns])
        return self._matrices[key]

    def product_matrices(self, level_sizes: list[tuple[int, int]], output_size: Sequence[int], dtype: torch.dtype,
                         device: torch.device) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                        tuple[torch.Tensor, ...]]:
        """([(U_k, V_kᵀ)] bilinear per level, (G_H, G_Wᵀ) or () without blur) for the product fusion, cached."""
        height, width = (int(v) for v in output_size)
        key = ("product", tuple(level_sizes), height, width, dtype, device)
        if key not in self._matrices:
            def tensor(matrix: np.ndarray) -> torch.Tensor:
                return torch.tensor(matrix, dtype=dtype, device=device)
            upsample = [(tensor(bilinear_matrix(height, h)), tensor(bilinear_matrix(width, w).T))
                        for h, w in level_sizes]
            blur = ((tensor(gaussian_blur_matrix(height, self.blur_sigma)),
                     tensor(gaussian_blur_matrix(width, self.blur_sigma).T)) if self.blur_sigma > 0 else ())
            self._matrices[key] = (upsample, blur)  # type: ignore[assignment]
        return self._matrices[key]  # type: ignore[return-value]

    def forward(self, distance_maps: list[torch.Tensor],
                output_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fusion == "product":
            return self._product(distance_maps, output_size)
        sizes = [(int(d.shape[-2]), int(d.shape[-1])) for d in distance_maps]
        rows, columns = self.matrices(sizes, output_size, distance_maps[0].dtype, distance_maps[0].device)
        if hasattr(self, "level_weights"):  # w_k·C_kᵀ: constants the exporters fold, no extra op per frame
            columns = [c * w.to(c.dtype) for c, w in zip(columns, self.level_weights)]
        stacked = torch.cat([torch.matmul(d, c) for d, c in zip(distance_maps, columns)], dim=-2)
        anomaly_map = torch.matmul(rows, stacked)
        score = torch.amax(anomaly_map, dim=(1, 2, 3))
        return anomaly_map, score

    def _product(self, distance_maps: list[torch.Tensor],
                 output_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """STFPM's fusion (Wang et al. 2021, §3): Ω = Π_k up(Ω^k), then the optional blur. Level weights would
        only scale the product by one constant, so they are not applied."""
        sizes = [(int(d.shape[-2]), int(d.shape[-1])) for d in distance_maps]
        upsample, blur = self.product_matrices(sizes, output_size, distance_maps[0].dtype, distance_maps[0].device)
        anomaly_map = functools.reduce(operator.mul, (torch.matmul(torch.matmul(u, d), v)
                                                      for d, (u, v) in zip(distance_maps, upsample)))
        if blur:
            anomaly_map = torch.matmul(torch.matmul(blur[0], anomaly_map), blur[1])
        return anomaly_map, torch.amax(anomaly_map, dim=(1, 2, 3))


def level_cosine_distances(teacher_features: list[torch.Tensor],
                           student_features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Ω^k = 1 − cos(f_t^k, f_s^k) per level, at each level's own resolution."""
    return [cosine_distance_map(t, s) for t, s in zip(teacher_features, student_features)]


def pyramid_cosine_head(head: DistanceHead, teacher_features: list[torch.Tensor],
                        student_features: list[torch.Tensor], output_size: Sequence[int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_k Upsample(1 − cos(f_t^k, f_s^k)) then blur/max: the anomaly map of every method here.

    ``output_size``: (H, W), e.g. the input images' ``shape[-2:]``."""
    return head(level_cosine_distances(teacher_features, student_features), output_size)

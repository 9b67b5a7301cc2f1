"""The one fused graph every format is exported from: teacher + student + distance head, BatchNorm folded.

``DistillationModel.inference_model()`` already drops the training-only parts (DCAM attention, RD's
bottleneck fusion stays because it is part of inference); this module wraps it into
``forward(x normalised 1×3×S×S) -> (anomaly_map 1×1×S×S, score 1)`` (DCAM paper §4.3:
Ω(I) = Σ_k Upsample(1 − cos(f_t^k, f_s^k)), score = max Ω), folds every Conv→BatchNorm pair
(BN(conv(x)) = conv'(x) with w' = w·γ/σ, b' = (b − μ)·γ/σ + β; RD decoders: ConvTranspose→BN too),
turns any other BatchNorm into its fixed affine x·γ/σ + (β − μγ/σ) and checks the result numerically.
Works for any nn.Module with that forward contract, not only the methods in train.models.
"""
from __future__ import annotations

import copy
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edge.preprocess import PreprocessSpec

from .config import ExportError

# Folding only re-associates float arithmetic: outputs must agree to float32 round-off.
FOLD_RTOL, FOLD_ATOL = 1e-4, 1e-5


@dataclass
class FusedGraph:
    """The exportable module plus what the manifest needs to describe it."""

    module: nn.Module
    spec: PreprocessSpec
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def example_input(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """A seeded N(0, 1) tensor shaped like a normalised input (what the exporters trace with)."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.image_size, self.image_size, generator=g)

    @torch.no_grad()
    def run(self, x: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """The torch reference: float32 N×3×S×S → (maps N×1×S×S, scores N), fp32 on CPU."""
        maps, scores = [], []
        for i in range(0, len(x), batch_size):
            m, s = self.module(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)))
            maps.append(m.float().numpy())
            scores.append(s.float().reshape(-1).numpy())
        return np.concatenate(maps), np.concatenate(scores)


class MapAndScore(nn.Module):
    """Pins the graph interface: one input, outputs (anomaly_map float32 B×1×S×S, score float32 B)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map, score = self.inner(image)
        return anomaly_map.float(), score.float().reshape(image.shape[0])


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


@torch.no_grad()
def conv_bn_pairs(module: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN's input is exactly that conv's output, found by running
    ``example`` through the module with hooks — by data flow, not by naming conventions."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (conv name, output kept alive)
    calls: Counter[str] = Counter()
    sources: dict[str, set[str | None]] = defaultdict(set)
    hooks = []

    def conv_hook(name: str):
        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            calls[name] += 1
            produced[id(out)] = (name, out)
        return hook

    def bn_hook(name: str):
        def hook(_mod: nn.Module, args: tuple) -> None:
            calls[name] += 1
            src = produced.get(id(args[0]))
            sources[name].add(src[0] if src is not None and src[1] is args[0] else None)
        return hook

    for name, mod in module.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(mod.register_forward_hook(conv_hook(name)))
        elif isinstance(mod, nn.BatchNorm2d):
            hooks.append(mod.register_forward_pre_hook(bn_hook(name)))
    try:
        module(example)
    finally:
        for h in hooks:
            h.remove()
    single_source = {bn: next(iter(src)) for bn, src in sources.items() if len(src) == 1}
    pairs = [(conv, bn) for bn, conv in single_source.items() if conv is not None]
    conv_uses = Counter(conv for conv, _ in pairs)
    # A conv (or BN) called more than once is shared; folding would change its other uses.
    return [(c, b) for c, b in pairs if calls[c] == 1 and calls[b] == 1 and conv_uses[c] == 1]


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm that follows no conv, as the per-channel affine it computes: x·a + b."""

    scale: torch.Tensor  # buffers (register_buffer)
    shift: torch.Tensor

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        running_mean, running_var = bn.running_mean, bn.running_var
        if running_mean is None or running_var is None:
            raise ExportError("a BatchNorm without running statistics has no fixed per-channel affine to export")
        scale = (bn.weight if bn.affine else torch.ones_like(running_var)) / torch.sqrt(running_var + bn.eps)
        shift = (bn.bias if bn.affine else torch.zeros_like(running_mean)) - running_mean * scale
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@torch.no_grad()
def fold_batchnorm(module: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int, int]:
    """A copy of ``module`` with every (Conv|ConvTranspose)→BatchNorm pair folded into the conv and any other
    BatchNorm turned into a fixed per-channel affine; returns (copy, #folded, #affine).

    Raises ExportError if the copy does not reproduce the original outputs (e.g. a conv output that is
    also used without its BatchNorm).
    """
    folded = copy.deepcopy(module).eval()
    pairs = conv_bn_pairs(folded, example)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        assert isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d)  # as hooked
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d)))
        _set_submodule(folded, bn_name, nn.Identity())
    leftovers = remaining_batchnorms(folded)
    for bn_name in leftovers:
        bn = folded.get_submodule(bn_name)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)  # what remaining_batchnorms lists
        _set_submodule(folded, bn_name, ChannelAffine(bn))
    ref = module.eval()(example)
    out = folded(example)
    for name, a, b in zip(("anomaly_map", "score"), ref, out):
        if not torch.allclose(a, b, rtol=FOLD_RTOL, atol=FOLD_ATOL * max(1.0, float(a.abs().max()))):
            raise ExportError(f"BatchNorm folding changed the {name} (max |Δ| {float((a - b).abs().max()):.3g}); "
                              f"the model uses a conv output both with and without its BatchNorm")
    return folded, len(pairs), len(leftovers)


def remaining_batchnorms(module: nn.Module) -> list[str]:
    """Names of BatchNorm modules still active in the module (should be none after folding)."""
    return [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def count_gmacs(module: nn.Module, example: torch.Tensor) -> float:
    """Multiply-accumulates of the (transposed) convolutions and linear layers for one image, in 10⁹."""
    total = 0
    hooks = []

    def hook(mod: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.ConvTranspose2d):  # every input element meets C_out/groups · k_h · k_w weights
            x = inputs[0]
            total += x.numel() // x.shape[0] * (mod.out_channels // mod.groups) * int(np.prod(mod.kernel_size))
            return
        if isinstance(mod, nn.Conv2d):
            per_output = (mod.in_channels // mod.groups) * int(np.prod(mod.kernel_size))
        elif isinstance(mod, nn.Linear):
            per_output = mod.in_features
        else:
            return
        total += per_output * out.numel() // out.shape[0]

    for mod in module.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook))
    try:
        module(example)
    finally:
        for h in hooks:
            h.remove()
    return total / 1e9


def fuse_module(inference_module: nn.Module, spec: PreprocessSpec, info: dict[str, Any] | None = None,
                seed: int = 0) -> FusedGraph:
    """Wrap, fold BatchNorm, freeze and validate any ``forward(x) -> (map, score)`` module."""
    wrapped = MapAndScore(inference_module).eval()
    graph = FusedGraph(wrapped, spec, dict(info or {}))
    example = graph.example_input(seed=seed)
    with torch.no_grad():
        try:
            anomaly_map, score = wrapped(example)
        except Exception as exc:
            raise ExportError(f"the inference model failed on a 1×3×{spec.image_size}×{spec.image_size} input "
                              f"({type(exc).__name__}: {exc})") from None
    s = spec.image_size
    if tuple(anomaly_map.shape) != (1, 1, s, s) or tuple(score.shape) != (1,):
        raise ExportError(f"the inference model returned map {tuple(anomaly_map.shape)} and score "
                          f"{tuple(score.shape)}; "
                          f"expected (1, 1, {s}, {s}) and (1,)")
    folded, n_folded, n_affine = fold_batchnorm(wrapped, example)
    for p in folded.parameters():
        p.requires_grad_(False)
    graph.module = folded
    graph.info.update(batchnorm_folded=n_folded, batchnorm_as_affine=n_affine,
                      gmacs=round(count_gmacs(folded, example), 4))
    return graph


def _categories(cfg: Any) -> list[str]:
    """The run's categories, resolved against its dataset when that is reachable."""
    try:
        from train.data.mvtec import parse_categories
        return list(parse_categories(cfg.categories, cfg.data))
    except (ValueError, OSError):
        return [c.strip() for c in str(cfg.categories).split(",") if c.strip() and c.strip() != "all"]


def load_fused_graph(run_dir: str | Path, seed: int = 0) -> tuple[FusedGraph, Any]:
    """Fused graph of a dcam-train run directory and its TrainConfig (ExportError for a bad run)."""
    from train.runs import RunError, load_run, preprocess_spec

    try:
        model, cfg = load_run(run_dir)
    except RunError as exc:
        raise ExportError(str(exc)) from None
    m = cfg.model
    dropped = ["attention"] if getattr(m, "attention", "none") != "none" and not m.attention_at_inference else []
    info = {"method": m.method, "backbone": m.backbone, "categories": _categories(cfg),
            "blur_sigma": float(m.blur_sigma), "training_only_parts_dropped": dropped,
            "run": str(Path(run_dir).resolve())}
    return fuse_module(model.inference_model(), preprocess_spec(cfg), info, seed=seed), cfg

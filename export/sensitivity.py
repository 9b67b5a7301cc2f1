"""``python -m export.sensitivity``: which layers lose the accuracy when the graph is quantised to int8.

    python -m export.sensitivity --run runs/dcam --out sens/            # sens/sensitivity.json, .png

Engine-independent simulation of the int8 recipe every quantiser here applies to the backbones: weights
per output channel, symmetric (scale max|w|/127), activations per tensor, asymmetric uint8 over the min/max the
calibration normals reach. One layer at a time is fake-quantised (weights and its input) while the rest stays
fp32, and on the validation normals the anomaly map's relative error ‖m_q − m‖/‖m‖ and the Spearman correlation
of image scores with fp32 are measured; then all layers at once. The distance head is never quantised (every
exporter keeps it fp32). Layers are tagged by network (teacher / student / other) and kind (depthwise, 1×1,
k×k), so a plot shows whether depthwise convolutions, a network or a level dominate the loss.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge.accuracy import spearman
from edge.cliconfig import ConfigCli, option, run_cli
from edge.jsonsafe import write_json


@dataclass
class SensitivityConfig:
    """export.sensitivity options."""

    run: str = option("", "dcam-train run directory")
    out: str = option("sensitivity", "output directory (sensitivity.json, sensitivity.png)")
    calib_images: int = option(64, "training normals that set the activation ranges")
    val_images: int = option(48, "validation normals the errors are measured on")
    batch_size: int = option(8, "images per forward pass")

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("--run: expected a dcam-train run directory")
        if min(self.calib_images, self.val_images, self.batch_size) < 1:
            raise ValueError("--calib-images, --val-images and --batch-size must be positive")


def layer_kind(conv: nn.Conv2d) -> str:
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "depthwise"
    return "1x1" if conv.kernel_size == (1, 1) else f"{conv.kernel_size[0]}x{conv.kernel_size[1]}"


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8: round(w / s) · s with s = max|w| / 127 per channel."""
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True).clamp_min(1e-12) / 127.0
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


def fake_quantize_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-tensor asymmetric uint8 over [low, high] (extended to hold 0, as the quantisers do)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero_point = round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


class LayerQuantizer:
    """Activation ranges of every Conv2d's input (from calibration) and a switch to fake-quantise chosen layers."""

    def __init__(self, model: nn.Module) -> None:
        self.convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.ranges: dict[str, list[float]] = {}

    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
        def hook(name: str) -> Any:  # a forward pre-hook recording this layer's input range
            def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                x = inputs[0]
                low, high = float(x.min()), float(x.max())
                old = self.ranges.get(name)
                self.ranges[name] = [min(low, old[0]), max(high, old[1])] if old else [low, high]
            return record
        handles = [m.register_forward_pre_hook(hook(name)) for name, m in self.convs.items()]
        try:
            for images in batches:
                model(images)
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def quantized(self, names: Sequence[str]) -> Iterator[None]:
        """Inside: the named layers run with int8-rounded weights and inputs."""
        saved, handles = {}, []
        for name in names:
            conv = self.convs[name]
            saved[name] = conv.weight.data.clone()
            conv.weight.data = fake_quantize_weight(conv.weight.data)
            low, high = self.ranges[name]
            handles.append(conv.register_forward_pre_hook(
                lambda _m, inputs, low=low, high=high: (fake_quantize_activation(inputs[0], low, high),)))
        try:
            yield
        finally:
            for name, weight in saved.items():
                self.convs[name].weight.data = weight
            for handle in handles:
                handle.remove()


@torch.no_grad()
def _outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = zip(*(model(images) for images in batches))
    return torch.cat(maps).numpy(), torch.cat(scores).numpy()


def network_of(name: str) -> str:
    return next((part for part in ("teacher", "student") if name.startswith(part)), "other")


def measure(model: nn.Module, calib: Sequence[torch.Tensor], val: Sequence[torch.Tensor],
            progress: bool = True) -> dict[str, Any]:
    """Per layer and for all layers: relative map error and score Spearman vs fp32 on ``val``."""
    quantizer = LayerQuantizer(model)
    quantizer.calibrate(model, calib)
    ref_maps, ref_scores = _outputs(model, val)
    norm = float(np.linalg.norm(ref_maps)) or 1.0

    def errors(names: Sequence[str]) -> dict[str, float]:
        with quantizer.quantized(names):
            maps, scores = _outputs(model, val)
        return {"map_error": float(np.linalg.norm(maps - ref_maps)) / norm,
                "score_spearman": spearman(scores, ref_scores)}

    layers = []
    for name in tqdm(list(quantizer.convs), desc="layers", disable=not progress, file=sys.stderr):
        conv = quantizer.convs[name]
        low, high = quantizer.ranges[name]
        layers.append({"layer": name, "network": network_of(name), "kind": layer_kind(conv),
                       "input_range": [low, high], **errors([name])})
    return {"layers": layers, "all_layers": errors(list(quantizer.convs)),
            "by_kind": {kind: float(np.mean([r["map_error"] for r in layers if r["kind"] == kind]))
                        for kind in sorted({r["kind"] for r in layers})}}


def plot(report: dict[str, Any], path: Path, top: int = 40) -> None:
    """The `top` most sensitive layers as bars (map error), coloured by kind, hatched for the student."""
    from matplotlib.figure import Figure

    layers = sorted(report["layers"], key=lambda r: r["map_error"], reverse=True)[:top]
    colours = {"depthwise": "tab:red", "1x1": "tab:blue"}
    figure = Figure(figsize=(12, 5), layout="constrained")
    ax = figure.subplots()
    bars = ax.bar(range(len(layers)), [r["map_error"] for r in layers],
                  color=[colours.get(r["kind"], "tab:green") for r in layers])
    for bar, r in zip(bars, layers):
        if r["network"] == "student":
            bar.set_hatch("//")
    ax.set_xticks(range(len(layers)), [r["layer"].replace("._blocks.", ".b") for r in layers], rotation=80,
                  fontsize=6)
    ax.set_ylabel("relative anomaly-map error, this layer alone int8")
    everything = report["all_layers"]
    ax.set_title(f"int8 sensitivity per layer (all layers int8: map error {everything['map_error']:.3f}, "
                 f"score ρ {everything['score_spearman']:.3f}); red depthwise, blue 1×1, green k×k; "
                 f"hatched = student")
    ax.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=110)


def run_sensitivity(cfg: SensitivityConfig) -> dict[str, Any]:
    from train.data import ImageDataset, training_split
    from train.runs import load_run, preprocess_spec

    model, train_cfg = load_run(cfg.run)
    inference = model.inference_model().eval()
    categories = train_cfg.categories
    train_samples, val_samples = training_split(train_cfg.data, categories, train_cfg.val_fraction, train_cfg.seed)
    spec = preprocess_spec(train_cfg)
    rng = np.random.default_rng(0)

    def batches(samples: Sequence[Any], n: int) -> list[torch.Tensor]:
        chosen = [samples[i] for i in sorted(rng.choice(len(samples), min(n, len(samples)), replace=False))]
        data = ImageDataset(chosen, spec)
        images = torch.stack([data[i]["image"] for i in range(len(data))])
        return list(images.split(cfg.batch_size))

    report = measure(inference, batches(train_samples, cfg.calib_images), batches(val_samples, cfg.val_images))
    report["run"] = cfg.run
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sensitivity.json", report, indent=1)
    plot(report, out / "sensitivity.png")
    return report


CLI = ConfigCli(SensitivityConfig, "export.sensitivity", __doc__.split("\n\n")[0])


def _main(argv: Sequence[str] | None) -> int:
    report = run_sensitivity(CLI.parse(argv))
    worst = sorted(report["layers"], key=lambda r: r["map_error"], reverse=True)[:10]
    for r in worst:
        print(f"{r['layer']:<48} {r['network']:<8} {r['kind']:<10} map error {r['map_error']:.4f}  "
              f"ρ {r['score_spearman']:.3f}")
    everything = report["all_layers"]
    print(f"all layers: map error {everything['map_error']:.4f}, ρ {everything['score_spearman']:.3f}")
    print("mean map error by kind: " + ", ".join(f"{k} {v:.4f}" for k, v in report["by_kind"].items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())

"""``python -m export.sensitivity``: which layers lose the accuracy when the graph is quantised to int8.

    python -m export.sensitivity --run runs/dcam --out sens/            # sens/sensitivity.json, .png

Engine-independent simulation of the int8 recipe every quantiser here applies to the backbones: weights
per output channel, symmetric (scale max|w|/127, or /63 for dcam-export's default 7-bit weight range),
activations per tensor, asymmetric uint8 over the min/max the
calibration normals reach. One layer at a time is fake-quantised (weights and its input) while the rest stays
fp32, and on the validation normals the anomaly map's relative error ‖m_q − m‖/‖m‖ and the Spearman correlation
of image scores with fp32 are measured; then all layers at once, and the head's inputs alone (the tapped
features rounded to uint8: the head computes in fp32 everywhere, but the quantisers hand it int8
features). Layers are tagged by network (teacher / student / other) and kind (depthwise, 1×1, k×k), so a
plot shows whether depthwise convolutions, a network or a level dominate the loss.
"""
from __future__ import annotations

import contextlib
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
from edge.formats import DEFAULT_INT8_WEIGHT_BITS, INT8_WEIGHT_BITS
from edge.jsonsafe import write_json


@dataclass
class SensitivityConfig:
    """export.sensitivity options."""

    run: str = option("", "dcam-train run directory")
    out: str = option("sensitivity", "output directory (sensitivity.json, sensitivity.png)")
    calib_images: int = option(64, "training normals that set the activation ranges")
    val_images: int = option(48, "validation normals the errors are measured on")
    batch_size: int = option(8, "images per forward pass")
    weight_bits: int = option(DEFAULT_INT8_WEIGHT_BITS, "weight range simulated: 7 (dcam-export's default) or 8",
                              choices=INT8_WEIGHT_BITS.choices)

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("--run: expected a dcam-train run directory")
        if min(self.calib_images, self.val_images, self.batch_size) < 1:
            raise ValueError("--calib-images, --val-images and --batch-size must be positive")


def layer_kind(conv: nn.Conv2d) -> str:
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "depthwise"
    return "1x1" if conv.kernel_size == (1, 1) else f"{conv.kernel_size[0]}x{conv.kernel_size[1]}"


def fake_quantize_weight(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-output-channel symmetric: round(w / s) · s with s = max|w| / q, q = 2^(bits−1) − 1 (127; 63 for 7 bits)."""
    q = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True).clamp_min(1e-12) / q
    return torch.clamp(torch.round(weight / scale), -q, q) * scale


def fake_quantize_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-tensor asymmetric uint8 over [low, high] (extended to hold 0, as the quantisers do)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero_point = round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


class LayerQuantizer:
    """Activation ranges of every Conv2d's input (from calibration) and a switch to fake-quantise chosen layers."""

    def __init__(self, model: nn.Module, weight_bits: int = 8) -> None:
        from train.models.feature_transform import MatchedFeatureTransform
        self.weight_bits = weight_bits
        self.convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.ranges: dict[str, list[float]] = {}
        # The head's inputs: the tapped features entering the teacher/student feature transform (called once
        # per network and forward, teacher first), each level with its own range as the quantisers give it.
        self.transforms = [m for m in model.modules() if isinstance(m, MatchedFeatureTransform)]
        self.tap_ranges: dict[tuple[int, int], list[float]] = {}
        self._calls = 0

    @contextmanager
    def _tap_hooks(self, model: nn.Module, on_features: Any) -> Iterator[None]:
        def reset(*_: Any) -> None:
            self._calls = 0

        def pre(_module: nn.Module, inputs: tuple[Any, ...]) -> Any:
            call, self._calls = self._calls, self._calls + 1
            return (on_features(call, list(inputs[0])),)
        handles = [model.register_forward_pre_hook(reset)] + [t.register_forward_pre_hook(pre)
                                                              for t in self.transforms]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def calibrate_taps(self, model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
        def record(call: int, features: list[torch.Tensor]) -> list[torch.Tensor]:
            for level, f in enumerate(features):
                low, high = float(f.min()), float(f.max())
                old = self.tap_ranges.get((call, level))
                self.tap_ranges[(call, level)] = [min(low, old[0]), max(high, old[1])] if old else [low, high]
            return features
        with self._tap_hooks(model, record):
            for images in batches:
                model(images)

    @contextmanager
    def quantized_taps(self, model: nn.Module) -> Iterator[None]:
        """Inside: the head's input features are uint8-rounded over their calibrated ranges."""
        def quantize(call: int, features: list[torch.Tensor]) -> list[torch.Tensor]:
            return [fake_quantize_activation(f, *self.tap_ranges[(call, level)]) for level, f in enumerate(features)]
        with self._tap_hooks(model, quantize):
            yield

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
            conv.weight.data = fake_quantize_weight(conv.weight.data, self.weight_bits)
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
    parts = name.split(".")  # the fused graph nests the model (inner.model.teacher...)
    return next((part for part in ("teacher", "student") if part in parts), "other")


class SensitivityProbe:
    """Fake-quantise chosen layers of a (map, score) model and measure the damage on validation normals."""

    def __init__(self, model: nn.Module, calib: Sequence[torch.Tensor], val: Sequence[torch.Tensor],
                 weight_bits: int = 8) -> None:
        self.model, self.val = model, val
        self.quantizer = LayerQuantizer(model, weight_bits)
        self.quantizer.calibrate(model, calib)
        self.calib = calib  # tap ranges are calibrated on first use (errors(taps=True))
        self.ref_maps, self.ref_scores = _outputs(model, val)
        self.norm = float(np.linalg.norm(self.ref_maps)) or 1.0

    @property
    def layer_names(self) -> list[str]:
        return list(self.quantizer.convs)

    def errors(self, names: Sequence[str], taps: bool = False) -> dict[str, float]:
        """Relative map error ‖m_q − m‖/‖m‖ and score Spearman vs fp32 with ``names`` int8 (and, with ``taps``,
        the head's input features)."""
        if taps and not self.quantizer.tap_ranges:
            self.quantizer.calibrate_taps(self.model, self.calib)
        with self.quantizer.quantized(names), (self.quantizer.quantized_taps(self.model) if taps
                                               else contextlib.nullcontext()):
            maps, scores = _outputs(self.model, self.val)
        return {"map_error": float(np.linalg.norm(maps - self.ref_maps)) / self.norm,
                "score_spearman": spearman(scores, self.ref_scores)}

    def per_layer(self, progress: bool = True) -> list[dict[str, Any]]:
        """Each layer alone int8 (the rest fp32), in graph order."""
        layers = []
        for name in tqdm(self.layer_names, desc="int8 sensitivity", unit="layer", disable=not progress,
                         file=sys.stderr, leave=False):
            conv = self.quantizer.convs[name]
            layers.append({"layer": name, "network": network_of(name), "kind": layer_kind(conv),
                           "input_range": self.quantizer.ranges[name], **self.errors([name])})
        return layers


def measure(model: nn.Module, calib: Sequence[torch.Tensor], val: Sequence[torch.Tensor],
            progress: bool = True, weight_bits: int = 8) -> dict[str, Any]:
    """Per layer and for all layers: relative map error and score Spearman vs fp32 on ``val``."""
    probe = SensitivityProbe(model, calib, val, weight_bits)
    layers = probe.per_layer(progress)
    taps = probe.errors([], taps=True) if probe.quantizer.transforms else None
    return {"layers": layers, "all_layers": probe.errors(probe.layer_names), "head_inputs": taps,
            "by_kind": {kind: float(np.mean([r["map_error"] for r in layers if r["kind"] == kind]))
                        for kind in sorted({r["kind"] for r in layers})}}


def choose_fp32_layers(model: nn.Module, calib: Sequence[torch.Tensor], val: Sequence[torch.Tensor],
                       target_spearman: float, counts: Sequence[int], progress: bool = True,
                       weight_bits: int = 8) -> dict[str, Any]:
    """The fewest most-sensitive convolutions to keep fp32 so the simulated int8 graph reaches
    ``target_spearman`` (score correlation with fp32 on ``val``).

    Layers are ranked by their own map error (one at a time int8); then the top k for each k of ``counts``
    (ascending) are kept fp32 with everything else int8, until the target is met. If no k meets it, the k with
    the highest simulated correlation is chosen. Returns {"layers": [{layer, network, kind, map_error,
    score_spearman}] of the kept ones, "simulated": [{kept, map_error, score_spearman}], "target_spearman",
    "target_met"}.
    """
    def rho(t: dict[str, Any]) -> float:  # constant scores (a wrecked map) correlate with nothing
        return float(np.nan_to_num(t["score_spearman"], nan=-1.0))

    probe = SensitivityProbe(model, calib, val, weight_bits)
    ranked = sorted(probe.per_layer(progress), key=lambda r: r["map_error"], reverse=True)
    names = [r["layer"] for r in ranked]
    tried: list[dict[str, Any]] = []
    for k in sorted({min(k, len(names)) for k in counts}):
        tried.append({"kept": k, **probe.errors(names[k:])})
        if rho(tried[-1]) >= target_spearman:
            break
    met = [t for t in tried if rho(t) >= target_spearman]
    chosen = met[0] if met else max(tried, key=lambda t: (rho(t), -t["kept"]))
    return {"layers": ranked[:chosen["kept"]], "simulated": tried, "target_spearman": target_spearman,
            "target_met": bool(met)}


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

    report = measure(inference, batches(train_samples, cfg.calib_images), batches(val_samples, cfg.val_images),
                     weight_bits=cfg.weight_bits)
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
    if report["head_inputs"] is not None:
        taps = report["head_inputs"]
        print(f"head inputs (tapped features) uint8 alone: map error {taps['map_error']:.4f}, "
              f"ρ {taps['score_spearman']:.3f}")
    print("mean map error by kind: " + ", ".join(f"{k} {v:.4f}" for k, v in report["by_kind"].items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())

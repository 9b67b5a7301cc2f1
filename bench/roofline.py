"""A per-file roofline: the fastest a graph can run on this CPU, layer by layer (Williams et al., CACM 2009).

A GEMM peak is the wrong ceiling for a depthwise-heavy graph: a 3×3 depthwise convolution does 9 MACs per
output element, so it is limited by moving its activations, not by multiplying. Per layer the bound is the
larger of its compute time at the measured GEMM peak of the file's precision and its memory time at the
measured copy bandwidth:

    t_l = max(MACs_l / peak, bytes_l / bandwidth),  bytes_l = (activations in + out + weights) · bytes/element

(1 byte per element for int8 files, 4 for fp32), and the file's bound is Σ_l t_l over its convolutions and
matrix products (the fp32 head's elementwise ops are O(C·H·W) and left out, as in bench.macs). A file's
"% of roofline" = bound / measured median: 100 % means every layer runs at the machine's limit.

The bandwidth is a copy micro-benchmark at a cache-sized working set (``STREAM_MIB``): these models'
activations (≤ a few MiB per layer at 256 px) live in L2/L3, so DRAM bandwidth would understate what a
layer can reach. Layer shapes come from the model's ONNX file (the fp32 sibling for .xml/.tflite files:
every format of one model is the same graph).
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.macs import MacsUnavailable, _onnx_node_macs, _siblings, onnx_static_shapes
from edge.formats import format_for_path

STREAM_MIB = 8  # copy working set: larger than L2, inside L3 on the CPUs this targets
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class LayerCost:
    """One convolution / matrix product: its MACs and the elements it must move."""

    name: str
    op: str
    macs: int
    activation_elements: int  # inputs that are not weights + outputs
    weight_elements: int


def onnx_layer_costs(path: str | Path) -> list[LayerCost]:
    """The convolutions and matrix products of an ONNX graph with their MACs and element counts."""
    g, shape = onnx_static_shapes(path, "no roofline")
    weights = {t.name: math.prod(t.dims) for t in g.initializer}
    costs = []
    for i, node in enumerate(g.node):
        macs = _onnx_node_macs(node, shape)
        if macs == 0:
            continue
        tensors = [t for t in list(node.input) + list(node.output) if t]
        activations = sum(math.prod(shape(t)) for t in tensors if t not in weights)
        costs.append(LayerCost(node.name or f"#{i}", node.op_type, macs, activations,
                               sum(weights[t] for t in node.input if t in weights)))
    return costs


def layer_shape_source(path: str | Path) -> Path:
    """The ONNX file a model file's layer shapes are read from: itself, or its ONNX sibling (same graph)."""
    path = Path(path)
    if format_for_path(path, MacsUnavailable).name == "onnx":
        return path
    for sibling in _siblings(path):
        if format_for_path(sibling, MacsUnavailable).name == "onnx":
            return sibling
    raise MacsUnavailable(f"{path}: no .onnx file of the same model beside it to read layer shapes from")


def model_layer_costs(path: str | Path) -> list[LayerCost]:
    """Layer costs of a model file of any format, from its own ONNX graph or its ONNX sibling."""
    return onnx_layer_costs(layer_shape_source(path))


def roofline_ms(costs: Sequence[LayerCost], precision: str, peak_gmac_per_s: float,
                bandwidth_gb_per_s: float) -> float:
    """Σ_l max(MACs_l / peak, bytes_l / bandwidth) in milliseconds (module docstring)."""
    if peak_gmac_per_s <= 0 or bandwidth_gb_per_s <= 0:
        raise ValueError("roofline: peak and bandwidth must be positive")
    width = BYTES_PER_ELEMENT[precision]
    total = 0.0
    for c in costs:
        compute = c.macs / (peak_gmac_per_s * 1e9)
        memory = (c.activation_elements + c.weight_elements) * width / (bandwidth_gb_per_s * 1e9)
        total += max(compute, memory)
    return total * 1e3


def measure_bandwidth(threads: int, mib: int = STREAM_MIB, runs: int = 30) -> float:
    """Copy bandwidth in GB/s (bytes read + written per second), the copy split over ``threads`` threads
    (numpy releases the GIL while copying); best of ``runs``."""
    if threads < 1 or mib < 1 or runs < 1:
        raise ValueError(f"bandwidth: threads, size and runs must be positive, got {threads}, {mib}, {runs}")
    n = mib * 2 ** 20 // 4
    src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def copy(chunk: tuple[int, int]) -> None:
        np.copyto(dst[chunk[0]:chunk[1]], src[chunk[0]:chunk[1]])

    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(runs + 2):  # two warm-up copies fault the pages in
            start = time.perf_counter()
            list(pool.map(copy, chunks))
            best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


__all__ = ["BYTES_PER_ELEMENT", "STREAM_MIB", "LayerCost", "layer_shape_source", "measure_bandwidth",
           "model_layer_costs", "onnx_layer_costs", "roofline_ms"]

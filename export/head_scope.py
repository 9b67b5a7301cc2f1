"""Locate the feature-distance head in an exported graph by structure, so int8 quantisers keep it fp32.

Quantising the head (1 − cos, upsample, sum, blur, max) wrecks the anomaly map once the student
matches the teacher: the distances are tiny differences of large numbers (toolchain facts: ONNX image
score correlation 0.53 whole-graph vs 0.96 with the head in fp32).  The head is found the same way in
ONNX, OpenVINO and TFLite graphs, without relying on node names:

1. roots: per-pixel channel reductions — a 1×1 convolution or matrix product by a constant all-ones
   vector (how the head writes Σ_c, train.models.head.channel_sum), or a Reduce op over one non-batch
   axis of a 4-D tensor or over axis 1 of B×C×(h·w); backbones reduce over space (pooling), not channels, and never
   multiply by a ones vector;
2. every node downstream of a root (sqrt, divide, 1 − ·, resize, sum over levels, blur conv, max);
3. every weight-free node all of whose consumers are head nodes (the t·s and t·t products and
   whatever elementwise op only feeds them), repeated to a fixed point.
Convolutions / matmuls upstream of the roots are the backbone and are what gets quantised.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ExportError

WeightKey = tuple[int, float, float]


def weight_fingerprint(weight: np.ndarray | None) -> WeightKey | None:
    """A layout-free identity of a weight tensor: (size, Σ|w|, Σw²) to 7 significant digits.

    The same convolution is an OIHW initializer in ONNX, a GroupConvolution constant in OpenVINO and an OHWI
    buffer in TFLite; sums do not depend on layout, so a torch layer is found in every format's graph by its
    weights (the fused graph's BatchNorm-folded values are what every converter writes).
    """
    if weight is None or weight.size < 2:
        return None
    w = np.asarray(weight, dtype=np.float64).ravel()
    return (int(w.size), float(f"{np.abs(w).sum():.7g}"), float(f"{np.square(w).sum():.7g}"))


def kept_layer_nodes(nodes: Iterable[GraphNode], keep: Mapping[str, WeightKey], where: str) -> set[str]:
    """Names of the graph nodes carrying the weights of the torch layers in ``keep`` (layer → fingerprint);
    ExportError naming ``where`` when a layer is not found (its fp32 choice would be silently lost)."""
    wanted = set(keep.values())
    found_keys: set[WeightKey] = set()
    found: set[str] = set()
    for n in nodes:
        if n.weight_key in wanted:
            found.add(n.name)
            found_keys.add(n.weight_key)
    missing = [layer for layer, key in keep.items() if key not in found_keys]
    if missing:
        raise ExportError(f"{where}: cannot find the layer(s) chosen to stay fp32 in the graph: {', '.join(missing)}")
    return found


def fp32_scope(nodes: Sequence[GraphNode], keep: Mapping[str, WeightKey] | None,
               where: str) -> tuple[set[str], set[str], dict[str, Any]]:
    """What an int8 quantiser must leave fp32: (head nodes, nodes of the ``keep`` layers, the manifest's
    ``fp32_layers_kept`` section)."""
    keep = keep or {}
    layers = kept_layer_nodes(nodes, keep, where)
    return find_head(nodes), layers, {"count": len(layers), "layers": sorted(keep)}


@dataclass(frozen=True)
class GraphNode:
    """Format-neutral view of one op: its tensors, whether it carries weights, whether it is a root."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weighted: bool = False
    channel_reduction: bool = False
    weight_key: WeightKey | None = None  # weight_fingerprint of its weight constant (weighted ops)


def is_single_axis_reduction(axes: Sequence[int] | np.ndarray | None, input_rank: int | None) -> bool:
    """True for a reduction over exactly one non-batch axis of a 4-D tensor (the per-pixel Σ over channels),
    or over axis 1 of a B×C×(h·w) tensor (the TFLite converter rewrites channel_sum's 1ᵀ·X into that SUM).

    ``axes``: a list or the graph's constant array of any shape; None means "all axes" (ONNX/OpenVINO
    default) and is not a channel reduction.
    """
    if axes is None or np.size(axes) != 1:
        return False
    rank = input_rank if input_rank is not None else 4
    axis = int(np.ravel(axes)[0]) % rank
    return (rank == 4 and axis != 0) or (rank == 3 and axis == 1)


def is_ones_vector_product(constant_operands: Iterable[np.ndarray | None]) -> bool:
    """True when a convolution / matrix product has a constant all-ones vector operand (1ᵀ·X = Σ over an axis)."""
    for constant in constant_operands:
        if constant is not None and constant.size > 1 and np.squeeze(constant).ndim == 1 and np.all(constant == 1):
            return True
    return False


def find_head(nodes: Iterable[GraphNode]) -> set[str]:
    """Names of the nodes that form the distance head (see the module docstring)."""
    nodes = list(nodes)
    consumers: dict[str, list[GraphNode]] = defaultdict(list)
    for n in nodes:
        for t in n.inputs:
            consumers[t].append(n)
    roots = [n for n in nodes if n.channel_reduction]
    if not roots:
        raise ExportError("cannot locate the distance head in the exported graph (no per-pixel channel "
                          "reduction found); refusing to quantise it to int8")
    head: set[str] = set()
    stack = list(roots)
    while stack:  # 2. everything downstream of a root
        n = stack.pop()
        if n.name in head:
            continue
        head.add(n.name)
        stack.extend(c for t in n.outputs for c in consumers[t])
    changed = True
    while changed:  # 3. weight-free producers that only feed the head
        changed = False
        for n in nodes:
            if n.name in head or n.weighted:
                continue
            users = [c for t in n.outputs for c in consumers[t]]
            if users and all(c.name in head for c in users):
                head.add(n.name)
                changed = True
    return head

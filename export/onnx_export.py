"""ONNX: fp32 export of the fused graph and int8 post-training static quantisation (QDQ) with ONNX Runtime.

fp32: ``torch.onnx.export`` (dynamo) with the onnxscript *rewriter* off — its "Add(x, 0)" rule treats the
cosine head's ε = 1e-8 as zero and deletes it, so an all-zero feature vector gives 0/0 = NaN in the map.
Constants are folded and lifted to initializers instead; BatchNorm is already folded in torch
(export.graph), and one self-contained file is written (``external_data=False``; quant_pre_process
cannot read a ``.onnx.data`` side file).

int8: ``quant_pre_process`` (ORT optimisation + symbolic shapes), then ``quantize_static`` in QDQ format,
per-channel int8 weights, uint8 activations (int8 activations measured slower here), calibrated on
training normals, with the distance head excluded by structure (export.head_scope) so it stays fp32.

fp16: ``onnxruntime.transformers.float16`` converts weights and compute to float16 (what the CUDA/TensorRT
providers run fast), the image input and both outputs stay float32 and the distance head stays fp32 (its
1 − cos of nearly equal features is where fp16 rounding would show).

``write_fp32`` / ``write_fp16`` / ``write_int8``: this format's writer interface (export.writers).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge.formats import DEFAULT_INT8_WEIGHT_BITS

from . import head_scope
from .config import ExportError, require
from .graph import FusedGraph
from .writers import WriteJob, try_export

INPUT_NAME, MAP_NAME, SCORE_NAME = "image", "anomaly_map", "score"
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
REDUCE_OPS = frozenset({"ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceMax",
                        "ReduceMin", "ReduceProd", "ReduceLogSumExp"})
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def export_onnx(graph: FusedGraph, path: Path) -> Path:
    """Write the fp32 fused graph to ``path`` (one input "image", outputs "anomaly_map", "score")."""
    import torch
    onnx = require("onnx", "ONNX export")
    optimizer = require("onnxscript.optimizer", "ONNX export")
    passes = require("onnx_ir.passes.common", "ONNX export")
    ir = require("onnx_ir", "ONNX export")
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export deprecation chatter
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(graph.module, (graph.example_input(),), str(raw), input_names=[INPUT_NAME],
                          output_names=[MAP_NAME, SCORE_NAME], external_data=False, optimize=False, verbose=False)
        model = ir.load(str(raw))
    optimizer.fold_constants(model)
    passes.RemoveUnusedNodesPass()(model)
    passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    left = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if left:
        raise ExportError(f"{path}: BatchNormalization nodes left after folding: {left[:5]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _constant_array(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def onnx_graph_nodes(model: Any) -> list[head_scope.GraphNode]:
    """Format-neutral view of an ONNX ModelProto for export.head_scope."""
    from onnx import helper
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim)
             for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
             if vi.type.tensor_type.HasField("shape")}
    nodes = []
    for i, n in enumerate(model.graph.node):
        reduction, key = False, None
        if n.op_type in REDUCE_OPS:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            axes = attrs.get("axes")
            if axes is None and len(n.input) > 1 and n.input[1]:
                axes = _constant_array(model, n.input[1])
            reduction = head_scope.is_single_axis_reduction(axes, ranks.get(n.input[0]))
        elif n.op_type in WEIGHTED_OPS:  # Σ_c written as a product by ones (head.channel_sum)
            reduction = head_scope.is_ones_vector_product(_constant_array(model, t) for t in n.input[:2])
            key = head_scope.weight_fingerprint(_constant_array(model, n.input[1])) if len(n.input) > 1 else None
        nodes.append(head_scope.GraphNode(n.name or f"#{i}", n.op_type, tuple(n.input), tuple(n.output),
                                          weighted=n.op_type in WEIGHTED_OPS, channel_reduction=reduction,
                                          weight_key=key))
    return nodes


class ArrayCalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed images (N×3×S×S), one batch-1 feed at a time."""

    def __init__(self, images: np.ndarray, input_name: str = INPUT_NAME) -> None:
        self._images = np.asarray(images, dtype=np.float32)
        self._input_name = input_name
        self._it = self._feeds()

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        return ({self._input_name: x[None]} for x in self._images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._feeds()


def quantize_onnx(fp32_path: Path, out_path: Path, calibration_images: np.ndarray, scope: str = "backbone",
                  calibration: str = "minmax",
                  keep_fp32: Mapping[str, head_scope.WeightKey] | None = None,
                  weight_bits: int = DEFAULT_INT8_WEIGHT_BITS) -> dict[str, Any]:
    """int8 QDQ copy of ``fp32_path`` with the distance head and the ``keep_fp32`` layers (torch name →
    weight fingerprint, export.int8_scope) in fp32; returns what was done (for the manifest).

    ``weight_bits`` 7 is ONNX Runtime's ``reduce_range`` (weights in [-64, 64], activations keep 8 bits): MLAS'
    u8×s8 kernels on x86 CPUs without VNNI add product pairs in int16, which 8-bit weights overflow (edge.cpu)."""
    onnx = require("onnx", "ONNX int8 quantisation")
    q = require("onnxruntime.quantization", "ONNX int8 quantisation")
    shape_inference = require("onnxruntime.quantization.shape_inference", "ONNX int8 quantisation")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        shape_inference.quant_pre_process(str(fp32_path), str(pre))
        model = onnx.load(str(pre))
        nodes = onnx_graph_nodes(model)
        head, layers, layers_section = head_scope.fp32_scope(nodes, keep_fp32, str(fp32_path))
        op_types = sorted(WEIGHTED_OPS) if scope == "conv" else None
        extra = {"CalibPercentile": 99.999} if calibration == "percentile" else {}
        q.quantize_static(str(pre), str(out_path), ArrayCalibrationReader(calibration_images),
                          quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          op_types_to_quantize=op_types, nodes_to_exclude=sorted(head | layers),
                          calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[calibration]),
                          reduce_range=weight_bits == 7, use_external_data_format=False, extra_options=extra)
    head_types = sorted({n.op_type for n in nodes if n.name in head})
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": f"int8 per-channel, {weight_bits}-bit range", "weight_bits": weight_bits,
            "activations": "uint8", "calibration": calibration, "scope": scope,
            "calibration_images": int(len(calibration_images)),
            "fp32_nodes_kept": {"count": len(head), "op_types": head_types,
                                "rule": "distance head (export.head_scope)" +
                                        (" + every non-Conv/MatMul/Gemm node" if scope == "conv" else "")},
            "fp32_layers_kept": layers_section}


def _sort_topologically(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (the ONNX rule)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [all(i in available for i in n.input) for n in pending]
        if not any(ready):
            raise ExportError(f"ONNX graph {graph.name!r} has a cycle or an undefined input")
        for n, is_ready in zip(pending, ready):
            if is_ready:
                ordered.append(n)
                available.update(n.output)
        pending = [n for n, is_ready in zip(pending, ready) if not is_ready]
    copies = [type(n)() for n in ordered]
    for copy, n in zip(copies, ordered):
        copy.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def convert_onnx_fp16(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """float16 copy of ``fp32_path`` with float32 input/outputs and the distance head in fp32."""
    onnx = require("onnx", "ONNX fp16 conversion")
    float16 = require("onnxruntime.transformers.float16", "ONNX fp16 conversion")
    model = onnx.load(str(fp32_path))
    for i, node in enumerate(model.graph.node):  # the block list matches node names: give every node one
        node.name = node.name or f"#{i}"
    # Ranks for the head search from a shape-inferred copy; the converter infers its own (stale fp32 value_info
    # left in the file would contradict its float16 types).
    nodes = onnx_graph_nodes(onnx.shape_inference.infer_shapes(model))
    head = head_scope.find_head(nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model is being truncated" notes per out-of-range constant
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(head))
    del half.graph.value_info[:]  # the converter's value_info keeps some fp32 types it changed; shapes re-infer
    _sort_topologically(half.graph)  # it appends the input/output Casts at the end of the node list
    onnx.checker.check_model(half, full_check=True)
    onnx.save(half, str(out_path))
    head_types = sorted({n.op_type for n in nodes if n.name in head})
    return {"tool": "onnxruntime.transformers.float16.convert_float_to_float16", "weights": "float16",
            "compute": "float16 (backbone); input and outputs float32",
            "fp32_nodes_kept": {"count": len(head), "op_types": head_types,
                                "rule": "distance head (export.head_scope)"}}


@try_export("onnx", "fp32")
def write_fp32(job: WriteJob) -> None:
    export_onnx(job.graph, job.path)


@try_export("onnx", "fp16")
def write_fp16(job: WriteJob) -> dict[str, Any]:
    assert job.source is not None
    return convert_onnx_fp16(job.source, job.path)


@try_export("onnx", "int8")
def write_int8(job: WriteJob) -> dict[str, Any]:
    assert job.source is not None and job.calibration is not None
    return quantize_onnx(job.source, job.path, job.calibration, job.options["onnx_int8_scope"],
                         job.options["onnx_calibration"], job.keep_fp32, job.options["int8_weight_bits"])

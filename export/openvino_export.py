"""OpenVINO IR: fp32 conversion of the exported ONNX graph and int8 with NNCF, the distance head kept fp32.

Converting the ONNX file (rather than re-tracing torch) keeps one graph behind every format.  Two
measured traps are designed around (toolchain facts):
* ``ov.save_model`` compresses weights to fp16 unless ``compress_to_fp16=False``;
* on AMX CPUs OpenVINO silently runs bf16 (score correlation 0.88) unless compiled with
  ``INFERENCE_PRECISION_HINT="f32"`` — the manifest records that hint and edge.engines compiles with it.
int8: ``nncf.quantize`` (post-training static, min-max on training normals) with an IgnoredScope naming
the head nodes found by structure (export.head_scope), ``validate=False``.

fp16: the fp32 IR saved with fp16 weights (``compress_to_fp16=True``): an OpenVINO GPU/NPU computes in fp16; on
the CPU the weights are widened back to fp32 (INFERENCE_PRECISION_HINT f32), so the guard measures the
weight rounding only.

``write_fp32`` / ``write_fp16`` / ``write_int8``: this format's writer interface (export.writers).
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge.formats import DEFAULT_INT8_WEIGHT_BITS

from . import head_scope
from .config import ExportError, require
from .writers import WriteJob, try_export

INFERENCE_PRECISION_HINT = "f32"
RUNTIME_NOTE = (f"compile with INFERENCE_PRECISION_HINT={INFERENCE_PRECISION_HINT!r}: on AMX CPUs OpenVINO otherwise "
                f"runs bf16 silently")
WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                          "GroupConvolutionBackpropData", "MatMul"})
REDUCE_OPS = frozenset({"ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceMax", "ReduceMin", "ReduceProd"})


def export_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """fp32 IR (``.xml`` + ``.bin``, fp32 weights) from the fp32 ONNX file."""
    ov = require("openvino", "OpenVINO export")
    xml_path = Path(xml_path)
    model = ov.convert_model(str(onnx_path))
    left = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name().startswith("BatchNorm")]
    if left:
        raise ExportError(f"{xml_path}: BatchNorm ops left in the OpenVINO model: {left[:5]}")
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def _constant_array(node: Any) -> np.ndarray | None:
    return np.asarray(node.get_data()) if node.get_type_name() == "Constant" else None


LAYOUT_OPS = frozenset({"Reshape", "Convert", "Transpose", "Squeeze", "Unsqueeze"})


def _weight_array(op: Any) -> np.ndarray | None:
    """The constant behind a weighted op's second input, through layout-only ops (GroupConvolution's
    weights are a Reshape of the ONNX initializer)."""
    node = op.input_value(1).get_node()
    while node.get_type_name() in LAYOUT_OPS:
        node = node.input_value(0).get_node()
    return _constant_array(node)


def openvino_graph_nodes(model: Any) -> list[head_scope.GraphNode]:
    """Format-neutral view of an ``openvino.Model`` for export.head_scope (tensors named node:port)."""
    nodes = []
    for op in model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        inputs = tuple(f"{v.get_node().get_friendly_name()}:{v.get_index()}" for v in op.input_values())
        outputs = tuple(f"{name}:{i}" for i in range(op.get_output_size()))
        reduction, key = False, None
        if kind in REDUCE_OPS:
            axes = _constant_array(op.input_value(1).get_node())
            shape = op.input_value(0).get_partial_shape()
            rank = shape.rank.get_length() if shape.rank.is_static else None
            reduction = head_scope.is_single_axis_reduction(axes, rank)
        elif kind in WEIGHTED_OPS:  # Σ_c written as a product by ones (head.channel_sum)
            reduction = head_scope.is_ones_vector_product(_constant_array(v.get_node()) for v in op.input_values())
            key = head_scope.weight_fingerprint(_weight_array(op))
        nodes.append(head_scope.GraphNode(name, kind, inputs, outputs, weighted=kind in WEIGHTED_OPS,
                                          channel_reduction=reduction, weight_key=key))
    return nodes


def quantize_openvino(fp32_xml: Path, out_xml: Path, calibration_images: np.ndarray,
                      bias_correction: str = "full", keep_fp32: Mapping[str, head_scope.WeightKey] | None = None,
                      preset: str = "performance", weight_bits: int = DEFAULT_INT8_WEIGHT_BITS) -> dict[str, Any]:
    """int8 IR with NNCF post-training quantisation; the distance head and the ``keep_fp32`` layers (torch
    name → weight fingerprint, export.int8_scope) stay fp32.

    ``bias_correction`` "full" runs NNCF's BiasCorrection (statistics per layer on the calibration set),
    "fast" its FastBiasCorrection; ``preset`` is nncf.QuantizationPreset's PERFORMANCE or MIXED.
    ``weight_bits`` 7 is NNCF's OverflowFix.ENABLE (8: DISABLE): 7-bit weights in every dense convolution, as
    oneDNN's u8×s8 kernels on x86 CPUs without VNNI add product pairs in int16, which 8-bit weights overflow
    (edge.cpu); NNCF keeps depthwise weights at 8 bits (those kernels accumulate each product in int32).
    """
    ov = require("openvino", "OpenVINO int8 quantisation")
    nncf = require("nncf", "OpenVINO int8 quantisation")
    advanced = require("nncf.quantization.advanced_parameters", "OpenVINO int8 quantisation")
    core = ov.Core()
    model = core.read_model(str(fp32_xml))
    nodes = openvino_graph_nodes(model)
    head, layers, layers_section = head_scope.fp32_scope(nodes, keep_fp32, str(fp32_xml))
    # Parameters/Results/Constants are not quantisable ops; naming them only adds noise.
    ignored = sorted(n.name for n in nodes if n.name in head | layers
                     and n.op_type not in ("Constant", "Parameter", "Result"))
    data = [np.ascontiguousarray(x[None], dtype=np.float32) for x in calibration_images]
    logging.getLogger("nncf").setLevel(logging.ERROR)  # NNCF logs every step at INFO
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data),
                                  fast_bias_correction=bias_correction == "fast",
                                  preset=getattr(nncf.QuantizationPreset, preset.upper()),
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                                  advanced_parameters=advanced.AdvancedQuantizationParameters(
                                      overflow_fix=advanced.OverflowFix.ENABLE if weight_bits == 7
                                      else advanced.OverflowFix.DISABLE))
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    head_types = sorted({n.op_type for n in nodes if n.name in ignored})
    return {"tool": f"nncf.quantize {getattr(nncf, '__version__', '')}".strip(), "mode": "post-training static, "
            "int8 weights and activations", "weight_bits": weight_bits, "bias_correction": bias_correction,
            "preset": preset,
            "calibration_images": len(data),
            "fp32_nodes_kept": {"count": len(ignored), "op_types": head_types,
                                "rule": "distance head (export.head_scope) as nncf.IgnoredScope"},
            "fp32_layers_kept": layers_section}


@try_export("openvino", "fp32")
def write_fp32(job: WriteJob) -> None:
    assert job.fp32_of is not None
    export_openvino(job.fp32_of("onnx"), job.path)  # one graph behind every format: convert the fp32 ONNX file


@try_export("openvino", "fp16")
def write_fp16(job: WriteJob) -> dict[str, Any]:
    assert job.source is not None
    ov = require("openvino", "OpenVINO fp16 conversion")
    ov.save_model(ov.Core().read_model(str(job.source)), str(job.path), compress_to_fp16=True)
    return {"tool": "openvino.save_model(compress_to_fp16=True)", "weights": "float16",
            "compute": "the device's: fp16 on GPU/NPU, fp32 on CPU (INFERENCE_PRECISION_HINT f32)"}


@try_export("openvino", "int8")
def write_int8(job: WriteJob) -> dict[str, Any]:
    assert job.source is not None and job.calibration is not None
    return quantize_openvino(job.source, job.path, job.calibration, job.options["openvino_bias_correction"],
                             job.keep_fp32, job.options["openvino_preset"], job.options["int8_weight_bits"])

"""GMACs of one forward pass, counted from the model file itself (no torch).

Only convolutions and matrix products are counted — they are >99 % of the arithmetic of a
distillation model; the fp32 distance head (cosine, upsample, sum, max) is O(C·H·W) and left out.
For every GEMM-like node the count is the number of multiply-accumulates:

* Conv (and QLinearConv / ConvInteger, OpenVINO Convolution / GroupConvolution, TFLite CONV_2D /
  DEPTHWISE_CONV_2D): N·C_out·H_out·W_out · (C_in / groups) · k_h · k_w.
* ConvTranspose (OpenVINO ConvolutionBackpropData, TFLite TRANSPOSE_CONV):
  N·C_in·H_in·W_in · (C_out / groups) · k_h · k_w.
* MatMul / Gemm / fully connected: (#output elements) · K.

Formats: .onnx needs the ``onnx`` package (shape inference), .xml needs ``openvino``, .tflite needs
``ai_edge_litert``. ``model_gmacs`` falls back to the manifest's ``model.gmacs`` and then to a sibling
file of the same model (same stem before the precision suffix), so a row always says where its
number came from.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge.formats import FORMAT_NAMES, format_for_path, is_model_file, parse_model_filename


class MacsUnavailable(RuntimeError):
    """The file cannot be counted here (package missing, dynamic shapes, unreadable)."""


def _prod(dims: Sequence[int]) -> int:
    return int(math.prod(int(d) for d in dims))


def conv_macs(output_shape: Sequence[int], weight_shape_oihw: Sequence[int]) -> int:
    """N·C_out·H_out·W_out · (C_in/groups)·k_h·k_w, with the weight as [C_out, C_in/groups, k_h, k_w]."""
    return _prod(output_shape) * _prod(weight_shape_oihw[1:])


def conv_transpose_macs(input_shape: Sequence[int], weight_shape_iohw: Sequence[int]) -> int:
    """N·C_in·H_in·W_in · (C_out/groups)·k_h·k_w, with the weight as [C_in, C_out/groups, k_h, k_w]."""
    return _prod(input_shape) * _prod(weight_shape_iohw[1:])


def matmul_macs(output_shape: Sequence[int], k: int) -> int:
    """(#output elements) · K."""
    return _prod(output_shape) * int(k)


# --------------------------------------------------------------------------------------------- ONNX
_ONNX_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_ONNX_MATMUL_A = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0, "Gemm": 0}


def _all_static(model: Any) -> bool:
    return all(all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
               for vi in model.graph.value_info if vi.type.HasField("tensor_type"))


def onnx_static_shapes(path: str | Path, purpose: str) -> tuple[Any, Callable[[str], list[int]]]:
    """(graph, tensor name → static shape) of an ONNX file; the lookup raises MacsUnavailable naming
    ``purpose`` ("cannot count MACs") for a tensor whose shape is not static."""
    g = _onnx_with_shapes(path).graph
    shapes: dict[str, list[int] | None] = {t.name: list(t.dims) for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = ([d.dim_value for d in dims] if all(d.HasField("dim_value") for d in dims) else None)

    def shape(name: str) -> list[int]:
        s = shapes.get(name)
        if s is None:
            raise MacsUnavailable(f"{path}: shape of tensor {name!r} is not static; {purpose}")
        return s

    return g, shape


def onnx_macs(path: str | Path) -> int:
    """MACs of an ONNX graph from its (inferred) static shapes."""
    g, shape = onnx_static_shapes(path, "cannot count MACs")
    return sum(_onnx_node_macs(node, shape) for node in g.node)


def _onnx_with_shapes(path: str | Path) -> Any:
    """The ONNX model with every shape inference can find (onnx's, then onnxruntime's symbolic one)."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        raise MacsUnavailable("the onnx package is not installed (pip install onnx)") from None
    try:
        raw = onnx.load(str(path), load_external_data=False)
        # data_prop folds Shape→Pad chains (computed "same" padding) into static shapes.
        model = shape_inference.infer_shapes(raw, data_prop=True)
    except Exception as e:
        raise MacsUnavailable(f"{path}: cannot read the ONNX graph ({str(e).splitlines()[0][:200]})") from None
    if not _all_static(model):
        try:  # onnxruntime's symbolic inference also evaluates shape arithmetic the onnx pass leaves open
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
            model = SymbolicShapeInference.infer_shapes(raw, auto_merge=True)
        except Exception:  # noqa: BLE001 - optional improvement; the static check below reports failure
            pass
    return model


def _onnx_node_macs(node: Any, shape: Callable[[str], list[int]]) -> int:
    """MACs of one ONNX node (0 for anything but convolutions and matrix products)."""
    if node.op_type in _ONNX_CONV_WEIGHT:
        return conv_macs(shape(node.output[0]), shape(node.input[_ONNX_CONV_WEIGHT[node.op_type]]))
    if node.op_type == "ConvTranspose":
        return conv_transpose_macs(shape(node.input[0]), shape(node.input[1]))
    if node.op_type in _ONNX_MATMUL_A:
        a = shape(node.input[_ONNX_MATMUL_A[node.op_type]])
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        return matmul_macs(shape(node.output[0]), a[-2] if trans_a else a[-1])
    return 0


# ----------------------------------------------------------------------------------------- OpenVINO
def openvino_macs(path: str | Path) -> int:
    """MACs of an OpenVINO IR (.xml) from its static shapes."""
    try:
        import openvino as ov
    except ImportError:
        raise MacsUnavailable("openvino is not installed") from None
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:
        raise MacsUnavailable(f"{path}: cannot read the OpenVINO model ({str(e).splitlines()[0][:200]})") from None

    def shape(port: Any) -> list[int]:
        ps = port.get_partial_shape()
        if not ps.is_static:
            raise MacsUnavailable(f"{path}: dynamic shape {ps} in {port.get_node().get_friendly_name()}")
        return [int(d) for d in ps.to_shape()]

    return sum(_openvino_op_macs(op, shape) for op in model.get_ordered_ops())


def _openvino_op_macs(op: Any, shape: Callable[[Any], list[int]]) -> int:
    """MACs of one OpenVINO operation (0 for anything but convolutions and matrix products)."""
    kind = op.get_type_name()
    if kind == "Convolution":
        return conv_macs(shape(op.output(0)), shape(op.input(1)))
    if kind == "GroupConvolution":  # weights [G, C_out/G, C_in/G, kh, kw]
        return conv_macs(shape(op.output(0)), shape(op.input(1))[1:])
    if kind == "ConvolutionBackpropData":
        return conv_transpose_macs(shape(op.input(0)), shape(op.input(1)))
    if kind == "GroupConvolutionBackpropData":  # weights [G, C_in/G, C_out/G, kh, kw]
        w = shape(op.input(1))
        return _prod(shape(op.input(0))) * _prod(w[2:])
    if kind == "MatMul":
        a = shape(op.input(0))
        return matmul_macs(shape(op.output(0)), a[-2] if op.get_attributes().get("transpose_a") else a[-1])
    return 0


# ------------------------------------------------------------------------------------------- TFLite
def tflite_macs(path: str | Path) -> int:
    """MACs of a .tflite model (NHWC; conv weights OHWI, depthwise 1HWC)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise MacsUnavailable("ai-edge-litert is not installed") from None
    try:
        interp = Interpreter(model_path=str(path))
        ops = interp._get_ops_details()  # no public API lists operators; guarded below
        tensors = {d["index"]: [int(x) for x in d["shape"]] for d in interp.get_tensor_details()}
    except Exception as e:
        raise MacsUnavailable(f"{path}: cannot list the TFLite operators ({str(e).splitlines()[0][:200]})") from None
    total = 0
    for op in ops:
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        try:
            if name == "CONV_2D":  # weight [C_out, kh, kw, C_in/groups]
                w = tensors[ins[1]]
                total += _prod(tensors[outs[0]]) * _prod(w[1:])
            elif name == "DEPTHWISE_CONV_2D":  # weight [1, kh, kw, C_out]
                w = tensors[ins[1]]
                total += _prod(tensors[outs[0]]) * w[1] * w[2]
            elif name == "TRANSPOSE_CONV":  # inputs: output_shape, weight [C_out, kh, kw, C_in], input
                w = tensors[ins[1]]
                total += _prod(tensors[ins[2]]) * w[0] * w[1] * w[2]
            elif name == "FULLY_CONNECTED":  # weight [units, K]
                total += _prod(tensors[outs[0]]) * tensors[ins[1]][-1]
            elif name == "BATCH_MATMUL":
                total += _prod(tensors[outs[0]]) * tensors[ins[0]][-1]
        except (KeyError, IndexError):
            raise MacsUnavailable(f"{path}: operator {name} has tensors without shapes") from None
    return total


COUNTERS = {"onnx": onnx_macs, "openvino": openvino_macs, "tflite": tflite_macs}  # by edge.formats name


def count_gmacs(path: str | Path) -> float:
    """GMACs counted from the file (MacsUnavailable when this file type/package cannot be counted)."""
    path = Path(path)
    counter = COUNTERS.get(format_for_path(path, MacsUnavailable).name)
    if counter is None:
        raise MacsUnavailable(f"{path}: no MAC counter for {path.suffix!r} files")
    return counter(path) / 1e9


def _siblings(path: Path) -> list[Path]:
    """Other files of the same model (same stem, any format and precision): dcam.int8.xml → dcam.onnx,
    dcam.int8.onnx, dcam.xml, …, in edge.formats order."""
    stem = parse_model_filename(path).stem
    names = {p: parse_model_filename(p) for p in path.parent.iterdir()
             if p != path and p.is_file() and is_model_file(p)}
    same = [p for p, n in names.items() if n.stem == stem]
    return sorted(same, key=lambda p: (FORMAT_NAMES.index(names[p].format), p.name))


def model_gmacs(path: str | Path, manifest: dict[str, Any] | None = None) -> tuple[float | None, str]:
    """(GMACs, source): counted from the file, else the manifest's model.gmacs, else a sibling file.

    The count is a property of the architecture, so every format/precision of one model agrees.
    """
    path = Path(path)
    reasons = []
    try:
        return count_gmacs(path), "counted"
    except MacsUnavailable as e:
        reasons.append(str(e))
    gm = ((manifest or {}).get("model") or {}).get("gmacs")
    if isinstance(gm, (int, float)) and gm > 0:
        return float(gm), "manifest"
    for sib in _siblings(path):
        try:
            return count_gmacs(sib), f"counted from {sib.name}"
        except MacsUnavailable as e:
            reasons.append(str(e))
    return None, "unavailable: " + reasons[0]

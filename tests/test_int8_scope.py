"""Layers kept fp32 in int8 files: chosen by measured sensitivity, found in every format by their weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.config import ExportError
from export.head_scope import GraphNode, kept_layer_nodes, weight_fingerprint


def test_weight_fingerprint_ignores_layout_but_not_values() -> None:
    w = np.random.default_rng(0).normal(size=(8, 4, 3, 3)).astype(np.float32)
    key = weight_fingerprint(w)
    assert key == weight_fingerprint(w.transpose(0, 2, 3, 1))  # TFLite OHWI
    assert key == weight_fingerprint(w.reshape(2, 4, 4, 3, 3))  # OpenVINO GroupConvolution
    other = w.copy()
    other[0, 0, 0, 0] += 1e-3
    assert weight_fingerprint(other) != key
    assert weight_fingerprint(np.ones(1)) is None  # scalars are not layers


def test_kept_layer_nodes_finds_by_weight_or_names_the_missing_layer() -> None:
    a, b = np.arange(6.0), np.arange(6.0) * 2
    nodes = [GraphNode("conv_a", "Conv", ("x",), ("y",), weighted=True, weight_key=weight_fingerprint(a)),
             GraphNode("conv_b", "Conv", ("y",), ("z",), weighted=True, weight_key=weight_fingerprint(b)),
             GraphNode("relu", "Relu", ("z",), ("o",))]
    key_b = weight_fingerprint(b)
    assert key_b is not None
    assert kept_layer_nodes(nodes, {"teacher.stem": key_b}, "m.onnx") == {"conv_b"}
    assert kept_layer_nodes(nodes, {}, "m.onnx") == set()
    with pytest.raises(ExportError, match=r"m\.onnx: .*teacher\.gone"):
        kept_layer_nodes(nodes, {"teacher.gone": (6, 1.0, 1.0)}, "m.onnx")


class _OutlierNet(nn.Module):
    """Map from conv2(conv1(x)); conv1's channel 0 is huge but unused, so only uint8 on conv2's input (one range
    for all channels) wrecks the map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.conv1.weight[0] *= 500.0
            self.conv2.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.conv2(self.conv1(x))[:, 1:].abs().sum(1, keepdim=True)
        return m, m.amax(dim=(1, 2, 3))


def test_auto_keeps_the_layer_whose_input_range_ruins_int8() -> None:
    from export.sensitivity import SensitivityProbe, choose_fp32_layers
    net = _OutlierNet().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]
    val = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]
    with torch.no_grad():
        probe = SensitivityProbe(net, calib, val)
        alone = {name: probe.errors([name])["map_error"] for name in probe.layer_names}
        report = choose_fp32_layers(net, calib, val, target_spearman=0.99, counts=(0, 1, 2))
    assert alone["conv2"] > 10 * alone["conv1"]  # independent check of the ranking
    assert [r["layer"] for r in report["layers"]] == ["conv2"]
    assert report["target_met"] and report["simulated"][0]["kept"] == 0
    assert not report["simulated"][0]["score_spearman"] >= 0.99  # all int8: wrecked (NaN when constant)
    assert report["simulated"][-1]["score_spearman"] >= 0.99
    fixed = choose_fp32_layers(net, calib, val, target_spearman=-2.0, counts=(2,))
    assert [r["layer"] for r in fixed["layers"]] == ["conv2", "conv1"]


@pytest.mark.slow
def test_each_quantiser_keeps_the_chosen_layer_fp32(tiny_run: Path, tiny_export: Path, tmp_path: Path) -> None:
    """One teacher convolution is named; in every int8 format it keeps float weights, the rest are int8."""
    import onnx
    import openvino as ov
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from export.graph import load_fused_graph
    from export.onnx_export import quantize_onnx
    from export.openvino_export import quantize_openvino
    from export.tflite_export import quantize_tflite

    graph, _ = load_fused_graph(tiny_run)
    convs = [(n, m) for n, m in graph.module.named_modules() if isinstance(m, nn.Conv2d) and ".teacher." in f".{n}."]
    layer, conv = convs[1]
    key = weight_fingerprint(conv.weight.detach().numpy())
    assert key is not None
    keep = {layer: key}
    calib = np.random.default_rng(0).normal(size=(4, 3, graph.image_size, graph.image_size)).astype(np.float32)

    info = quantize_onnx(tiny_export / "dcam.onnx", tmp_path / "k.int8.onnx", calib, keep_fp32=keep)
    assert info["fp32_layers_kept"] == {"count": 1, "layers": [layer]}
    g = onnx.load(str(tmp_path / "k.int8.onnx")).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    floats = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    conv_nodes = [n for n in g.node if n.op_type == "Conv"]
    float_weight = [n for n in conv_nodes if n.input[1] in floats and weight_fingerprint(floats[n.input[1]]) == key]
    assert len(float_weight) == 1  # its input may still arrive through Q/DQ: the producer (Clip) is quantised
    assert sum(producer.get(n.input[1]) == "DequantizeLinear" for n in conv_nodes) >= len(convs) - 1

    quantize_openvino(tiny_export / "dcam.xml", tmp_path / "k.int8.xml", calib, "fast", keep_fp32=keep)
    ops = ov.Core().read_model(str(tmp_path / "k.int8.xml")).get_ordered_ops()
    weighted = [op for op in ops if op.get_type_name() in ("Convolution", "GroupConvolution")]

    def quantised(op) -> bool:  # NNCF writes int8 weights (Constant i8 → Convert → …) or a FakeQuantize
        node = op.input_value(1).get_node()
        while node.get_type_name() not in ("Constant", "FakeQuantize"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize" or node.get_element_type().get_type_name() == "i8"
    from export.openvino_export import _weight_array
    kept = [op for op in weighted if not quantised(op)]
    assert [weight_fingerprint(_weight_array(op)) for op in kept].count(key) == 1
    assert len([op for op in weighted if quantised(op)]) >= len(convs) - 1

    quantize_tflite(tiny_export / "dcam.tflite", tmp_path / "k.int8.tflite", calib, keep_fp32=keep)
    fb = flatbuffer_utils.read_model(str(tmp_path / "k.int8.tflite"))
    sg = fb.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def kind(op) -> str:
        code = fb.operatorCodes[op.opcodeIndex]
        return names[max(code.builtinCode, code.deprecatedBuiltinCode)]
    conv_ops = [op for op in sg.operators if kind(op) in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    float_convs = [op for op in conv_ops if sg.tensors[op.inputs[1]].type == schema.TensorType.FLOAT32]
    matches = [op for op in float_convs if weight_fingerprint(np.frombuffer(
        bytes(fb.buffers[sg.tensors[op.inputs[1]].buffer].data), np.float32)) == key]
    assert len(matches) == 1
    assert sum(sg.tensors[op.inputs[1]].type == schema.TensorType.INT8 for op in conv_ops) >= len(convs) - 1


@pytest.mark.slow
def test_export_records_the_sensitivity_choice(tiny_export: Path) -> None:
    from edge.manifest import manifest_path_for
    for name in ("dcam.int8.onnx", "dcam.int8.xml", "dcam.int8.tflite"):
        manifest = json.loads(manifest_path_for(tiny_export / name).read_text())["files"][name]
        kept = manifest["quantization"]["fp32_layers_kept"]
        sens = kept["sensitivity"]
        assert sens["setting"] == "auto" and sens["simulated"][0]["kept"] == 0
        assert kept["layers"] == sorted(r["layer"] for r in sens["layers"])
        assert len(kept["layers"]) == sens["simulated"][-1]["kept"] or not sens["target_met"]
        # ONNX Runtime and OpenVINO files default to 7-bit weights (exact without VNNI); LiteRT's are 8-bit.
        assert manifest["quantization"]["weight_bits"] == (8 if name.endswith(".tflite") else 7)
        assert sens["weight_bits"] == 7


def test_runtime_version_check(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    import logging
    from types import SimpleNamespace

    from edge.engines import _note_runtime_version, installed_version, version_tuple
    assert version_tuple("2025.3.0-19807-abc") == (2025, 3, 0) and version_tuple("1.23.2") == (1, 23, 2)
    assert version_tuple("1.9") < version_tuple("1.10")
    installed = installed_version("numpy")
    assert installed
    manifest = SimpleNamespace(entry=SimpleNamespace(runtime={"checked_with": {"numpy": "999.0"}}))
    with caplog.at_level(logging.WARNING, logger="edge.engines"):
        _note_runtime_version(manifest, "numpy", tmp_path / "m.onnx")  # type: ignore[arg-type]
        assert "m.onnx was checked at export with numpy 999.0" in caplog.text
        caplog.clear()
        manifest.entry.runtime["checked_with"]["numpy"] = installed
        _note_runtime_version(manifest, "numpy", tmp_path / "m.onnx")  # type: ignore[arg-type]
        assert not caplog.text


@pytest.mark.parametrize("bits", [7, 8])
def test_int8_weights_stay_in_the_range_that_int16_pair_sums_hold(tiny_export: Path, tmp_path: Path, bits: int) -> None:
    """7 bits: every int8 weight |q| ≤ 64 in the ONNX file and every dense-convolution one in the OpenVINO file
    (255·64·2 < 2^15: the u8×s8 pair sums of x86 CPUs without VNNI cannot overflow); 8 bits uses the full ±127
    (each channel's largest weight maps there)."""
    import onnx
    import openvino as ov

    from export.onnx_export import quantize_onnx
    from export.openvino_export import quantize_openvino
    size = onnx.load(str(tiny_export / "dcam.onnx")).graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    calib = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    info = quantize_onnx(tiny_export / "dcam.onnx", tmp_path / "q.int8.onnx", calib, weight_bits=bits)
    assert info["weight_bits"] == bits
    g = onnx.load(str(tmp_path / "q.int8.onnx")).graph
    int8_weights = [onnx.numpy_helper.to_array(i) for i in g.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights
    onnx_max = max(int(np.abs(w.astype(np.int32)).max()) for w in int8_weights)
    info = quantize_openvino(tiny_export / "dcam.xml", tmp_path / "q.int8.xml", calib, "fast", weight_bits=bits)
    assert info["weight_bits"] == bits
    ops = ov.Core().read_model(str(tmp_path / "q.int8.xml")).get_ordered_ops()
    # Dense convolutions' weights (O×I×kh×kw); NNCF leaves depthwise ones (5-D, grouped) at ±127: oneDNN's depthwise
    # int8 kernels accumulate each product in int32, no pair sums.
    i8 = [op.get_data() for op in ops if op.get_type_name() == "Constant"
          and op.get_element_type().get_type_name() == "i8" and len(op.get_output_shape(0)) == 4]
    assert i8
    openvino_max = max(int(np.abs(w.astype(np.int32)).max()) for w in i8)
    if bits == 7:
        assert onnx_max <= 64 and openvino_max <= 64
    else:
        assert onnx_max == 127 and openvino_max >= 127


def test_an_8_bit_weight_file_warns_on_a_cpu_whose_int8_sums_saturate(caplog: pytest.LogCaptureFixture,
                                                                      tmp_path: Path) -> None:
    import logging
    from types import SimpleNamespace

    from edge.cpu import cpu_flags, cpu_info, int16_pair_sums_saturate
    from edge.engines import _note_int8_overflow
    from edge.formats import get_format
    assert int16_pair_sums_saturate("x86_64", frozenset({"avx2", "fma"}))
    assert not int16_pair_sums_saturate("x86_64", frozenset({"avx2", "avx512_vnni"}))
    assert not int16_pair_sums_saturate("x86_64", frozenset({"avx_vnni"}))
    assert not int16_pair_sums_saturate("aarch64", frozenset())  # ARM's int8 kernels accumulate in int32
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags : x\n")
    assert cpu_flags(cpu_info.__wrapped__(str(tmp_path / "cpuinfo"))) == {"fpu", "avx2", "fma"}

    def manifest(quantization: dict | None) -> SimpleNamespace:
        return SimpleNamespace(entry=SimpleNamespace(extra={"quantization": quantization}))
    with caplog.at_level(logging.WARNING, logger="edge.engines"):
        for fmt in ("onnx", "openvino"):
            for q in ({"weight_bits": 8}, {}, None):  # a file written before the option is 8-bit
                caplog.clear()
                _note_int8_overflow(manifest(q), get_format(fmt), "int8", tmp_path / "m.int8", saturates=True)
                assert "8-bit int8 weights and this CPU has no VNNI" in caplog.text
        caplog.clear()
        _note_int8_overflow(manifest({"weight_bits": 7}), get_format("onnx"), "int8", tmp_path / "m", saturates=True)
        _note_int8_overflow(manifest({"weight_bits": 8}), get_format("onnx"), "int8", tmp_path / "m", saturates=False)
        _note_int8_overflow(manifest({"weight_bits": 8}), get_format("tflite"), "int8", tmp_path / "m", saturates=True)
        _note_int8_overflow(manifest(None), get_format("onnx"), "fp32", tmp_path / "m", saturates=True)
        assert not caplog.text

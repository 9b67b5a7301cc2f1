"""The export matrix: every method of the registry × every format and precision of edge.formats through dcam-export.

One tiny one-category run per method (EfficientNet-Lite0 with its ImageNet weights, 64 px, one epoch of two steps)
and ONE ``run_export`` of all its formats and precisions; then, per file: fp32 parity with the unfused torch
inference model, finite int8 output that follows it, the distance head kept fp32 in int8 files, and the manifest
round trip (entry → threshold / preprocessing / graph_io → edge.engines reproduces the scores recorded at export).
Methods whose MethodSpec says fp32 only (knn) must skip int8 with the warning.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.engines import load_engine
from edge.formats import FORMAT_NAMES, get_format, model_filename
from edge.manifest import load_manifest
from edge.preprocess import load_image
from edge.thresholds import calibrate_thresholds
from export.config import MODEL_STEM
from export.guard import PARITY_ATOL
from export.head_scope import GraphNode
from tests.conftest import tiny_train_config
from train.models import METHODS, method_spec

pytestmark = pytest.mark.slow  # trains and exports one model per method

# The smallest options that still build each method's own parts (dskd's GCCB, knn's coreset).
METHOD_OPTIONS = {"dskd": {"dskd": {"g": 64}}, "knn": {"knn": {"bank_size": 64}}}
# mrkd's SimAM normalises over each bottleneck channel's positions: at 64 px that map is 2×2 and two-step weights
# make its variance ill-conditioned (fp32 files then differ by ~2e-3 of the map on an AMX Xeon); 192 px → 6×6.
IMAGE_SIZE = {"mrkd": 192}
CALIB_SAMPLES = 8  # of the 16 training normals of the category
THREADS = 1  # export evaluated each file with this many threads; the round trip reruns it identically

INT8_METHODS = [m for m in METHODS if not method_spec(m).fp32_only]
FP32_ONLY_METHODS = [m for m in METHODS if method_spec(m).fp32_only]
FP32_CASES = [(m, f) for m in METHODS for f in FORMAT_NAMES if "fp32" in get_format(f).precisions]
INT8_CASES = [(m, f) for m in INT8_METHODS for f in FORMAT_NAMES if "int8" in get_format(f).precisions]
ROUND_TRIP_CASES = [(m, f, "fp32") for m, f in FP32_CASES] + [(m, f, "int8") for m, f in INT8_CASES]


@dataclass
class MethodExport:
    """One method's run, its export result and the unfused torch model's outputs on the category's images."""

    method: str
    category: str
    cfg: object  # the run's TrainConfig
    result: object  # export.pipeline.ExportResult
    validation: list[Path]  # the validation normals export scored, in its order
    images: np.ndarray  # validation normals + test split, preprocessed (N×3×S×S)
    ref_maps: np.ndarray
    ref_scores: np.ndarray

    def file(self, fmt: str, precision: str):
        name = model_filename(MODEL_STEM, fmt, precision)
        matches = [f for f in self.result.files if f.path.name == name]
        assert len(matches) == 1, f"{name} not in the export result ({[f.path.name for f in self.result.files]})"
        return matches[0]


@pytest.fixture(scope="module")
def exports(synthetic_root, tmp_path_factory) -> Callable[[str], MethodExport]:
    """method → its MethodExport, trained and exported on first use and kept for the module."""
    from export.config import ExportConfig
    from export.pipeline import run_export
    from train.config import ModelConfig
    from train.data.mvtec import list_test_samples, list_train_samples, split_train_val
    from train.runs import load_run, preprocess_spec
    from train.trainer import train

    category = min(p.name for p in synthetic_root.iterdir() if p.is_dir())  # one category

    @functools.cache
    def build(method: str) -> MethodExport:
        base = tmp_path_factory.mktemp(f"matrix-{method}")
        model_cfg = ModelConfig(method=method, backbone="efficientnet_lite0", **METHOD_OPTIONS.get(method, {}))
        run = train(tiny_train_config(synthetic_root, base / "run", categories=category, epochs=1,
                                      max_steps_per_epoch=2, model=model_cfg, image_size=IMAGE_SIZE.get(method, 64)))
        # With 4 validation normals one swapped pair moves Spearman below the guard's 0.95: reported, not enforced.
        result = run_export(ExportConfig(run=str(run), out=str(base / "out"), formats=",".join(FORMAT_NAMES),
                                         precisions="fp32,int8", calib_samples=CALIB_SAMPLES, threads=THREADS,
                                         allow_accuracy_drop=True, progress=False))
        model, cfg = load_run(run)
        spec = preprocess_spec(cfg)
        validation = [s.path for s in split_train_val(list_train_samples(cfg.data, [category]), cfg.val_fraction,
                                                      cfg.seed)[1]]
        paths = validation + [s.path for s in list_test_samples(cfg.data, [category])]
        images = np.stack([load_image(p, spec) for p in paths])
        with torch.no_grad():  # the unfused inference model: no BatchNorm folding, no export in between
            ref_maps, ref_scores = model.inference_model().eval()(torch.from_numpy(images))
        return MethodExport(method, category, cfg, result, validation, images, ref_maps.numpy(), ref_scores.numpy())

    return build


def _parity_tolerance(ref_maps: np.ndarray) -> float:
    """The pipeline's fp32 guard: PARITY_ATOL × max(1, the reference map's largest |value|)."""
    return PARITY_ATOL * max(1.0, float(np.abs(ref_maps).max()))


# mrkd at 192 px amplifies float rounding through SimAM's variance over a small bottleneck map, by CPU: LiteRT is
# ~1.1× over the parity tolerance on an AMX Xeon, OpenVINO ~5.5× on an AMD EPYC (Zen 5, AVX-512), ONNX Runtime ~3.6×
# on a Xeon (model 167, AMX); at 128 px all three formats failed on the Xeon, also at the previous release. Known,
# not hidden: non-strict xfail on mrkd's fp32 files (dcam and stfpm stay strict on every format).
FP32_PARITY_CASES = [pytest.param(m, f, marks=pytest.mark.xfail(reason="mrkd SimAM ill-conditioned at tiny size "
                                                                       "(CPU-dependent rounding)", strict=False))
                     if m == "mrkd" else (m, f) for m, f in FP32_CASES]


@pytest.mark.parametrize("method, fmt", FP32_PARITY_CASES)
def test_fp32_file_matches_the_torch_inference_model(exports, method, fmt) -> None:
    ex = exports(method)
    exported = ex.file(fmt, "fp32")
    assert not exported.violations  # the pipeline's own parity guard against its fused graph
    amap, score = load_engine(exported.path, threads=THREADS).run(ex.images)
    tolerance = _parity_tolerance(ex.ref_maps)
    np.testing.assert_allclose(amap, ex.ref_maps, atol=tolerance, rtol=0, err_msg=exported.path.name)
    np.testing.assert_allclose(score, ex.ref_scores, atol=tolerance, rtol=0, err_msg=exported.path.name)


@pytest.mark.parametrize("method, fmt", INT8_CASES)
def test_int8_file_is_finite_and_follows_fp32(exports, method, fmt) -> None:
    ex = exports(method)
    exported = ex.file(fmt, "int8")
    amap, score = load_engine(exported.path, threads=THREADS).run(ex.images)
    assert np.isfinite(amap).all() and np.isfinite(score).all()
    np.testing.assert_allclose(score, amap.reshape(len(amap), -1).max(1), rtol=1e-6)  # score = max of the map
    # Quantisation perturbs the map, it must not replace it (measured ≥ 0.989 on these runs).
    assert np.corrcoef(amap.ravel(), ex.ref_maps.ravel())[0, 1] > 0.9
    assert exported.size_bytes < 0.5 * ex.file(fmt, "fp32").size_bytes  # int8 weights


# --- the head kept fp32 ----------------------------------------------------------------------------------------
# Read back from the written int8 file, not from what the quantiser was asked: the head's roots are its per-pixel
# channel sums (products by constant ones, export.head_scope's parsers); everything downstream of them must be
# float, and the int8 file must still hold every channel sum of its fp32 file (a quantised sum loses its ones).


@dataclass
class QuantisedGraph:
    nodes: list[GraphNode]
    outputs: set[str]  # tensors that leave the graph (anomaly map, score)
    quantise_ops: frozenset[str]  # ops that (de)quantise a tensor
    is_quantised: Callable[[str], bool]  # tensor name → holds / comes from int8 values


def _onnx_graph(path: Path) -> QuantisedGraph:
    import onnx

    from export.onnx_export import onnx_graph_nodes

    # Shapes of the dequantised tensors: a ReduceMean over one axis of a 3-D GroupNorm view is no channel sum.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    nodes = onnx_graph_nodes(model)
    ops = frozenset({"QuantizeLinear", "DequantizeLinear"})
    producer = {t: n.op_type for n in nodes for t in n.outputs}
    return QuantisedGraph(nodes, {o.name for o in model.graph.output}, ops, lambda t: producer.get(t) in ops)


def _openvino_graph(path: Path) -> QuantisedGraph:
    import openvino as ov

    from export.openvino_export import openvino_graph_nodes

    model = ov.Core().read_model(str(path))
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    low_bit = {ov.Type.i8, ov.Type.u8, ov.Type.i4, ov.Type.u4}

    @functools.cache
    def quantised(tensor: str) -> bool:
        op = ops[tensor.rsplit(":", 1)[0]]
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return op.get_element_type() in low_bit
        if kind in ("Convert", "Multiply", "Subtract", "Reshape"):  # NNCF's int8 weights: i8 → f32 · scale
            return any(quantised(f"{v.get_node().get_friendly_name()}:{v.get_index()}") for v in op.input_values())
        return False

    outputs = {f"{v.get_node().get_friendly_name()}:{v.get_index()}" for r in model.get_results()
               for v in r.input_values()}
    return QuantisedGraph(openvino_graph_nodes(model), outputs, frozenset({"FakeQuantize"}), quantised)


def _tflite_graph(path: Path) -> QuantisedGraph:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from export.tflite_export import tflite_graph_nodes

    model = flatbuffer_utils.read_model(str(path))
    sg = model.subgraphs[0]
    low_bit = {schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16, schema.TensorType.INT4}
    return QuantisedGraph(tflite_graph_nodes(model), {f"t{j}" for j in sg.outputs},
                          frozenset({"QUANTIZE", "DEQUANTIZE"}), lambda t: sg.tensors[int(t[1:])].type in low_bit)


QUANTISED_GRAPHS = {"onnx": _onnx_graph, "openvino": _openvino_graph, "tflite": _tflite_graph}


def _downstream(nodes: list[GraphNode], roots: list[GraphNode]) -> list[GraphNode]:
    consumers = defaultdict(list)
    for n in nodes:
        for t in n.inputs:
            consumers[t].append(n)
    seen: dict[str, GraphNode] = {}
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n.name not in seen:
            seen[n.name] = n
            stack.extend(c for t in n.outputs for c in consumers[t])
    return list(seen.values())


@pytest.mark.parametrize("method, fmt", INT8_CASES)
def test_int8_file_keeps_the_distance_head_fp32(exports, method, fmt) -> None:
    ex = exports(method)
    int8, fp32 = (QUANTISED_GRAPHS[fmt](ex.file(fmt, p).path) for p in ("int8", "fp32"))
    roots = [n for n in int8.nodes if n.channel_reduction]
    assert len(roots) == sum(n.channel_reduction for n in fp32.nodes) > 0
    head = _downstream(int8.nodes, roots)
    assert int8.outputs <= {t for n in head for t in n.outputs}  # map and score are computed by the head
    assert not [n.name for n in head if n.op_type in int8.quantise_ops]
    assert not [n.name for n in head if any(int8.is_quantised(t) for t in n.outputs)]
    # The channel sums and the head's constant products (upsample + blur matrices) read float operands.
    readers = [n for n in head if n.channel_reduction or n.weighted]
    assert not [n.name for n in readers if any(int8.is_quantised(t) for t in n.inputs)]
    # ... while the backbone IS quantised.
    assert sum(any(int8.is_quantised(t) for t in n.outputs) for n in int8.nodes) > 10
    kept = load_manifest(ex.file(fmt, "int8").path).data["quantization"]["fp32_nodes_kept"]
    assert kept["count"] >= len(roots)


@pytest.mark.parametrize("method", FP32_ONLY_METHODS)
def test_fp32_only_method_skips_int8_with_a_warning(exports, method) -> None:
    ex = exports(method)
    assert f"{method}: int8 skipped, fp32 only ({method_spec(method).fp32_only})" in ex.result.warnings
    assert {f.precision for f in ex.result.files} == {"fp32"}
    assert [f.format for f in ex.result.files] == [f for f in FORMAT_NAMES if "fp32" in get_format(f).precisions]
    for fmt in FORMAT_NAMES:
        assert not (ex.result.out / model_filename(MODEL_STEM, fmt, "int8")).exists()
    assert not (ex.result.out / f"{MODEL_STEM}.int8.json").exists()


# --- manifest round trip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, fmt, precision", ROUND_TRIP_CASES)
def test_manifest_round_trip_reproduces_the_exported_scores(exports, method, fmt, precision) -> None:
    from train.runs import preprocess_spec

    ex = exports(method)
    exported = ex.file(fmt, precision)
    manifest = load_manifest(exported.path, verify_sha256=True)
    assert manifest.path == exported.manifest
    assert (manifest.entry.model_file, manifest.format, manifest.precision) == (exported.path.name, fmt, precision)
    assert manifest.document.model["method"] == method and manifest.categories == [ex.category]
    spec = manifest.preprocess_spec()
    assert spec.to_dict() == preprocess_spec(ex.cfg).to_dict()
    assert manifest.threshold() == exported.threshold
    engine = load_engine(exported.path, threads=THREADS, manifest=manifest)
    _, scores = engine.run(np.stack([load_image(p, spec) for p in ex.validation]))
    assert engine.graph_io == manifest.graph_io  # names recorded at export are the ones the runtime selects
    # The scores export calibrated on, recorded as their statistics, and the thresholds recomputed from them.
    recorded = manifest.entry.threshold["statistics"]["global"]["normal"]
    assert recorded["n"] == len(scores)
    for key, value in {"mean": scores.mean(), "min": scores.min(), "max": scores.max(),
                       "p50": np.percentile(scores, 50)}.items():
        assert recorded[key] == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
    expected = calibrate_thresholds(scores, np.zeros(len(scores), int), [ex.category] * len(scores), "fpr", 0.001)
    assert manifest.threshold() == pytest.approx(expected["global"].threshold, rel=1e-5)
    assert manifest.threshold(ex.category) == pytest.approx(expected["per_category"][ex.category].threshold,
                                                            rel=1e-5)

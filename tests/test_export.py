"""dcam-export end to end on the tiny trained run: six files, parity, manifests, guard, thresholds, CLI errors."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.engines import load_engine
from edge.manifest import load_manifest, manifest_path_for, sha256_file
from edge.preprocess import load_image
from edge.thresholds import calibrate_thresholds
from export.cli import main

pytestmark = pytest.mark.slow  # every test here needs the trained tiny run and/or a real export

SIX = ["dcam.onnx", "dcam.int8.onnx", "dcam.xml", "dcam.int8.xml", "dcam.tflite", "dcam.int8.tflite"]
FP32 = [f for f in SIX if ".int8" not in f]


@pytest.fixture(scope="module")
def run_model(tiny_run):
    from train.runs import load_run, preprocess_spec
    model, cfg = load_run(tiny_run)
    return model.inference_model().eval(), preprocess_spec(cfg), cfg


def _images(root: Path, pattern: str, n: int) -> list[Path]:
    return sorted(root.glob(pattern))[:n]


def _validation_samples(cfg):
    from train.data.mvtec import list_train_samples, parse_categories, split_train_val
    cats = parse_categories(cfg.categories, cfg.data)
    return split_train_val(list_train_samples(cfg.data, cats), cfg.val_fraction, cfg.seed)[1]


def test_all_six_files_round_trip(tiny_export, run_model, synthetic_root):
    _, spec, _ = run_model
    x = np.stack([load_image(p, spec) for p in _images(synthetic_root, "*/test/*/*.png", 6)])
    results = {}
    for name in SIX:
        path = tiny_export / name
        assert path.is_file() and manifest_path_for(path).is_file()
        manifest = load_manifest(path, verify_sha256=True)
        engine = load_engine(path, threads=2)
        amap, score = engine.run(x)
        assert amap.shape == (6, 1, 64, 64) and score.shape == (6,)
        assert np.isfinite(amap).all()
        np.testing.assert_allclose(score, amap.reshape(6, -1).max(1), rtol=1e-6)  # score = max of the map
        assert manifest.precision == ("int8" if ".int8" in name else "fp32")
        results[name] = amap
    for fp32 in FP32:  # int8 maps follow their fp32 graph (the head stays fp32)
        int8 = fp32.replace("dcam.", "dcam.int8.")
        assert np.corrcoef(results[fp32].ravel(), results[int8].ravel())[0, 1] > 0.9
        assert (tiny_export / int8).stat().st_size < 0.5 * (tiny_export / fp32).stat().st_size or fp32 == "dcam.xml"
    assert (tiny_export / "dcam.int8.bin").stat().st_size < 0.5 * (tiny_export / "dcam.bin").stat().st_size


def test_fp32_formats_match_torch_on_an_image_file(tiny_export, run_model, synthetic_root):
    """The unfused torch model vs edge's engines on the same image file, through edge.preprocess."""
    inference, spec, _ = run_model
    image = _images(synthetic_root, "*/test/[!g]*/*.png", 1)[0]
    x = load_image(image, spec)[None]
    with torch.no_grad():
        ref_map, ref_score = inference(torch.from_numpy(x))
    for name in FP32:
        amap, score = load_engine(tiny_export / name, threads=2).run(x)
        np.testing.assert_allclose(amap, ref_map.numpy(), atol=1e-4, rtol=0, err_msg=name)
        np.testing.assert_allclose(score, ref_score.numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_manifest_schema_and_provenance(tiny_export, run_model, synthetic_root):
    _, spec, cfg = run_model
    categories = sorted(p.name for p in synthetic_root.iterdir() if p.is_dir())
    for name in SIX:
        path = tiny_export / name
        m = load_manifest(path).data  # one flat dict per file, whatever edge.manifest's on-disk layout
        assert m["schema_version"] == 2 and m["model_file"] == name and m["model_sha256"] == sha256_file(path)
        assert m["format"] == {"onnx": "onnx", "xml": "openvino", "tflite": "tflite"}[name.rsplit(".", 1)[1]]
        # Output names resolved at export by the engine that evaluated the file; the runtime reads them back.
        engines = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
        assert m["runtime"]["engine"] == engines[m["format"]]
        assert load_engine(path).graph_io.to_json() == m["graph_io"] and "score" in m["graph_io"]["score"]
        assert m["runtime"]["inference_precision_hint"] == "f32"
        assert m["input"]["shape"] == [1, 3, 64, 64] and m["input"]["layout"] == "NCHW"
        assert m["input"]["dtype"] == "float32" and m["input"]["color"] == "RGB"
        assert m["input"]["mean"] == list(spec.mean) and m["input"]["std"] == list(spec.std)
        assert m["outputs"]["anomaly_map"]["shape"] == [1, 1, 64, 64] and m["outputs"]["score"]["shape"] == [1]
        assert m["model"]["method"] == "dcam" and m["model"]["backbone"] == "efficientnet_lite0"
        assert m["model"]["categories"] == categories and m["model"]["batchnorm_folded"] > 0
        assert m["model"]["training_only_parts_dropped"] == ["attention"]
        th = m["threshold"]
        assert isinstance(th["global"], float) and sorted(th["per_category"]) == categories
        assert th["mode"] == "fpr" and th["target_fpr"] == 0.001 and th["source"] == "export" and th["fit"]
        assert th["statistics"]["global"]["normal"]["n"] == 12
        acc = m["accuracy"]
        assert acc["validation_normals"]["n_images"] == 12 and acc["test"]["n_images"] == 30
        assert set(acc["guard"]) >= {"passed", "violations", "limits"}
        assert acc["guard"]["passed"] == (not acc["guard"]["violations"])
        assert m["package_version"] and m["export"]["versions"]["torch"].startswith("2.13")
        if ".int8" in name:
            assert m["quantization"]["fp32_nodes_kept"]["count"] > 0
            # the head's per-pixel channel sums (1×1 convs by ones) are among the fp32 nodes in every format
            assert {"Conv", "Convolution", "CONV_2D"} & set(m["quantization"]["fp32_nodes_kept"]["op_types"])
            if name.endswith(".xml"):
                assert m["quantization"]["bias_correction"] == "full"
            assert any("< 300" in w for w in m["export"]["warnings"])  # 32 calibration images: warned
        else:
            assert m["quantization"] is None and acc["guard"]["passed"]  # fp32 parity with torch
    ov = load_manifest(tiny_export / "dcam.int8.xml").data
    assert ov["weights_file"] == "dcam.int8.bin" and ov["weights_sha256"] == sha256_file(tiny_export / "dcam.int8.bin")


@pytest.mark.parametrize("name", ["dcam.onnx", "dcam.int8.tflite"])
def test_thresholds_and_accuracy_are_each_files_own(tiny_export, run_model, name):
    """Recompute one fp32 and one int8 file's threshold and figures independently from its own scores."""
    from sklearn.metrics import roc_auc_score

    from train.data.mvtec import list_test_samples, parse_categories

    inference, spec, cfg = run_model
    engine = load_engine(tiny_export / name, threads=2)
    val = _validation_samples(cfg)
    x = np.stack([load_image(s.path, spec) for s in val])
    _, scores = engine.run(x)
    expected = calibrate_thresholds(scores, np.zeros(len(val), int), [s.category for s in val], "fpr", 0.001)
    m = load_manifest(tiny_export / name).data
    assert m["threshold"]["global"] == pytest.approx(expected["global"].threshold, rel=1e-5)
    for cat, r in expected["per_category"].items():
        assert m["threshold"]["per_category"][cat] == pytest.approx(r.threshold, rel=1e-5)
    with torch.no_grad():
        _, ref_scores = inference(torch.from_numpy(x))
    rho = np.corrcoef(np.argsort(np.argsort(scores)), np.argsort(np.argsort(ref_scores.numpy())))[0, 1]
    assert m["accuracy"]["validation_normals"]["score_spearman"] == pytest.approx(rho, abs=1e-6)
    test = list_test_samples(cfg.data, parse_categories(cfg.categories, cfg.data))
    _, test_scores = engine.run(np.stack([load_image(s.path, spec) for s in test]))
    cats = sorted({s.category for s in test})
    labels, sample_cats = np.array([s.label for s in test]), np.array([s.category for s in test])
    auroc = np.mean([roc_auc_score(labels[sample_cats == c], test_scores[sample_cats == c]) for c in cats])
    assert m["accuracy"]["test"]["image_auroc"] == pytest.approx(auroc, abs=1e-9)
    if ".int8" in name:  # int8 scores differ from fp32, so must its threshold
        fp32 = load_manifest(tiny_export / "dcam.tflite").data["threshold"]["global"]
        assert m["threshold"]["global"] != pytest.approx(fp32, rel=1e-6)


def test_int8_files_keep_the_distance_head_fp32(tiny_export):
    import onnx
    import openvino as ov
    from ai_edge_litert.tools import flatbuffer_utils

    head_ops = {"ReduceSum", "Sqrt", "Div", "Sub", "Resize", "ReduceMax"}
    g = onnx.load(str(tiny_export / "dcam.int8.onnx")).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) > 10  # the backbone IS quantised
    for n in g.node:
        if n.op_type in head_ops:
            assert all(producer.get(i) != "DequantizeLinear" for i in n.input), n.name
    model = ov.Core().read_model(str(tiny_export / "dcam.int8.xml"))
    ops = model.get_ordered_ops()
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) > 10
    for op in ops:
        if op.get_type_name() in {"ReduceSum", "Sqrt", "Divide", "Interpolate", "ReduceMax", "Subtract"}:
            assert all(v.get_node().get_type_name() != "FakeQuantize" for v in op.input_values()), op
    fb = flatbuffer_utils.read_model(str(tiny_export / "dcam.int8.tflite"))
    sg = fb.subgraphs[0]
    from ai_edge_litert import schema_py_generated as schema
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds = [names[max(fb.operatorCodes[op.opcodeIndex].builtinCode,
                       fb.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)] for op in sg.operators]
    int8 = schema.TensorType.INT8
    assert any(k == "CONV_2D" and sg.tensors[op.inputs[1]].type == int8 for k, op in zip(kinds, sg.operators))
    def is_constant(i: int) -> bool:
        data = fb.buffers[sg.tensors[i].buffer].data
        return data is not None and len(data) > 0

    for kind, op in zip(kinds, sg.operators):
        if kind in {"SUM", "SQRT", "DIV", "RESIZE_BILINEAR", "REDUCE_MAX"}:
            activations = [i for i in op.inputs if i >= 0 and not is_constant(i)]
            assert activations and all(sg.tensors[i].type == schema.TensorType.FLOAT32 for i in activations), kind


def test_guard_trips_on_broken_calibration(tiny_run, tmp_path, monkeypatch, capsys):
    """Calibration data 1000× out of range (e.g. unnormalised pixels): int8 activation ranges are useless."""
    from export.pipeline import _Exporter

    rng = np.random.default_rng(0)
    broken = (rng.standard_normal((8, 3, 64, 64)) * 1000).astype(np.float32)
    monkeypatch.setattr(_Exporter, "calibration", property(lambda self: broken))
    args = ["--run", str(tiny_run), "--out", str(tmp_path), "--formats", "onnx", "--precisions", "int8",
            "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "accuracy guard FAILED" in err and "dcam.int8.onnx" in err
    guard = load_manifest(tmp_path / "dcam.int8.onnx").data["accuracy"]["guard"]
    assert not guard["passed"] and guard["violations"] and not guard["allowed_by_flag"]
    assert not (tmp_path / "dcam.onnx").exists()  # fp32 source was not requested: written to a temp dir only


def test_allow_accuracy_drop_is_recorded(tiny_export):
    """tiny_export ran with --allow-accuracy-drop: a file that failed says it was let through by the flag."""
    for name in SIX:
        guard = load_manifest(tiny_export / name).data["accuracy"]["guard"]
        assert guard["allowed_by_flag"] == (not guard["passed"])


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and captured.err.rstrip().endswith(errors[0])  # one line, the last thing printed
    return errors[0]


def test_cli_errors_are_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    msg = _error(capsys, ["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert "nope" in msg and "not found" in msg
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(tiny_run / "config.json", corrupt / "config.json")
    (corrupt / "best.pt").write_bytes(b"not a checkpoint")
    msg = _error(capsys, ["--run", str(corrupt), "--out", str(tmp_path / "o")])
    assert "best.pt" in msg and "corrupt" in msg
    msg = _error(capsys, ["--run", str(tiny_run), "--out", str(tmp_path / "o"), "--formats", "onnx,coreml"])
    assert "coreml" in msg and "onnx, openvino, tflite" in msg
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if the export extra were not installed
    msg = _error(capsys, ["--run", str(tiny_run), "--out", str(tmp_path / "o"), "--formats", "openvino"])
    assert "nncf" in msg and "pip install dcam-edge[export]" in msg
    msg = _error(capsys, ["--run", str(tiny_run), "--out", str(tmp_path / "o"), "--formats", "onnx",
                          "--calib-data", str(tmp_path / "missing")])
    assert "--calib-data" in msg and "missing" in msg


@pytest.fixture(scope="module")
def fp16_export(tiny_run, tmp_path_factory) -> Path:
    from export.cli import main
    out = tmp_path_factory.mktemp("export_fp16")
    assert main(["--run", str(tiny_run), "--out", str(out), "--precisions", "fp16", "--formats", "onnx,openvino,tflite",
                 "--allow-accuracy-drop", "--no-progress"]) == 0
    return out


def test_fp16_files_are_half_precision_with_the_head_fp32_and_close_to_fp32(fp16_export, tiny_export, run_model):
    import onnx
    import openvino as ov
    from onnx import TensorProto

    from edge.devices import guard_covers

    assert sorted(p.name for p in fp16_export.glob("dcam*.*") if p.suffix in {".onnx", ".xml", ".tflite"}) == \
        ["dcam.fp16.onnx", "dcam.fp16.xml"]  # LiteRT offers no fp16 file: skipped with a warning
    g = onnx.load(str(fp16_export / "dcam.fp16.onnx")).graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # the contract's float32 input and outputs
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in g.output)
    assert TensorProto.FLOAT16 in {i.data_type for i in g.initializer if len(i.dims) == 4}  # conv weights
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_export / "dcam.fp16.onnx")), strict_mode=True)
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert sum(elem.get(n.output[0]) == TensorProto.FLOAT16 for n in convs) > 10  # the backbone computes in fp16
    head = [n for n in g.node if n.op_type in {"Sqrt", "Div", "ReduceMax"}]
    assert head and all(elem.get(n.output[0], TensorProto.FLOAT) == TensorProto.FLOAT for n in head)  # head fp32
    ops = ov.Core().read_model(str(fp16_export / "dcam.fp16.xml")).get_ordered_ops()
    assert any(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "f16" for op in ops)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    ref = load_engine(tiny_export / "dcam.onnx").run(x)
    for name in ("dcam.fp16.onnx", "dcam.fp16.xml"):
        path = fp16_export / name
        manifest = load_manifest(path).data
        assert manifest["precision"] == "fp16" and manifest["quantization"]["weights"] == "float16"
        guard = manifest["accuracy"]["guard"]
        assert guard_covers(manifest) == (frozenset({"fp16"}) if guard["passed"] else frozenset())
        amap, score = load_engine(path).run(x)
        np.testing.assert_allclose(amap, ref[0], rtol=0, atol=2e-2 * float(np.abs(ref[0]).max()))
        assert not np.array_equal(amap, ref[0])  # it is not the fp32 file under another name

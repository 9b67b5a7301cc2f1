"""Writes tests/data/manifest-v1/: a tiny fused graph exported to ONNX, OpenVINO IR and TFLite (fp32) with the
schema-1 writer (export.manifest_writer.build_manifest + write_file_manifest) as it was before schema 2."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "/work/main/tests")
from test_export_units import TinyPyramid  # noqa: E402

from edge.engines import load_engine
from edge.preprocess import PreprocessSpec
from edge.thresholds import calibrate_thresholds, threshold_section
from export.graph import fuse_module
from export.manifest_writer import build_manifest, write_file_manifest
from export.onnx_export import export_onnx
from export.openvino_export import export_openvino
from export.tflite_export import export_tflite

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
spec = PreprocessSpec.for_normalization("imagenet", 32)
info = {"method": "dcam", "backbone": "tiny", "categories": ["a", "b"], "blur_sigma": 1.0,
        "training_only_parts_dropped": [], "run": "runs/tiny"}
graph = fuse_module(TinyPyramid(blur_sigma=1.0).eval(), spec, info)
paths = {"onnx": export_onnx(graph, out / "dcam.onnx")}
paths["openvino"] = export_openvino(paths["onnx"], out / "dcam.xml")
paths["tflite"] = export_tflite(graph, out / "dcam.tflite")
x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
cats = ["a"] * 4 + ["b"] * 4
for fmt, path in paths.items():
    engine = load_engine(path, threads=1)
    _, scores = engine.run(x)
    results = calibrate_thresholds(scores, np.zeros(8, int), cats, mode="fpr", target_fpr=0.001)
    threshold = threshold_section(results, source="export")
    accuracy = {"validation_normals": {"n_images": 8, "finite": True, "score_spearman": 1.0},
                "engine": {k: v for k, v in engine.describe().items() if k != "model"},
                "guard": {"passed": True, "violations": [], "allowed_by_flag": False}}
    export_info = {"tool": "dcam-export", "config": {"formats": ["onnx", "openvino", "tflite"]}, "data": {},
                   "warnings": []}
    write_file_manifest(path, build_manifest(path, fmt, "fp32", graph, threshold, accuracy, None, export_info))
print(sorted(p.name for p in out.iterdir()))

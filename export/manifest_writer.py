"""The manifest written beside each exported file (schema: edge.manifest, contract "Exported graphs")."""
from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.jsonsafe import json_safe
from edge.manifest import write_manifest
from edge.preprocess import NORMALIZATIONS, PreprocessSpec

from .graph import FusedGraph

VERSIONED_PACKAGES = ("torch", "onnx", "onnxruntime", "openvino", "nncf", "litert-torch", "ai-edge-quantizer",
                      "ai-edge-litert", "numpy", "opencv-python-headless")
INPUT_NAME = "image"
PREPROCESSING = ("edge.preprocess.preprocess_rgb: RGB uint8 → resize to image_size×image_size (cv2.INTER_LINEAR) "
                 "→ x/255 → (x − mean)/std → CHW float32, batch of 1 (normalisation is NOT in the graph)")


def io_names(path: Path, fmt: str) -> tuple[str, dict[str, str]]:
    """The input name and {"anomaly_map": name, "score": name} as the runtime sees them in the file."""
    if fmt == "onnx":
        import onnx
        g = onnx.load(str(path), load_external_data=False).graph
        inp, outs = g.input[0].name, [o.name for o in g.output]
    elif fmt == "openvino":
        import openvino as ov
        m = ov.Core().read_model(str(path))
        inp, outs = m.inputs[0].get_any_name(), [o.get_any_name() for o in m.outputs]
    else:
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path=str(path))
        inp, outs = it.get_input_details()[0]["name"], [d["name"] for d in it.get_output_details()]
    named = {}
    for kind in ("anomaly_map", "score"):
        exact = [o for o in outs if o == kind]
        loose = [o for o in outs if kind in o]
        named[kind] = (exact or loose or [kind])[0]
    return inp, named


def normalization_name(spec: PreprocessSpec) -> str | None:
    for name, (mean, std) in NORMALIZATIONS.items():
        if tuple(mean) == tuple(spec.mean) and tuple(std) == tuple(spec.std):
            return name
    return None


def tool_versions() -> dict[str, str]:
    versions = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(path: Path, fmt: str, precision: str, graph: FusedGraph, threshold: dict[str, Any],
                   accuracy: dict[str, Any], quantization: dict[str, Any] | None, export_info: dict[str, Any],
                   inference_precision_hint: str = "f32") -> dict[str, Any]:
    """Manifest dict for one file (model_file / sha256 / format / schema_version are added by write_manifest)."""
    s = graph.image_size
    input_name, output_names = io_names(path, fmt)
    engine = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "ai-edge-litert"}[fmt]
    return {
        "precision": precision,
        "runtime": {"engine": engine, "inference_precision_hint": inference_precision_hint,
                    **({"note": f"compile with INFERENCE_PRECISION_HINT={inference_precision_hint!r}: on AMX CPUs "
                                f"OpenVINO otherwise runs bf16 silently"} if fmt == "openvino" else {})},
        # input/outputs are shared by every format in edge.manifest's layout: canonical names there, the
        # tensor names each converter produced (e.g. TFLite's "serving_default_score_output") per file.
        "input": {"name": INPUT_NAME, "shape": [1, 3, s, s], **graph.spec.to_dict(),
                  "normalization": normalization_name(graph.spec), "preprocessing": PREPROCESSING},
        "outputs": {"anomaly_map": {"name": "anomaly_map", "shape": [1, 1, s, s],
                                    "meaning": "Σ_k upsample(1 − cos(f_t^k, f_s^k)) at input resolution"},
                    "score": {"name": "score", "shape": [1], "meaning": "max of anomaly_map"},
                    "decision": "anomalous when score > threshold"},
        "graph_io": {"input": input_name, **output_names},
        "model": {**graph.info, "graph": "teacher + student + distance head fused, BatchNorm folded"},
        "quantization": quantization,
        "threshold": threshold,
        "accuracy": accuracy,
        "export": {**export_info, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "versions": tool_versions()},
    }


def write_file_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    """Validate and write ``<stem>.json`` beside ``path`` (edge.manifest adds sha256 and schema fields)."""
    return write_manifest(path, json_safe(manifest))

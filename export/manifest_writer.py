"""The manifest written beside each exported file (schema: edge.manifest, contract "Exported graphs")."""
from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.engines import installed_version
from edge.formats import FORMATS, get_format
from edge.jsonsafe import json_safe
from edge.manifest import GraphIO, write_manifest
from edge.preprocess import NORMALIZATIONS, PreprocessSpec

from .graph import FusedGraph

# Provenance: torch, every format's runtime and converter distributions (import name → pip name), numpy, OpenCV.
VERSIONED_PACKAGES = tuple(dict.fromkeys(
    ["torch"] + [p for f in FORMATS.values() for p in (
        f.runtime_package, *(m.split(".")[0].replace("_", "-") for ms in f.converters.values() for m in ms))]
    + ["numpy", "opencv-python-headless"]))
INPUT_NAME = "image"
PREPROCESSING = ("edge.preprocess: image files decoded as input.decode says; RGB uint8 → fit (input.fit) and resize "
                 "(input.resize) to "
                 "image_size×image_size "
                 "→ x/255 → (x − mean)/std → CHW float32, batch of 1 (normalisation is NOT in the graph)")


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


def build_manifest(fmt: str, precision: str, graph: FusedGraph, threshold: dict[str, Any],
                   accuracy: dict[str, Any], quantization: dict[str, Any] | None, export_info: dict[str, Any],
                   graph_io: GraphIO, inference_precision_hint: str = "f32",
                   runtime_note: str | None = None) -> dict[str, Any]:
    """Manifest dict for one file (model_file / sha256 / format / schema_version are added by write_manifest).

    ``graph_io``: the tensor names the engine found in this very file when dcam-export evaluated it
    (``edge.engines.Engine.graph_io``), which the runtime then selects exactly.  ``runtime_note``: the
    format writer's ``RUNTIME_NOTE``.
    """
    s = graph.image_size
    return {
        "precision": precision,
        "runtime": {"engine": get_format(fmt).engine, "inference_precision_hint": inference_precision_hint,
                    # the engine version the accuracy figures below were measured with (edge warns when older)
                    "checked_with": {package: version for package in [get_format(fmt).runtime_package]
                                     if (version := installed_version(package))},
                    **({"note": runtime_note} if runtime_note else {})},
        # input/outputs are shared by every format in edge.manifest's layout: canonical names there, the
        # tensor names each converter produced (e.g. TFLite's "serving_default_score_output") per file.
        "input": {"name": INPUT_NAME, "shape": [1, 3, s, s], **graph.spec.to_dict(),
                  "normalization": normalization_name(graph.spec), "preprocessing": PREPROCESSING},
        "outputs": {"anomaly_map": {"name": "anomaly_map", "shape": [1, 1, s, s],
                                    "meaning": "Σ_k upsample(1 − cos(f_t^k, f_s^k)) at input resolution"},
                    "score": {"name": "score", "shape": [1], "meaning": "max of anomaly_map"},
                    "decision": "anomalous when score > threshold"},
        "graph_io": graph_io.to_json(),
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

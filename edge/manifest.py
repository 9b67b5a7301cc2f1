"""Model manifest: the JSON file ``<model-file-stem>.json`` beside every exported model (schema_version 1).

``dcam.onnx``, ``dcam.xml`` and ``dcam.tflite`` share the stem, so ``dcam.json`` holds what they have
in common (input, outputs, model) once and one entry per file under ``files`` (sha256, format,
precision, runtime hint, threshold, accuracy); ``dcam.int8.*`` → ``dcam.int8.json``.  Callers see one
flat dict per model file (common keys + that file's entry).  The manifest carries
everything the edge runtime needs besides the graph: preprocessing, output names, the
OpenVINO precision hint, the anomaly threshold(s) and the sha256 of the model file(s), so a
model and its threshold can never be mixed up silently.  Pure stdlib + numpy-free.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from edge.devices import ENGINE_BY_SUFFIX
from edge.jsonsafe import json_safe
from edge.preprocess import PreprocessSpec

SCHEMA_VERSION = 1
FORMATS: dict[str, str] = {suffix: e.format for suffix, e in ENGINE_BY_SUFFIX.items()}  # ".onnx" → "onnx", ...
PRECISIONS = ("fp32", "int8")
# Keys shared by every file of one export; all other keys belong to one model file's entry.
COMMON_KEYS = ("schema_version", "package_version", "input", "outputs", "model")
REQUIRED_KEYS = ("schema_version", "model_file", "model_sha256", "format", "precision", "input", "outputs",
                 "threshold")
DEFAULT_OUTPUTS = {"anomaly_map": {"name": "anomaly_map"}, "score": {"name": "score"}}


class ManifestError(ValueError):
    """A manifest is missing, corrupt, of an unknown schema, or does not match its model file."""


def package_version() -> str:
    """Installed version of the ``dcam-edge`` distribution ("unknown" when running from a checkout)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("dcam-edge")
    except PackageNotFoundError:
        return "unknown"


def manifest_path_for(model_path: str | Path) -> Path:
    """``<dir>/<model-file-stem>.json`` (dcam.int8.onnx → dcam.int8.json, dcam.xml → dcam.json)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".json")


def find_manifest(model_path: str | Path) -> Path:
    """The manifest file that describes ``model_path`` (it may not exist)."""
    return manifest_path_for(model_path)


def weights_path_for(model_path: str | Path) -> Path | None:
    """The OpenVINO weights file (.bin) that belongs to an .xml, else None."""
    model_path = Path(model_path)
    return model_path.with_suffix(".bin") if model_path.suffix.lower() == ".xml" else None


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks (models can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def format_for(model_path: str | Path) -> str:
    """Manifest "format" from the model file extension (ManifestError for anything else)."""
    suffix = Path(model_path).suffix.lower()
    if suffix not in FORMATS:
        raise ManifestError(f"{model_path}: unknown model extension {suffix!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[suffix]


@dataclass
class Manifest:
    """A loaded manifest: the raw dict plus typed accessors used by the runtime."""

    path: Path
    model_path: Path
    data: dict[str, Any]

    @property
    def format(self) -> str:
        return str(self.data["format"])

    @property
    def precision(self) -> str:
        return str(self.data["precision"])

    @property
    def inference_precision_hint(self) -> str:
        """OpenVINO INFERENCE_PRECISION_HINT; "f32" unless the exporter asked for something else."""
        return str(self.data.get("runtime", {}).get("inference_precision_hint", "f32"))

    @property
    def categories(self) -> list[str]:
        return list(self.data.get("model", {}).get("categories", []))

    def preprocess_spec(self) -> PreprocessSpec:
        try:
            return PreprocessSpec.from_dict(self.data["input"])
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{self.path}: 'input' must hold image_size, mean and std ({e})") from None

    def output_name(self, kind: str) -> str:
        """Graph output name for "anomaly_map" or "score"."""
        return str(self.data.get("outputs", {}).get(kind, {}).get("name", kind))

    def check_accuracy_guard(self) -> None:
        """Refuse a file that failed dcam-export's int8 accuracy guard unless the drop was accepted there."""
        guard = (self.data.get("accuracy") or {}).get("guard") or {}
        if guard.get("passed") is False and not guard.get("allowed_by_flag"):
            raise ManifestError(f"{self.path}: {self.model_path.name} failed the export accuracy guard "
                                f"({'; '.join(map(str, guard.get('violations') or [])) or 'see accuracy.guard'}); "
                                f"re-export it, or accept the drop with dcam-export --allow-accuracy-drop")

    def threshold(self, category: str | None = None) -> float:
        """Global threshold, or the per-category one (ManifestError listing those available)."""
        th = self.data["threshold"]
        if category is None:
            return float(th["global"])
        per = th.get("per_category") or {}
        if category not in per:
            raise ManifestError(f"{self.path}: no threshold for category {category!r}; "
                                f"available: {sorted(per) or 'none (use the global threshold)'}")
        return float(per[category])


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (expected beside the model as <model-file-stem>.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: corrupt manifest ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: corrupt manifest (top level is not a JSON object)")
    return data


def validate_manifest(data: Mapping[str, Any], where: str | Path) -> None:
    """Check schema version, required keys and the threshold section; ManifestError naming ``where``."""
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{where}: schema_version is {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ManifestError(f"{where}: missing keys {missing}")
    if data["format"] not in FORMATS.values():
        raise ManifestError(f"{where}: format {data['format']!r}, expected one of {sorted(FORMATS.values())}")
    if data["precision"] not in PRECISIONS:
        raise ManifestError(f"{where}: precision {data['precision']!r}, expected one of {list(PRECISIONS)}")
    th = data["threshold"]
    if not isinstance(th, dict) or not isinstance(th.get("global"), (int, float)):
        raise ManifestError(f"{where}: threshold.global must be a number")
    for cat, v in (th.get("per_category") or {}).items():
        if not isinstance(v, (int, float)):
            raise ManifestError(f"{where}: threshold.per_category[{cat!r}] must be a number")
    # json.loads accepts NaN/Infinity: an infinite threshold never alarms, a NaN one always does.
    bad = _non_finite_key(th, "threshold")
    if bad is not None:
        raise ManifestError(f"{where}: {bad} is not a finite number (NaN or Infinity); re-calibrate or re-export")


def _non_finite_key(value: Any, key: str) -> str | None:
    """Dotted key of the first NaN/±inf number inside ``value`` (thresholds and their score statistics)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _non_finite_key(v, f"{key}.{k}" if isinstance(value, dict) else f"{key}[{k}]")
        if found is not None:
            return found
    return None


def verify_model_files(model_path: Path, data: Mapping[str, Any], where: Path) -> None:
    """Compare the sha256 of the model (and OpenVINO .bin) with the manifest."""
    if not model_path.is_file():
        raise ManifestError(f"{model_path}: model file not found")
    actual = sha256_file(model_path)
    if actual != data["model_sha256"]:
        raise ManifestError(f"{where}: model_sha256 mismatch for {model_path.name} (manifest "
                            f"{str(data['model_sha256'])[:12]}…, file {actual[:12]}…): the model was replaced "
                            f"or corrupted; re-export or re-write the manifest")
    weights = weights_path_for(model_path)
    if weights is not None and "weights_sha256" in data:
        if not weights.is_file():
            raise ManifestError(f"{weights}: OpenVINO weights file not found")
        if sha256_file(weights) != data["weights_sha256"]:
            raise ManifestError(f"{where}: weights_sha256 mismatch for {weights.name}")


def load_manifest(model_path: str | Path, verify_sha256: bool = True) -> Manifest:
    """Load and validate the model's manifest; with ``verify_sha256`` also hash the model file(s).

    Raises ManifestError (naming the file) on a missing/corrupt manifest, an unknown schema,
    or a sha256 mismatch.
    """
    model_path = Path(model_path)
    path = find_manifest(model_path)
    data = _flat_entry(_read_json(path), model_path.name, path)
    validate_manifest(data, path)
    if verify_sha256:
        verify_model_files(model_path, data, path)
    return Manifest(path=path, model_path=model_path, data=data)


def _flat_entry(document: Mapping[str, Any], model_name: str, where: Path) -> dict[str, Any]:
    """Common keys + the entry of ``model_name`` as one flat dict."""
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{where}: schema_version is {document.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    files = document.get("files")
    if not isinstance(files, dict):
        raise ManifestError(f"{where}: corrupt manifest (no 'files' section)")
    if model_name not in files or not isinstance(files[model_name], dict):
        raise ManifestError(f"{where}: has no entry for {model_name!r} (it describes {sorted(files) or 'nothing'})")
    flat = {k: copy.deepcopy(document[k]) for k in COMMON_KEYS if k in document}
    flat.update(copy.deepcopy(files[model_name]))
    return flat


def _store_entry(path: Path, flat: Mapping[str, Any]) -> None:
    """Merge one model file's flat dict into ``path`` (entries of other files are kept if they share the common part)."""
    common = {k: copy.deepcopy(flat[k]) for k in COMMON_KEYS if k in flat}
    entry = {k: copy.deepcopy(v) for k, v in flat.items() if k not in COMMON_KEYS}
    files: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}
        # Entries from a different export (other input/model) would be stale: drop them.
        if isinstance(old, dict) and isinstance(old.get("files"), dict) and \
                all(old.get(k) == common.get(k) for k in ("input", "model", "outputs")):
            files = old["files"]
    files[str(flat["model_file"])] = entry
    _atomic_write_json(path, {**common, "files": files})


def _atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    # Write-then-rename so a crash (or power cut on a Pi) never leaves a half-written manifest.
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; keep the old file's mode (or the usual 0644) so the service user can read it.
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(json_safe(data), f, indent=2, sort_keys=False, allow_nan=False)  # strict JSON, never NaN
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(model_path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write this model file's entry into ``<model-file-stem>.json`` and return the manifest path.

    ``model_file``, ``model_sha256`` (+ ``weights_sha256`` for OpenVINO), ``format`` and
    ``schema_version`` are always (re)computed from the file; ``package_version``,
    ``runtime.inference_precision_hint`` ("f32") and ``outputs`` get defaults when absent.
    The result is validated before it is written.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ManifestError(f"{model_path}: model file not found; write the model before its manifest")
    out = copy.deepcopy(dict(data))
    out["schema_version"] = SCHEMA_VERSION
    out.setdefault("package_version", package_version())
    out["model_file"] = model_path.name
    out["model_sha256"] = sha256_file(model_path)
    weights = weights_path_for(model_path)
    if weights is not None:
        if not weights.is_file():
            raise ManifestError(f"{weights}: OpenVINO weights file not found")
        out["weights_file"] = weights.name
        out["weights_sha256"] = sha256_file(weights)
    out["format"] = format_for(model_path)
    out.setdefault("precision", "int8" if ".int8" in model_path.name else "fp32")
    out.setdefault("runtime", {}).setdefault("inference_precision_hint", "f32")
    out.setdefault("outputs", copy.deepcopy(DEFAULT_OUTPUTS))
    path = manifest_path_for(model_path)
    validate_manifest(out, path)
    _store_entry(path, out)
    return path


def backup_manifest(model_path: str | Path) -> Path:
    """Copy the manifest to ``<manifest name>.bak-<UTC timestamp>`` and return the backup path."""
    path = find_manifest(model_path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    shutil.copy2(path, backup)
    return backup


def update_threshold(model_path: str | Path, thresholds: Mapping[str, Any], backup: bool = True,
                     verify_sha256: bool = True) -> Path:
    """Merge a new threshold section into the manifest (backup ``<manifest>.bak-<timestamp>``); return its path.

    ``thresholds`` is a manifest "threshold" section (see ``edge.calibration.threshold_section``);
    keys it holds replace the old ones, and ``per_category`` entries are merged per category so
    calibrating one category keeps the others.  The model sha256 is verified first so a
    threshold is never attached to the wrong model.
    """
    manifest = load_manifest(model_path, verify_sha256=verify_sha256)
    data = copy.deepcopy(manifest.data)
    section = dict(data.get("threshold", {}))
    new = copy.deepcopy(dict(thresholds))
    per = dict(section.get("per_category") or {})
    per.update(new.pop("per_category", None) or {})
    stats = dict(section.get("statistics") or {})
    new_stats = new.pop("statistics", None) or {}
    per_stats = dict(stats.get("per_category") or {})
    per_stats.update(new_stats.get("per_category") or {})
    stats.update(new_stats)
    if per_stats:
        stats["per_category"] = per_stats
    section.update(new)
    section["per_category"] = per
    section["statistics"] = stats
    data["threshold"] = section
    validate_manifest(data, manifest.path)
    if backup:
        backup_manifest(model_path)
    _store_entry(manifest.path, data)
    return manifest.path

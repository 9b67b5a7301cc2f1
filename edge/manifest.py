"""Model manifest: the JSON file ``<model-file-stem>.json`` beside every exported model file (schema version 2).

This docstring is THE description of the schema.  ``dcam.onnx``, ``dcam.xml`` and ``dcam.tflite``
share the stem, so ``dcam.json`` holds what they have in common once and one entry per file under
``files``; ``dcam.int8.*`` → ``dcam.int8.json``.  The manifest carries everything the edge runtime
needs besides the graph (preprocessing, output names, the OpenVINO precision hint, the anomaly
threshold(s), the sha256 of the model file(s)), so a model and its threshold can never be mixed up
silently.  Strict JSON (never NaN).  Layout::

    {
      "schema_version": 2,
      "package_version": "0.1.0",            dcam-edge that wrote it
      "input":   {"name", "shape": [1, 3, S, S], "image_size", "mean", "std", "layout": "NCHW",
                  "dtype", "color", "resize", "fit", "decode", "normalization", "preprocessing"}
                                                                     edge.preprocess.PreprocessSpec
      "outputs": {"anomaly_map": {"name", "shape", "meaning"}, "score": {...}, "decision"}   the graph contract
      "model":   {"method", "backbone", "categories", "blur_sigma", "gmacs", ...}             optional
      "files": {
        "<model file name>": {
          "model_file", "model_sha256",
          "weights_file", "weights_sha256",    the side file of formats that have one (OpenVINO .bin)
          "format":    "onnx" | "openvino" | "tflite"                 (edge.formats)
          "precision": "fp32" | "fp16" | "int8",
          "runtime":   {"engine": edge.engines name, "inference_precision_hint": "f32" | "bf16" | "f16", "note",
                        "checked_with": {runtime package: version dcam-export measured the file with}},
          "graph_io":  {"input", "anomaly_map", "score"}   tensor names as the engine sees them IN THIS FILE,
                       resolved once by dcam-export; the runtime selects its outputs by these names exactly
                       ("score": null — the file has no score output, the runtime takes the map maximum).
                       Absent in hand-written manifests: the runtime then matches ``outputs.*.name`` by
                       name/rank, as for a file without manifest.
          "threshold": {"global", "per_category": {category: value}, "mode", "target_fpr", "fit",
                        "statistics", "source", ...}   finite numbers only (NaN / Infinity are refused)
          "accuracy":  export-time figures; "guard": {"passed", "violations", "allowed_by_flag", "limits", "covers"}
          "quantization": what the int8 quantiser did (null for fp32),
          "export":    {"tool", "config", "data", "warnings", "created_at", "versions"}
          ... any other key is kept as written
        }
      }
    }

Reading and writing: ``read_document`` / ``write_document`` are the one reader and writer of a whole file
(``ManifestDocument`` of ``FileEntry``); ``load_manifest`` gives one model file's validated, sha256-checked
view (``Manifest``: typed accessors, plus ``data``, the common keys and that file's entry as one flat dict);
``write_manifest`` writes one file's entry from such a flat dict; ``update_threshold`` merges a new
threshold section.

Version 1 (files written before schema 2, same layout): ``schema_version`` 1, ``graph_io`` written by
dcam-export but never read, ``runtime.engine`` of TFLite files "ai-edge-litert" (the package, not the
engine).  ``read_document`` migrates it on reading (graph_io is used as written, the engine is renamed);
a rewrite (edge-calibrate) stores version 2.  Pure stdlib; imports no engine and no torch.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from edge.formats import FORMAT_NAMES, FORMATS, PRECISIONS, format_for_path, parse_model_filename
from edge.jsonsafe import json_safe
from edge.preprocess import PreprocessSpec

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_OUTPUTS = {"anomaly_map": {"name": "anomaly_map"}, "score": {"name": "score"}}
# Keys of one file's entry that the runtime reads (typed in FileEntry); every other key is kept in FileEntry.extra.
_ENTRY_REQUIRED = ("model_file", "model_sha256", "format", "precision", "threshold")
_ENTRY_KNOWN = _ENTRY_REQUIRED + ("weights_file", "weights_sha256", "runtime", "graph_io")
_COMMON_REQUIRED = ("input", "outputs")
_COMMON_KEYS = ("schema_version", "package_version") + _COMMON_REQUIRED + ("model",)


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


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks (models can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ the types
@dataclass(frozen=True)
class GraphIO:
    """Tensor names of one model file as its engine reports them (``graph_io``), resolved once at export."""

    anomaly_map: str
    score: str | None = None  # None: no score output (the runtime takes the map maximum)
    input: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "anomaly_map": self.anomaly_map, "score": self.score}

    @classmethod
    def from_json(cls, raw: Any, where: str | Path) -> GraphIO:
        if not isinstance(raw, dict) or not isinstance(raw.get("anomaly_map"), str) or \
                any(raw.get(k) is not None and not isinstance(raw[k], str) for k in ("score", "input")):
            raise ManifestError(f"{where}: graph_io must map anomaly_map (and score, input) to tensor names")
        return cls(raw["anomaly_map"], raw.get("score"), raw.get("input"))


@dataclass
class FileEntry:
    """One model file's part of a manifest (``files[<name>]``)."""

    model_file: str
    model_sha256: str
    format: str
    precision: str
    threshold: dict[str, Any]
    runtime: dict[str, Any] = field(default_factory=dict)
    graph_io: GraphIO | None = None
    weights_file: str | None = None
    weights_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # accuracy, quantization, export, ...: kept verbatim

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str | Path) -> FileEntry:
        """Parse and validate one entry; ManifestError naming ``where`` (one line) for anything wrong."""
        missing = [k for k in _ENTRY_REQUIRED if k not in raw]
        if missing:
            raise ManifestError(f"{where}: missing keys {missing}")
        if raw["format"] not in FORMATS:
            raise ManifestError(f"{where}: format {raw['format']!r}, expected one of {sorted(FORMAT_NAMES)}")
        if raw["precision"] not in PRECISIONS:
            raise ManifestError(f"{where}: precision {raw['precision']!r}, expected one of {list(PRECISIONS)}")
        _check_threshold(raw["threshold"], where)
        graph_io = raw.get("graph_io")
        return cls(model_file=str(raw["model_file"]), model_sha256=str(raw["model_sha256"]), format=raw["format"],
                   precision=raw["precision"], threshold=copy.deepcopy(raw["threshold"]),
                   runtime=copy.deepcopy(dict(raw.get("runtime") or {})),
                   graph_io=GraphIO.from_json(graph_io, where) if graph_io is not None else None,
                   weights_file=raw.get("weights_file"), weights_sha256=raw.get("weights_sha256"),
                   extra={k: copy.deepcopy(v) for k, v in raw.items() if k not in _ENTRY_KNOWN})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_file": self.model_file, "model_sha256": self.model_sha256}
        if self.weights_file is not None:
            out.update(weights_file=self.weights_file, weights_sha256=self.weights_sha256)
        out.update(format=self.format, precision=self.precision, runtime=copy.deepcopy(self.runtime))
        if self.graph_io is not None:
            out["graph_io"] = self.graph_io.to_json()
        out["threshold"] = copy.deepcopy(self.threshold)
        out.update(copy.deepcopy(self.extra))
        return out


@dataclass(frozen=True)
class UnreadableEntry:
    """An entry this reader could not parse (hand-edited): written back verbatim, refused when loaded."""

    raw: Any
    error: str


@dataclass
class ManifestDocument:
    """A whole ``<stem>.json``: what every file of one export shares, and one entry per model file."""

    input: dict[str, Any]
    outputs: dict[str, Any]
    files: dict[str, FileEntry] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    package_version: str = field(default_factory=package_version)
    schema_version: int = SCHEMA_VERSION
    unreadable: dict[str, UnreadableEntry] = field(default_factory=dict)

    def shares_export_with(self, other: ManifestDocument) -> bool:
        """Same input, model and outputs: entries of one export, which may live in one document."""
        return (self.input, self.model, self.outputs) == (other.input, other.model, other.outputs)

    def to_json(self) -> dict[str, Any]:
        files: dict[str, Any] = {name: copy.deepcopy(e.raw) for name, e in self.unreadable.items()}
        files.update({name: e.to_json() for name, e in self.files.items()})
        common = {"schema_version": self.schema_version, "package_version": self.package_version,
                  "input": copy.deepcopy(self.input), "outputs": copy.deepcopy(self.outputs)}
        if self.model is not None:
            common["model"] = copy.deepcopy(self.model)
        return {**common, "files": files}


# ----------------------------------------------------------------------------------- reader / writer
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


def _migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A version-1 document as version 2: same layout; runtime.engine names the engine, not its package."""
    out = copy.deepcopy(raw)
    engine_of_package = {f.runtime_package: f.engine for f in FORMATS.values()}
    for entry in (out.get("files") or {}).values():
        runtime = entry.get("runtime") if isinstance(entry, dict) else None
        if isinstance(runtime, dict) and runtime.get("engine") in engine_of_package:
            runtime["engine"] = engine_of_package[runtime["engine"]]
    out["schema_version"] = SCHEMA_VERSION
    return out


def read_document(path: str | Path) -> ManifestDocument:
    """The one reader: parse ``path`` (migrating version 1) into a ManifestDocument; ManifestError naming it.

    Entries are parsed one by one; one that does not parse is kept as an UnreadableEntry so that a broken
    entry of one file never blocks the others (loading that file reports its error).
    """
    path = Path(path)
    raw = _read_json(path)
    version = raw.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ManifestError(f"{path}: schema_version is {version!r}, expected one of "
                            f"{', '.join(map(str, READABLE_VERSIONS))}")
    if version == 1:
        raw = _migrate_v1(raw)
    files = raw.get("files")
    if not isinstance(files, dict):
        raise ManifestError(f"{path}: corrupt manifest (no 'files' section)")
    missing = [k for k in _COMMON_REQUIRED if k not in raw]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}")
    doc = ManifestDocument(input=copy.deepcopy(raw["input"]), outputs=copy.deepcopy(raw["outputs"]),
                           model=copy.deepcopy(raw.get("model")),
                           package_version=str(raw.get("package_version") or "unknown"),
                           schema_version=SCHEMA_VERSION)
    for name, entry in files.items():
        try:
            if not isinstance(entry, dict):
                raise ManifestError(f"{path}: corrupt manifest (entry {name!r} is not a JSON object)")
            doc.files[name] = FileEntry.from_json(entry, path)
        except ManifestError as e:
            doc.unreadable[name] = UnreadableEntry(entry, str(e))
    return doc


def write_document(path: str | Path, doc: ManifestDocument) -> Path:
    """The one writer: ``doc`` as strict JSON, atomically (write-then-rename), mode kept (else 0644)."""
    path = Path(path)
    doc.schema_version = SCHEMA_VERSION
    _atomic_write_json(path, doc.to_json())
    return path


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


def _check_threshold(th: Any, where: str | Path) -> None:
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


# ------------------------------------------------------------------------------ one model file's view
@dataclass
class Manifest:
    """One model file's manifest: its document and entry, with the typed accessors the runtime uses."""

    path: Path
    model_path: Path
    document: ManifestDocument
    entry: FileEntry

    @cached_property
    def data(self) -> dict[str, Any]:
        """The common keys and this file's entry as one flat dict (a copy: edit it, then write_manifest)."""
        doc = self.document.to_json()
        return {**{k: doc[k] for k in _COMMON_KEYS if k in doc}, **self.entry.to_json()}

    @property
    def format(self) -> str:
        return self.entry.format

    @property
    def precision(self) -> str:
        return self.entry.precision

    @property
    def inference_precision_hint(self) -> str:
        """OpenVINO INFERENCE_PRECISION_HINT; "f32" unless the exporter asked for something else."""
        return str(self.entry.runtime.get("inference_precision_hint", "f32"))

    @property
    def categories(self) -> list[str]:
        return list((self.document.model or {}).get("categories", []))

    @property
    def graph_io(self) -> GraphIO | None:
        """The file's tensor names resolved at export (None in hand-written manifests)."""
        return self.entry.graph_io

    def preprocess_spec(self) -> PreprocessSpec:
        try:
            return PreprocessSpec.from_dict(self.document.input)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{self.path}: 'input' must hold image_size, mean and std, and valid resize, fit "
                                f"and decode policies ({e})") from None

    def output_name(self, kind: str) -> str:
        """The graph contract's name for "anomaly_map" or "score" (``outputs``; graph_io has the file's own)."""
        return str(self.document.outputs.get(kind, {}).get("name", kind))

    def check_accuracy_guard(self) -> None:
        """Refuse a file that failed dcam-export's int8 accuracy guard unless the drop was accepted there."""
        from edge.accuracy import recorded_guard  # the one reader of accuracy.guard (bench-latency shows it too)

        guard = recorded_guard(self.data.get("accuracy"))
        if guard is not None and guard.refuses:
            raise ManifestError(f"{self.path}: {self.model_path.name} failed the export accuracy guard "
                                f"({'; '.join(guard.violations) or 'see accuracy.guard'}); "
                                f"re-export it, or accept the drop with dcam-export --allow-accuracy-drop")

    def threshold(self, category: str | None = None) -> float:
        """Global threshold, or the per-category one (ManifestError listing those available)."""
        th = self.entry.threshold
        if category is None:
            return float(th["global"])
        per = th.get("per_category") or {}
        if category not in per:
            raise ManifestError(f"{self.path}: no threshold for category {category!r}; "
                                f"available: {sorted(per) or 'none (use the global threshold)'}")
        return float(per[category])


def verify_model_files(model_path: Path, entry: FileEntry, where: Path) -> None:
    """Compare the sha256 of the model (and its side file) with the manifest entry."""
    if not model_path.is_file():
        raise ManifestError(f"{model_path}: model file not found")
    actual = sha256_file(model_path)
    if actual != entry.model_sha256:
        raise ManifestError(f"{where}: model_sha256 mismatch for {model_path.name} (manifest "
                            f"{entry.model_sha256[:12]}…, file {actual[:12]}…): the model was replaced "
                            f"or corrupted; re-export or re-write the manifest")
    weights = FORMATS[entry.format].weights_path(model_path)
    if weights is not None and entry.weights_sha256 is not None:
        if not weights.is_file():
            raise ManifestError(f"{weights}: OpenVINO weights file not found")
        if sha256_file(weights) != entry.weights_sha256:
            raise ManifestError(f"{where}: weights_sha256 mismatch for {weights.name}")


def load_manifest(model_path: str | Path, verify_sha256: bool = True) -> Manifest:
    """Load and validate the model's manifest; with ``verify_sha256`` also hash the model file(s).

    Raises ManifestError (naming the file) on a missing/corrupt manifest, an unknown schema,
    or a sha256 mismatch.
    """
    model_path = Path(model_path)
    path = manifest_path_for(model_path)
    doc = read_document(path)
    name = model_path.name
    if name in doc.unreadable:
        raise ManifestError(doc.unreadable[name].error)
    if name not in doc.files:
        raise ManifestError(f"{path}: has no entry for {name!r} (it describes "
                            f"{sorted({*doc.files, *doc.unreadable}) or 'nothing'})")
    entry = doc.files[name]
    if verify_sha256:
        verify_model_files(model_path, entry, path)
    return Manifest(path=path, model_path=model_path, document=doc, entry=entry)


def _split_flat(data: Mapping[str, Any], where: Path) -> tuple[ManifestDocument, FileEntry]:
    """A flat dict (common keys + one entry, as ``Manifest.data``) → its document part and its entry."""
    missing = [k for k in _COMMON_REQUIRED if k not in data]
    if missing:
        raise ManifestError(f"{where}: missing keys {missing}")
    entry = FileEntry.from_json({k: v for k, v in data.items() if k not in _COMMON_KEYS}, where)
    doc = ManifestDocument(input=copy.deepcopy(dict(data["input"])), outputs=copy.deepcopy(dict(data["outputs"])),
                           model=copy.deepcopy(data.get("model")),
                           package_version=str(data.get("package_version") or package_version()))
    return doc, entry


def _store_entry(path: Path, doc: ManifestDocument, entry: FileEntry) -> None:
    """Put ``entry`` into the document at ``path``, keeping the entries of the other files of the same export."""
    try:
        old = read_document(path) if path.is_file() else None
    except ManifestError:
        old = None  # unreadable: replaced
    if old is not None and old.shares_export_with(doc):
        doc.files, doc.unreadable = old.files, old.unreadable
        doc.unreadable.pop(entry.model_file, None)
    # Entries from a different export (other input/model) would be stale: they are dropped.
    doc.files[entry.model_file] = entry
    write_document(path, doc)


def write_manifest(model_path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write this model file's entry into ``<model-file-stem>.json`` and return the manifest path.

    ``data`` is a flat dict (common keys + the entry, as ``Manifest.data``).  ``model_file``,
    ``model_sha256`` (+ ``weights_file``/``weights_sha256``), ``format`` and ``schema_version`` are
    always (re)computed from the file; ``package_version``, ``precision`` (from the file name),
    ``runtime.engine``, ``runtime.inference_precision_hint`` ("f32") and ``outputs`` get defaults when
    absent.  The result is validated before it is written.
    """
    model_path = Path(model_path)
    fmt = format_for_path(model_path, ManifestError)
    if not model_path.is_file():
        raise ManifestError(f"{model_path}: model file not found; write the model before its manifest")
    out = copy.deepcopy(dict(data))
    out.pop("schema_version", None)
    out["model_file"] = model_path.name
    out["model_sha256"] = sha256_file(model_path)
    weights = fmt.weights_path(model_path)
    if weights is not None:
        if not weights.is_file():
            raise ManifestError(f"{weights}: OpenVINO weights file not found")
        out["weights_file"] = weights.name
        out["weights_sha256"] = sha256_file(weights)
    out["format"] = fmt.name
    out.setdefault("precision", parse_model_filename(model_path).precision)
    runtime = out.setdefault("runtime", {})
    runtime.setdefault("engine", fmt.engine)
    runtime.setdefault("inference_precision_hint", "f32")
    out.setdefault("outputs", copy.deepcopy(DEFAULT_OUTPUTS))
    path = manifest_path_for(model_path)
    doc, entry = _split_flat(out, path)
    _store_entry(path, doc, entry)
    return path


def forget_entry(model_path: str | Path) -> None:
    """Drop the entry of ``model_path`` from its manifest (the file was replaced, so the entry is stale);
    the manifest is removed when no entry is left, and an unreadable one is left alone."""
    path = manifest_path_for(model_path)
    try:
        doc = read_document(path) if path.is_file() else None
    except ManifestError:
        return
    name = Path(model_path).name
    if doc is None or (doc.files.pop(name, None) is None and doc.unreadable.pop(name, None) is None):
        return
    if doc.files or doc.unreadable:
        write_document(path, doc)
    else:
        path.unlink()


def backup_manifest(model_path: str | Path) -> Path:
    """Copy the manifest to ``<manifest name>.bak-<UTC timestamp>`` and return the backup path."""
    path = manifest_path_for(model_path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    shutil.copy2(path, backup)
    return backup


def update_threshold(model_path: str | Path, thresholds: Mapping[str, Any], backup: bool = True,
                     verify_sha256: bool = True) -> Path:
    """Merge a new threshold section into the manifest (backup ``<manifest>.bak-<timestamp>``); return its path.

    ``thresholds`` is a manifest "threshold" section (see ``edge.thresholds.threshold_section``);
    keys it holds replace the old ones, and ``per_category`` entries are merged per category so
    calibrating one category keeps the others.  The model sha256 is verified first so a
    threshold is never attached to the wrong model.
    """
    manifest = load_manifest(model_path, verify_sha256=verify_sha256)
    section = copy.deepcopy(manifest.entry.threshold)
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
    _check_threshold(section, manifest.path)
    if backup:
        backup_manifest(model_path)
    manifest.entry.threshold = section
    write_document(manifest.path, manifest.document)
    return manifest.path

"""What bench knows about its inputs before timing: model files (manifest, size, GMACs), runs, dataset, frames."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.macs import model_gmacs
from edge.devices import ENGINE_BY_FORMAT
from edge.formats import FORMAT_NAMES, PRECISIONS, SUFFIXES, format_for_path, is_model_file, parse_model_filename

_SUFFIX_WORDS = ", ".join(SUFFIXES[:-1]) + f" or {SUFFIXES[-1]}"  # ".onnx, .xml or .tflite"


def file_devices(fmt: str, devices: Sequence[str]) -> list[str]:
    """The requested devices the engine of ``fmt`` supports (``auto`` always: it resolves per file)."""
    support = ENGINE_BY_FORMAT[fmt]
    return [d for d in devices if d == "auto" or support.target(d) is not None]


class BenchError(ValueError):
    """Bad command-line input; the message names the option or file."""


def _sort_key(p: Path) -> tuple[Any, ...]:
    name = parse_model_filename(p)
    return (str(p.parent), FORMAT_NAMES.index(name.format), PRECISIONS.index(name.precision), p.name)


def resolve_models(model: Sequence[str], models: str | None) -> list[Path]:
    """Files of --model (in the given order) or every model file under --models (by directory, format,
    fp32 before int8). A missing path or unknown extension is bad input (BenchError); a file that exists
    but does not load becomes a failed row later."""
    if models:
        root = Path(models)
        if not root.is_dir():
            raise BenchError(f"--models {root}: directory not found")
        files = [p for p in root.rglob("*") if p.is_file() and is_model_file(p)]
        if not files:
            raise BenchError(f"--models {root}: no {_SUFFIX_WORDS} files found")
        return sorted(files, key=_sort_key)
    paths = [Path(m) for m in model]
    for p in paths:
        if not is_model_file(p):
            raise BenchError(f"--model {p}: unknown extension {p.suffix!r}; expected {_SUFFIX_WORDS}")
        if not p.is_file():
            raise BenchError(f"--model {p}: file not found")
    return list(dict.fromkeys(paths))  # keep the user's order, drop duplicates


def file_size_mb(path: Path) -> float:
    """Size on disk of everything the engine loads (an OpenVINO .xml needs its .bin)."""
    return format_for_path(path).size_bytes(path) / 1e6


@dataclass
class ModelFile:
    """One file to bench and what the parent process knows about it before timing."""

    path: Path
    label: str
    format: str
    manifest: dict[str, Any] | None
    manifest_note: str | None
    precision: str
    size_mb: float
    gmacs: float | None
    gmacs_source: str

    @property
    def spec(self) -> dict[str, Any] | None:
        return (self.manifest or {}).get("input")

    @property
    def architecture(self) -> tuple[str, str, int] | None:
        """(method, backbone, image size) from the manifest — the eager baseline it is compared with."""
        m, spec = self.manifest or {}, self.spec or {}
        model = m.get("model") or {}
        if not (model.get("method") and model.get("backbone") and spec.get("image_size")):
            return None
        return str(model["method"]), str(model["backbone"]), int(spec["image_size"])


def _label(path: Path, all_paths: Sequence[Path]) -> str:
    # Parent directory disambiguates dcam.onnx of two models; omit it when every file shares one.
    return path.name if len({p.parent for p in all_paths}) == 1 else f"{path.parent.name}/{path.name}"


def describe_file(path: Path, all_paths: Sequence[Path]) -> ModelFile:
    from edge.manifest import ManifestError, load_manifest, manifest_path_for
    manifest, note = None, None
    try:
        manifest = load_manifest(path, verify_sha256=True).data
    except ManifestError as e:
        note = f"manifest: {e}"
        manifest = _shared_sections(manifest_path_for(path))
        if manifest is not None:
            note += f"; preprocessing and architecture taken from the shared part of {manifest_path_for(path).name}"
    precision = (manifest or {}).get("precision") or parse_model_filename(path).precision
    gmacs, source = model_gmacs(path, manifest)
    return ModelFile(path, _label(path, all_paths), format_for_path(path).name, manifest, note,
                     precision, file_size_mb(path), gmacs, source)


def _shared_sections(path: Path) -> dict[str, Any] | None:
    """The format-independent "input" and "model" sections of a manifest that has no entry for this file.

    dcam.onnx / dcam.xml / dcam.tflite share dcam.json; its input spec and architecture hold for all of
    them even when this file's own entry is missing, and are all bench needs to preprocess and pick a baseline.
    """
    try:
        data = json.loads(path.read_text())
        spec = data["input"]
        if all(k in spec for k in ("image_size", "mean", "std")) and isinstance(data.get("model"), dict):
            return {"input": spec, "model": data["model"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def read_run_architecture(run_dir: str) -> tuple[str, str, int]:
    """(method, backbone, image size) of a dcam-train run, from config.json (no torch needed)."""
    path = Path(run_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
        return str(cfg["model"]["method"]), str(cfg["model"]["backbone"]), int(cfg["image_size"])
    except FileNotFoundError:
        raise BenchError(f"--run {run_dir}: {path} not found (expected a dcam-train run directory)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BenchError(f"--run {run_dir}: {path} is not a run config ({e})") from None


def dataset_samples(data: str, categories: str | None, files: Sequence[ModelFile]) -> list[dict[str, Any]]:
    """The test split of --data as plain dicts; categories default to the manifests' (else all).

    train.data.mvtec is torch-free by design (numpy/OpenCV only), so the edge install can list samples.
    """
    from train.data.mvtec import MVTecLayoutError, discover_categories, list_test_samples
    try:
        available = discover_categories(data)
        wanted = sorted({c for f in files for c in ((f.manifest or {}).get("model") or {}).get("categories", [])})
        chosen: Any = categories or (wanted if wanted and set(wanted) <= set(available) else "all")
        samples = list_test_samples(data, chosen)
    except MVTecLayoutError as e:
        raise BenchError(f"--data: {e}") from None
    return [{"path": str(s.path), "category": s.category, "label": s.label,
             "mask": str(s.mask_path) if s.mask_path else None} for s in samples]


def synthetic_frame(path: Path, size: int) -> Path:
    """A textured RGB JPEG (quality 95, like an IP-camera frame; smooth pattern + sensor noise), for E2E
    without --data."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 128 + 60 * np.sin(2 * np.pi * (6 * xx + 3 * yy)) * np.cos(2 * np.pi * 4 * yy)
    img = np.stack([base, base * 0.9 + 20, base * 0.8 + 30], axis=-1) + rng.normal(0, 6, (size, size, 3))
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path

"""``bench-latency``: latency, throughput, memory and accuracy of exported model files, against eager
PyTorch and the machine's measured GEMM peak.

    bench-latency --models DIR [--threads 1,2] [--runs 200] [--warmup 20] [--data DIR]
                  [--json OUT.json] [--markdown OUT.md]
    bench-latency --model dcam.onnx dcam.int8.xml ... [--run RUN_DIR]

Runs on the edge install (numpy, OpenCV, one engine; no torch). When torch is importable the same
run also times the paper-style eager pipeline (``bench.eager``) per architecture and thread count,
and every file's speed-up over it is a ratio of two medians from this one run.
Every measurement runs in its own process (``bench.worker``): peak RSS per model, no state shared
between engines, and a file that fails to load or crashes becomes a failed row.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench import report, stats
from bench.gemm import ENGINE_GEMM, GemmResult, gemm_env, reference_peak
from bench.macs import model_gmacs
from bench.worker import PROGRESS_TAG

MODEL_EXTENSIONS = {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite"}
FORMAT_ORDER = {"onnx": 0, "openvino": 1, "tflite": 2}
ENGINE_FOR_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
ROW_KEYS = ("model", "label", "format", "engine", "precision", "threads", "status", "error", "size_mb", "gmacs",
            "gmacs_source", "median_ms", "p90_ms", "p99_ms", "mean_ms", "fps", "e2e_median_ms", "e2e_p90_ms",
            "e2e_fps", "gmac_per_s", "peak_gmac_per_s", "peak_source", "peak_fraction", "peak_rss_mb",
            "speedup_vs_eager", "eager_median_ms", "image_auroc", "pixel_auroc", "image_auroc_delta",
            "pixel_auroc_delta", "score_spearman_vs_fp32", "runs", "warmup", "notes")


class BenchError(ValueError):
    """Bad command-line input; the message names the option or file."""


@dataclass
class BenchConfig:
    """bench-latency options (one field per flag)."""

    model: list[str] = field(default_factory=list)
    models: str | None = None
    threads: tuple[int, ...] = (1, 2)
    runs: int = 200
    warmup: int = 20
    e2e_runs: int = 50  # end-to-end frames (decode + preprocess + inference) per file × threads
    data: str | None = None  # MVTec-layout root: accuracy on its test split, frames for E2E
    categories: str | None = None  # None: the manifest's categories (all of the dataset if absent)
    run: list[str] = field(default_factory=list)  # dcam-train run dirs: eager baseline with trained weights
    eager: bool = True  # time the eager torch pipeline when torch is importable
    gemm_size: int = 1024  # M = K = N of the peak micro-benchmark; 0 skips it
    gemm_runs: int = 10
    frame_size: int = 1024  # side of the generated frame used for E2E without --data (MVTec images are ~1024²)
    json: str | None = None
    markdown: str | None = None

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.models):
            raise BenchError("give either --model FILE [FILE ...] or --models DIR")
        if not self.threads or any(t < 1 for t in self.threads):
            raise BenchError(f"--threads: expected positive thread counts, got {self.threads}")
        for name, low in (("runs", 1), ("warmup", 0), ("e2e_runs", 0), ("gemm_size", 0), ("gemm_runs", 1),
                          ("frame_size", 32)):
            if getattr(self, name) < low:
                raise BenchError(f"--{name.replace('_', '-')}: expected an integer ≥ {low}, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------ inputs
def parse_threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        raise BenchError(f"--threads: expected comma-separated positive integers such as 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise BenchError(f"--threads: expected comma-separated positive integers such as 1,2,4, got {text!r}")
    return values


def _sort_key(p: Path) -> tuple[Any, ...]:
    return (str(p.parent), FORMAT_ORDER[MODEL_EXTENSIONS[p.suffix.lower()]], ".int8" in p.name, p.name)


def resolve_models(cfg: BenchConfig) -> list[Path]:
    """Model files to bench, grouped by directory, then format, fp32 before int8."""
    if cfg.models:
        root = Path(cfg.models)
        if not root.is_dir():
            raise BenchError(f"--models {root}: directory not found")
        files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS]
        if not files:
            raise BenchError(f"--models {root}: no .onnx, .xml or .tflite files found")
        return sorted(files, key=_sort_key)
    paths = [Path(m) for m in cfg.model]
    for p in paths:
        if p.suffix.lower() not in MODEL_EXTENSIONS:
            raise BenchError(f"--model {p}: unknown extension {p.suffix!r}; expected .onnx, .xml or .tflite")
        if not p.is_file():
            raise BenchError(f"--model {p}: file not found")
    return list(dict.fromkeys(paths))  # keep the user's order, drop duplicates


def file_size_mb(path: Path) -> float:
    """Size on disk of everything the engine loads (an OpenVINO .xml needs its .bin)."""
    size = path.stat().st_size
    if path.suffix.lower() == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size / 1e6


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
    from edge.manifest import ManifestError, load_manifest
    manifest, note = None, None
    try:
        manifest = load_manifest(path, verify_sha256=True).data
    except ManifestError as e:
        note = f"manifest: {e}"
    precision = (manifest or {}).get("precision") or ("int8" if ".int8" in path.name else "fp32")
    gmacs, source = model_gmacs(path, manifest)
    return ModelFile(path, _label(path, all_paths), MODEL_EXTENSIONS[path.suffix.lower()], manifest, note,
                     precision, file_size_mb(path), gmacs, source)


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


def test_samples(cfg: BenchConfig, files: Sequence[ModelFile]) -> list[dict[str, Any]]:
    """The test split of --data as plain dicts (train.data.mvtec is torch-free by design)."""
    from train.data.mvtec import MVTecLayoutError, discover_categories, list_test_samples
    try:
        available = discover_categories(cfg.data)
        if cfg.categories:
            categories: Any = cfg.categories
        else:
            wanted = sorted({c for f in files for c in ((f.manifest or {}).get("model") or {}).get("categories", [])})
            categories = wanted if wanted and set(wanted) <= set(available) else "all"
        samples = list_test_samples(cfg.data, categories)
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


# ------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    kind: str  # latency | accuracy | gemm
    payload: dict[str, Any]
    units: int  # progress units the worker reports
    key: tuple[Any, ...]


def run_job(job: Job, threads: int, bar: tqdm, workdir: Path) -> dict[str, Any]:
    """Run one worker process; translate a crash or a missing result into a failed result."""
    index = len(list(workdir.glob("job-*.json")))
    job_path, out_path = workdir / f"job-{index}.json", workdir / f"result-{index}.json"
    job_path.write_text(json.dumps({"kind": job.kind, "threads": threads, **job.payload}))
    env = gemm_env(threads)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    done = 0
    with open(workdir / f"stderr-{index}.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker", str(job_path), str(out_path)],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS_TAG):
                n = int(line.split()[-1])
                bar.update(n)
                done += n
        code = proc.wait()
        err.seek(0)
        stderr_tail = [ln for ln in err.read().strip().splitlines() if ln.strip()][-1:]
    if done < job.units:
        bar.update(job.units - done)
    if out_path.is_file():
        return json.loads(out_path.read_text())
    why = f"worker exited with code {code}" + (f": {stderr_tail[0][:300]}" if stderr_tail else "")
    return {"status": "failed", "error": why}


def plan_jobs(cfg: BenchConfig, files: Sequence[ModelFile], eager_targets: dict[tuple[str, str, int], dict[str, Any]],
              frames: list[str], samples: list[dict[str, Any]] | None) -> list[tuple[int, Job]]:
    """Per thread count: GEMM peaks, then per architecture its eager baseline followed by its files."""
    latency_units = cfg.warmup + cfg.runs + cfg.e2e_runs
    jobs: list[tuple[int, Job]] = []
    backends = sorted({ENGINE_GEMM[(ENGINE_FOR_FORMAT[f.format], f.precision)] for f in files
                       if (ENGINE_FOR_FORMAT[f.format], f.precision) in ENGINE_GEMM} | {("numpy", "fp32")}
                      | ({("torch", "fp32")} if eager_targets else set()))
    common = {"runs": cfg.runs, "warmup": cfg.warmup, "e2e_runs": cfg.e2e_runs, "frames": frames}
    groups: dict[tuple[str, str, int] | None, list[ModelFile]] = {}
    for f in files:
        groups.setdefault(f.architecture if f.architecture in eager_targets else None, []).append(f)
    for t in cfg.threads:
        if cfg.gemm_size:
            jobs.append((t, Job("gemm", {"backends": backends, "size": cfg.gemm_size, "runs": cfg.gemm_runs},
                                len(backends) * (cfg.gemm_runs + 2), ("gemm", t))))
        for arch, members in groups.items():
            if arch is not None:
                target = eager_targets[arch]
                jobs.append((t, Job("latency", {**common, "target": target, "spec": members[0].spec},
                                    latency_units, ("eager", arch, t))))
            for f in members:
                jobs.append((t, Job("latency", {**common, "target": {"kind": "file", "path": str(f.path)},
                                                "spec": f.spec}, latency_units, ("file", str(f.path), t))))
    if samples is not None:
        acc_threads = max(cfg.threads)  # accuracy does not depend on threads; use the fastest setting
        for f in files:
            if f.spec is not None:
                jobs.append((acc_threads, Job("accuracy", {"target": {"kind": "file", "path": str(f.path)},
                                                           "spec": f.spec, "samples": samples},
                                              len(samples), ("accuracy", str(f.path)))))
        for arch, target in eager_targets.items():
            if target.get("run") and groups.get(arch):
                jobs.append((acc_threads, Job("accuracy", {"target": target, "spec": groups[arch][0].spec,
                                                           "samples": samples}, len(samples), ("accuracy", arch))))
    return jobs


# ------------------------------------------------------------------------------------------- rows
def _latency_fields(result: dict[str, Any]) -> dict[str, Any]:
    s = stats.summarize(result["infer_ms"])
    out = {"median_ms": s.median_ms, "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms, "fps": s.fps,
           "peak_rss_mb": result.get("peak_rss_mb")}
    if result.get("e2e_ms"):
        e = stats.summarize(result["e2e_ms"])
        out.update(e2e_median_ms=e.median_ms, e2e_p90_ms=e.p90_ms, e2e_fps=e.fps)
    return out


def _accuracy_fields(result: dict[str, Any] | None) -> dict[str, Any]:
    if not result or result.get("status") != "ok":
        return {}

    def mean(key: str) -> float | None:
        vals = [c[key] for c in result["per_category"].values() if c.get(key) is not None and not math.isnan(c[key])]
        return sum(vals) / len(vals) if vals else None
    return {"image_auroc": mean("image_auroc"), "pixel_auroc": mean("pixel_auroc")}


def fp32_counterpart(path: Path, files: Sequence[ModelFile]) -> ModelFile | None:
    """The fp32 file of the same model and format: dcam.int8.onnx → dcam.onnx in the same directory."""
    want = path.with_name(path.name.replace(".int8", ""))
    return next((f for f in files if f.path == want and f.precision == "fp32"), None)


def build_rows(cfg: BenchConfig, files: Sequence[ModelFile], results: dict[tuple[Any, ...], dict[str, Any]],
               eager_targets: dict[tuple[str, str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    gemm: list[GemmResult] = [GemmResult(**g) for k, r in results.items() if k[0] == "gemm" and r.get("status") == "ok"
                              for g in r["gemm"]]
    by_path = {str(f.path): f for f in files}
    rows: list[dict[str, Any]] = []
    eager_ms: dict[tuple[Any, int], float] = {}
    for key, result in results.items():
        if key[0] not in ("eager", "file"):
            continue
        t = key[-1]
        if key[0] == "eager":
            arch = key[1]
            f0 = next(f for f in files if f.architecture == arch)
            row = {"model": f"torch-eager:{arch[0]}/{arch[1]}@{arch[2]}",
                   "label": f"eager torch ({arch[1]}, {arch[2]}px)", "format": "torch", "engine": "torch-eager",
                   "precision": "fp32", "gmacs": f0.gmacs, "gmacs_source": f0.gmacs_source, "size_mb": None,
                   "notes": eager_targets[arch].get("note")}
            acc = results.get(("accuracy", arch))
        else:
            f = by_path[key[1]]
            row = {"model": str(f.path), "label": f.label, "format": f.format, "engine": ENGINE_FOR_FORMAT[f.format],
                   "precision": f.precision, "size_mb": f.size_mb, "gmacs": f.gmacs, "gmacs_source": f.gmacs_source,
                   "notes": f.manifest_note}
            acc = results.get(("accuracy", key[1]))
        row.update(threads=t, runs=cfg.runs, warmup=cfg.warmup, status=result.get("status", "failed"),
                   error=result.get("error"))
        if row["status"] == "ok":
            row["engine"] = result.get("engine", row["engine"])
            row.update(_latency_fields(result))
            if key[0] == "eager":
                eager_ms[(key[1], t)] = row["median_ms"]
        row.update(_accuracy_fields(acc))
        row["_arch"] = key[1] if key[0] == "eager" else by_path[key[1]].architecture
        row["_scores"] = (acc or {}).get("scores")
        rows.append(row)
    for row in rows:
        if row["status"] == "ok":
            row["eager_median_ms"] = eager_ms.get((row["_arch"], row["threads"]))
            row["speedup_vs_eager"] = stats.speedup(row["eager_median_ms"], row["median_ms"])
            row["gmac_per_s"] = stats.gmac_per_s(row.get("gmacs"), row["median_ms"])
            row["peak_gmac_per_s"], row["peak_source"] = reference_peak(gemm, row["engine"], row["precision"],
                                                                        row["threads"])
            row["peak_fraction"] = stats.fraction(row["gmac_per_s"], row["peak_gmac_per_s"])
        if row["format"] != "torch":
            ref = fp32_counterpart(Path(row["model"]), files)
            ref_row = next((r for r in rows if ref is not None and r["model"] == str(ref.path)), None)
            if ref_row is not None:
                row["image_auroc_delta"] = stats.delta(row.get("image_auroc"), ref_row.get("image_auroc"))
                row["pixel_auroc_delta"] = stats.delta(row.get("pixel_auroc"), ref_row.get("pixel_auroc"))
                if row["_scores"] and ref_row["_scores"]:
                    row["score_spearman_vs_fp32"] = stats.spearman(row["_scores"], ref_row["_scores"])
    out = []
    for row in rows:
        out.append({k: row.get(k) for k in ROW_KEYS})
    # Eager row first, then the files, per thread count (the order the table reads best in).
    order = {str(f.path): i for i, f in enumerate(files)}
    out.sort(key=lambda r: (r["threads"], r["engine"] != "torch-eager", order.get(r["model"], -1)))
    return out


# ------------------------------------------------------------------------------------------- meta
def machine_meta() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip().lower(), value.strip())  # first CPU's entry
    except OSError:
        pass
    # x86: "model name"; Raspberry Pi: "Model" (board) / "Hardware"; else what platform knows.
    cpu = info.get("model name") or (info.get("model") if not info.get("model", "").isdigit() else "") \
        or info.get("hardware") or platform.processor() or platform.machine()
    flags = set((info.get("flags") or info.get("features") or "").split())
    interesting = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                   "asimd", "asimddp", "i8mm", "bf16", "sve")
    versions = []
    for dist in ("onnxruntime", "openvino", "ai-edge-litert", "tflite-runtime", "numpy", "opencv-python-headless",
                 "torch"):
        try:
            versions.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": ", ".join(f for f in interesting if f in flags) or "?",
            "software": f"Python {platform.python_version()}; " + ", ".join(versions)}


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


# -------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = BenchConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="bench-latency", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", nargs="+", metavar="FILE", help="model files (.onnx, .xml, .tflite)")
    src.add_argument("--models", metavar="DIR", help="bench every .onnx/.xml/.tflite under DIR (recursive)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--runs", type=int, default=d["runs"].default, help="timed inference runs per file × threads")
    p.add_argument("--warmup", type=int, default=d["warmup"].default, help="untimed runs before timing")
    p.add_argument("--e2e-runs", type=int, default=d["e2e_runs"].default,
                   help="frames timed end to end (decode + preprocess + inference); 0 skips")
    p.add_argument("--data", metavar="DIR", help="MVTec-layout dataset: image/pixel AUROC on its test split")
    p.add_argument("--categories", help="comma-separated categories of --data (default: the manifest's)")
    p.add_argument("--run", nargs="+", default=[], metavar="RUN_DIR",
                   help="dcam-train run dirs: eager baseline with trained weights (else random weights, same latency)")
    p.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                   help="time the eager torch pipeline when torch is importable")
    p.add_argument("--gemm-size", type=int, default=d["gemm_size"].default,
                   help="M=K=N of the peak GEMM micro-benchmark (0 skips)")
    p.add_argument("--gemm-runs", type=int, default=d["gemm_runs"].default, help="timed GEMM repetitions")
    p.add_argument("--frame-size", type=int, default=d["frame_size"].default,
                   help="side of the generated JPEG frame for end-to-end timing without --data")
    p.add_argument("--json", metavar="OUT", help="write the rows as a JSON list")
    p.add_argument("--markdown", metavar="OUT", help="write the Markdown report")
    return p


def config_from_args(ns: argparse.Namespace) -> BenchConfig:
    values = {f.name: getattr(ns, f.name) for f in fields(BenchConfig) if hasattr(ns, f.name)}
    values["model"] = ns.model or []
    values["threads"] = parse_threads(ns.threads)
    return BenchConfig(**values)


def bench(cfg: BenchConfig, command: str = "bench-latency") -> tuple[list[dict[str, Any]], str]:
    """Run the whole benchmark; returns (rows, markdown report)."""
    paths = resolve_models(cfg)
    files = [describe_file(p, paths) for p in paths]
    torch_ok = cfg.eager and importlib.util.find_spec("torch") is not None
    runs = {read_run_architecture(r): r for r in cfg.run}
    eager_targets: dict[tuple[str, str, int], dict[str, Any]] = {}
    if torch_ok:
        for f in files:
            arch = f.architecture
            if arch is not None and arch not in eager_targets:
                run = runs.get(arch)
                eager_targets[arch] = {"kind": "eager", "method": arch[0], "backbone": arch[1], "image_size": arch[2],
                                       "run": run, "note": f"trained weights of {run}" if run else
                                       "random weights, same architecture"}
    unmatched = [r for a, r in runs.items() if a not in eager_targets]
    if unmatched and torch_ok:
        raise BenchError(f"--run {unmatched[0]}: no model file has its method/backbone/image size")
    samples = test_samples(cfg, files) if cfg.data else None
    meta: dict[str, Any] = {**machine_meta(), "command": command, "load_before": _load(),
                            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        workdir = Path(tmp)
        frames = ([s["path"] for s in samples] if samples
                  else [str(synthetic_frame(workdir / "frame.jpg", cfg.frame_size))])
        meta["frames"] = (f"{len(frames)} test images of {cfg.data}" if samples
                          else f"one generated {cfg.frame_size}×{cfg.frame_size} JPEG (quality 95)")
        jobs = plan_jobs(cfg, files, eager_targets, frames, samples)
        results: dict[tuple[Any, ...], dict[str, Any]] = {}
        with tqdm(total=sum(j.units for _, j in jobs), desc="bench-latency", unit="run", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for threads, job in jobs:
                what = ("GEMM peak" if job.key[0] == "gemm" else "eager torch" if job.key[0] == "eager"
                        or isinstance(job.key[1], tuple) else Path(str(job.key[1])).name)
                bar.set_postfix_str(f"{job.kind}: {what} ×{threads} thr", refresh=True)
                results[job.key] = run_job(job, threads, bar, workdir)
    rows = build_rows(cfg, files, results, eager_targets)
    meta["load_after"] = _load()
    meta["settings"] = (f"threads {','.join(map(str, cfg.threads))}; {cfg.runs} timed runs after {cfg.warmup} "
                        f"warm-up; {cfg.e2e_runs} end-to-end frames; GEMM {cfg.gemm_size}³ × {cfg.gemm_runs}")
    meta["eager"] = ("; ".join(f"{a[0]}/{a[1]}@{a[2]}px: paper-style teacher + student eager forwards, "
                               f"upsample + cosine in torch, max in numpy, fp32, {t['note']}"
                               for a, t in eager_targets.items())
                     or ("not run: torch is not installed" if cfg.eager else "not run (--no-eager)"))
    meta["gemm"] = [g for k, r in results.items() if k[0] == "gemm" and r.get("status") == "ok" for g in r["gemm"]]
    meta["gemm_notes"] = {f"{k}@{key[1]}thr": v for key, r in results.items() if key[0] == "gemm"
                          for k, v in (r.get("notes") or {}).items()}
    return rows, report.render(rows, meta)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(args)
    try:
        cfg = config_from_args(ns)
        rows, markdown = bench(cfg, "bench-latency " + shlex.join(args))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown)
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(rows, indent=2) + "\n")
    if cfg.markdown:
        Path(cfg.markdown).write_text(markdown + "\n")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"warning: {r['label']} @ {r['threads']} threads failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

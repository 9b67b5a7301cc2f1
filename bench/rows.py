"""Rows of the bench-latency table (the JSON output): one per model file × device × thread count, plus eager rows."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import cpuload, stats
from bench.files import ENGINE_FOR_FORMAT, ModelFile
from bench.gemm import GemmResult, reference_peak

ROW_KEYS = ("model", "label", "format", "engine", "device", "providers", "precision", "threads", "status", "error", "size_mb", "gmacs",
            "gmacs_source", "median_ms", "p90_ms", "p99_ms", "mean_ms", "fps", "e2e_median_ms", "e2e_p90_ms",
            "e2e_fps", "gmac_per_s", "peak_gmac_per_s", "peak_source", "peak_fraction", "peak_rss_mb",
            "speedup_vs_eager", "eager_median_ms", "eager_model", "image_auroc", "pixel_auroc", "image_auroc_delta",
            "pixel_auroc_delta", "score_spearman_vs_fp32", "export_guard", "other_cpu_cores", "contended", "runs",
            "warmup", "rounds", "notes")


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


def _eager_id(arch: tuple[str, str, int]) -> str:
    """The ``model`` value of an eager row, e.g. "torch-eager:dcam/resnet18@256"."""
    return f"torch-eager:{arch[0]}/{arch[1]}@{arch[2]}"


def _eager_note(result: dict[str, Any], target: dict[str, Any]) -> str:
    style = {"paper": "paper-style: teacher and student as separate eager forwards, 1 − cos, upsample and sum in "
                      "torch, max in numpy, fp32",
             "fused": "the model's fused inference module in eager mode (no teacher/student pair), fp32"}
    weights = result.get("weights") or (f"trained weights of {target['run']}" if target.get("run")
                                         else "random weights, same architecture")
    return f"{style.get(result.get('style', ''), 'eager torch, fp32')}; {weights}"


def export_guard(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """dcam-export's own accuracy verdict for the file (validation normals + test split), from its manifest."""
    guard = ((manifest or {}).get("accuracy") or {}).get("guard")
    if not isinstance(guard, dict) or "passed" not in guard:
        return None
    return {"passed": bool(guard["passed"]), "violations": list(guard.get("violations") or [])}


def fp32_counterpart(path: Path, files: Sequence[ModelFile]) -> ModelFile | None:
    """The fp32 file of the same model and format: dcam.int8.onnx → dcam.onnx in the same directory."""
    want = path.with_name(path.name.replace(".int8", ""))
    return next((f for f in files if f.path == want and f.precision == "fp32"), None)


def build_rows(files: Sequence[ModelFile], results: dict[tuple[Any, ...], dict[str, Any]],
               eager_targets: dict[tuple[str, str, int], dict[str, Any]], settings: dict[str, Any],
               cores: int | None = None) -> list[dict[str, Any]]:
    """JSON rows (ROW_KEYS) from the worker results: latency statistics, speed-up over the eager row of the
    same architecture and thread count, achieved vs peak GMAC/s (CPU rows: the peak is a CPU GEMM), accuracy and
    its change vs the fp32 file on the same device.

    ``results`` keys: ("eager", arch, threads), ("file", path, device, threads), ("accuracy", path, device),
    ("accuracy", arch), ("gemm", threads). ``device`` is the requested one; the row's "device" is where it ran
    (what ``auto`` resolved to). ``settings`` (runs, warmup, rounds) is copied into every row; ``cores`` (the machine's
    logical cores) decides whether other processes' CPU use made a row "contended".
    """
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
            row = {"model": _eager_id(arch),
                   "label": f"eager torch ({arch[1]}, {arch[2]}px)", "format": "torch", "engine": "torch-eager",
                   "precision": "fp32", "gmacs": f0.gmacs, "gmacs_source": f0.gmacs_source, "size_mb": None,
                   "device": "cpu", "notes": _eager_note(result, eager_targets[arch])}
            acc = results.get(("accuracy", arch))
        else:
            f = by_path[key[1]]
            row = {"model": str(f.path), "label": f.label, "format": f.format, "engine": ENGINE_FOR_FORMAT[f.format],
                   "precision": f.precision, "size_mb": f.size_mb, "gmacs": f.gmacs, "gmacs_source": f.gmacs_source,
                   "export_guard": export_guard(f.manifest), "notes": f.manifest_note, "device": key[2],
                   "_requested": key[2]}
            acc = results.get(("accuracy", key[1], key[2]))
        row.update(threads=t, status=result.get("status", "failed"), error=result.get("error"), **settings)
        if row["status"] == "ok":
            row["engine"] = result.get("engine", row["engine"])
            row["device"] = result.get("device", row["device"])
            row["providers"] = result.get("providers")
            if result.get("reduced_precision"):
                note = f"computes in {'/'.join(result['reduced_precision'])}" + (
                    "" if result.get("guard_covered", True) else ", not covered by the export accuracy guard")
                row["notes"] = "; ".join(n for n in (row.get("notes"), note) if n)
            row.update(_latency_fields(result))
            row["other_cpu_cores"] = result.get("other_cpu_cores")
            row["contended"] = cpuload.contended(row["other_cpu_cores"], t, cores)
            if key[0] == "eager":
                eager_ms[(key[1], t)] = row["median_ms"]
        row.update(_accuracy_fields(acc))
        row["_arch"] = key[1] if key[0] == "eager" else by_path[key[1]].architecture
        row["_scores"] = (acc or {}).get("scores")
        rows.append(row)
    for row in rows:
        if row["_arch"] is not None and (row["_arch"], row["threads"]) in eager_ms:
            row["eager_model"] = _eager_id(row["_arch"])
        if row["status"] == "ok":
            row["eager_median_ms"] = eager_ms.get((row["_arch"], row["threads"]))
            row["speedup_vs_eager"] = stats.speedup(row["eager_median_ms"], row["median_ms"])
            row["gmac_per_s"] = stats.gmac_per_s(row.get("gmacs"), row["median_ms"])
            if row["device"] == "cpu":  # the peak is a CPU GEMM: meaningless for an accelerator's row
                row["peak_gmac_per_s"], row["peak_source"] = reference_peak(gemm, row["precision"], row["threads"])
                row["peak_fraction"] = stats.fraction(row["gmac_per_s"], row["peak_gmac_per_s"])
        if row["format"] != "torch":
            ref = fp32_counterpart(Path(row["model"]), files)
            ref_row = next((r for r in rows if ref is not None and r["model"] == str(ref.path)
                            and r.get("_requested") == row.get("_requested")), None)
            if ref_row is not None:
                row["image_auroc_delta"] = stats.delta(row.get("image_auroc"), ref_row.get("image_auroc"))
                row["pixel_auroc_delta"] = stats.delta(row.get("pixel_auroc"), ref_row.get("pixel_auroc"))
                if row["_scores"] and ref_row["_scores"]:
                    row["score_spearman_vs_fp32"] = stats.spearman(row["_scores"], ref_row["_scores"])
    # Per thread count, per architecture: its eager row, then its files (the order the table reads best in).
    file_order = {str(f.path): i for i, f in enumerate(files)}
    arch_order = {a: i for i, a in enumerate(dict.fromkeys(f.architecture for f in files))}
    device_order = {d: i for i, d in enumerate(dict.fromkeys(k[2] for k in results if k[0] == "file"))}
    rows.sort(key=lambda r: (r["threads"], arch_order.get(r["_arch"], len(arch_order)), r["format"] != "torch",
                             file_order.get(r["model"], -1), device_order.get(r.get("_requested"), -1)))
    return [{k: row.get(k) for k in ROW_KEYS} for row in rows]

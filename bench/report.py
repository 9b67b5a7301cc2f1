"""Markdown report of a bench-latency run: machine, command, model-zoo style table, GEMM peaks, notes."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from edge.accuracy import GuardLimits, guard_failures, to_auroc_points

INT8_TARGET_SPEEDUP = 8.0  # issue target: every int8 file ≥ 8× faster than eager torch in the same run
GUARD_LIMITS = GuardLimits()  # dcam-export's defaults: the verdict it would give with its default flags

COLUMNS: tuple[tuple[str, str], ...] = (
    ("Model", "label"), ("Engine", "engine"), ("Device", "device"), ("Prec.", "precision"), ("Thr.", "threads"),
    ("Size MB", "size_mb"), ("GMACs", "gmacs"), ("Median ms", "median_ms"), ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"), ("FPS", "fps"), ("E2E ms", "e2e_median_ms"), ("Decode ms", "decode_median_ms"),
    ("Frame ms 1024", "frame_1024_ms"),
    ("Frame ms 640×480", "frame_640x480_ms"), ("Frame / engine", "frame_overhead"), ("GMAC/s", "gmac_per_s"),
    ("% peak", "peak_fraction"), ("Roofline ms", "roofline_ms"), ("% roofline", "roofline_fraction"),
    ("RSS MB", "peak_rss_mb"), ("× eager", "speedup_vs_eager"),
    ("Image AUROC (Δ)", "image_auroc"), ("Pixel AUROC (Δ)", "pixel_auroc"), ("ρ vs fp32", "score_spearman_vs_fp32"),
    ("Other CPU", "other_cpu_cores"),
)


def _num(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


def _auroc(row: dict[str, Any], key: str) -> str:
    v, d = row.get(key), row.get(f"{key}_delta")
    if v is None:
        return "—"
    text = f"{v:.3f}"
    if d is not None and row.get("precision") != "fp32":
        text += f" ({d:+.3f})"
    return text


def where(row: dict[str, Any]) -> str:
    """"dcam.onnx @ 2 thr" (+ " on cuda" for a row that ran, or was to run, on another device than the CPU)."""
    device = row.get("device")
    return f"{row.get('label')} @ {row.get('threads')} thr" + ("" if device in (None, "cpu") else f" on {device}")


def _percent(fraction: float | None) -> str:
    return _num(None if fraction is None else 100 * fraction, 0) + ("%" if fraction is not None else "")


_TEXT_KEYS = ("label", "engine", "device", "precision")
_SHOWN_WHEN_FAILED = (*_TEXT_KEYS, "threads", "size_mb", "gmacs")  # what a failed row still knows
# Cells written their own way (row, value) → text; every other key is a plain number.
_CELL_FORMATS: dict[str, Callable[[dict[str, Any], Any], str]] = {
    "threads": lambda row, v: str(v),
    "image_auroc": lambda row, v: _auroc(row, "image_auroc"),
    "pixel_auroc": lambda row, v: _auroc(row, "pixel_auroc"),
    "peak_fraction": lambda row, v: _percent(v),
    "roofline_fraction": lambda row, v: _percent(v),
    "other_cpu_cores": lambda row, v: "—" if v is None else f"{v:.2f}" + (" †" if row.get("contended") else ""),
    "score_spearman_vs_fp32": lambda row, v: "—" if v is None or row.get("precision") == "fp32" else f"{v:.3f}",
    "speedup_vs_eager": lambda row, v: "—" if v is None else f"{v:.1f}×",
}


def _cell(row: dict[str, Any], key: str) -> str:
    if row.get("status") != "ok" and key not in _SHOWN_WHEN_FAILED:
        return "failed" if key == "median_ms" else ""
    v = row.get(key)
    if key in _TEXT_KEYS:
        return str(v) if v is not None else "—"
    if key in _CELL_FORMATS:
        return _CELL_FORMATS[key](row, v)
    return _number_cell(key, v)


def _number_cell(key: str, v: Any) -> str:
    """Decimals by kind: GMACs 2, latencies 2 under 10 ms else 1, rates and memory 0, the rest 1."""
    if key == "gmacs":
        return _num(v, 2)
    if key in ("median_ms", "p90_ms", "p99_ms", "e2e_median_ms", "decode_median_ms", "frame_1024_ms",
               "frame_640x480_ms", "frame_overhead", "roofline_ms"):
        return _num(v, 2 if v is not None and v < 10 else 1)
    return _num(v, 0 if key in ("gmac_per_s", "peak_rss_mb") else 1)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The model-zoo table: one line per model file × thread count (eager baseline first in each block)."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + "|".join("---" if k in ("label", "engine", "device", "precision") else "---:" for _, k in COLUMNS)
             + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def gemm_table(gemm: Sequence[dict[str, Any]]) -> str:
    """Best size per backend × precision × threads; the machine peak of each precision in bold."""
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    for g in gemm:
        key = (g["backend"], g["precision"], g["threads"])
        if key not in best or g["gmac_per_s"] > best[key]["gmac_per_s"]:
            best[key] = g
    peak: dict[tuple[str, int], float] = {}
    for g in best.values():
        k = (g["precision"], g["threads"])
        peak[k] = max(peak.get(k, 0.0), g["gmac_per_s"])
    lines = ["| Backend | Precision | Threads | Best M=K=N | Median ms | GMAC/s | Other CPU |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for g in sorted(best.values(), key=lambda g: (g["threads"], g["precision"], -g["gmac_per_s"])):
        rate = f"{g['gmac_per_s']:.0f}"
        if g["gmac_per_s"] == peak[(g["precision"], g["threads"])]:
            rate = f"**{rate}**"
        other = g.get("other_cpu_cores")
        lines.append(f"| {g['backend']} | {g['precision']} | {g['threads']} | {g['size']} | "
                     f"{g['median_ms']:.2f} | {rate} | {'—' if other is None else f'{other:.2f}'} |")
    return "\n".join(lines)


def guard_verdict(row: dict[str, Any]) -> str | None:
    """Does an int8 row keep the export accuracy guard on this run's test split? None without --data."""
    d_img, d_px, rho = row.get("image_auroc_delta"), row.get("pixel_auroc_delta"), row.get("score_spearman_vs_fp32")
    if d_img is None and d_px is None and rho is None:
        return None
    # The row's deltas are int8 − fp32 in AUROC; the guard takes drops in AUROC points.
    failed = guard_failures(None if d_img is None else to_auroc_points(-d_img),
                            None if d_px is None else to_auroc_points(-d_px), rho, GUARD_LIMITS)
    problems = [f"{name} Δ {d:+.3f}" for name, d, check in (("image AUROC", d_img, "image_auroc_drop"),
                                                           ("pixel AUROC", d_px, "pixel_auroc_drop"))
                if check in failed]
    if "score_spearman" in failed:
        problems.append(f"score ρ {rho:.3f}")
    return "holds" if not problems else "**fails** (" + ", ".join(problems) + ")"


def _export_verdict(guard: dict[str, Any]) -> str:
    return "passed" if guard["passed"] else "**failed** (" + "; ".join(guard["violations"]) + ")"


def target_summary(rows: Sequence[dict[str, Any]], target: float = INT8_TARGET_SPEEDUP) -> list[str]:
    """One line per int8 row: ≥ ``target``× the eager pipeline of the same run and threads? Guard kept?"""
    out = []
    by_model = {(r["model"], r["threads"]): r for r in rows}
    for r in rows:
        if r.get("precision") != "int8" or r.get("engine") == "torch-eager":
            continue
        s = r.get("speedup_vs_eager")
        verdict = "n/a (no eager baseline)" if s is None else ("yes" if s >= target else "**no**")
        eager = by_model.get((r.get("eager_model"), r["threads"]), {})
        if s is not None and (r.get("contended") or eager.get("contended")):
            verdict += " († contended measurement: not trustworthy)"
        guard = guard_verdict(r)
        exported = r.get("export_guard")
        out.append(f"- {where(r)}: {_num(s)}× — ≥ {target:g}×: {verdict}"
                   + (f"; accuracy guard on this test split: {guard}" if guard else "")
                   + (f"; dcam-export guard: {_export_verdict(exported)}" if exported else ""))
    return out


def render(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Full report: header (machine, software, command, settings), table, targets, GEMM peaks, notes."""
    m = meta
    parts = [f"# bench-latency report — {m.get('cpu', 'unknown CPU')}", "",
             f"- Command: `{m.get('command', '')}`",
             f"- Date (UTC): {m.get('date', '')}; host: {m.get('cores', '?')} logical cores, "
             f"ISA: {m.get('isa', '?')}",
             f"- Software: {m.get('software', '')}",
             f"- Settings: {m.get('settings', '')}",
             f"- Load average (1 min) before / after: {m.get('load_before', '?')} / {m.get('load_after', '?')}"
             " — other processes on the machine inflate absolute times; ratios within one run hold better.",
             f"- Eager baseline: {m.get('eager', 'not run')}",
             f"- Frames for end-to-end latency: {m.get('frames', '')}", "",
             table(rows), ""]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        parts += ["**Failed rows**", ""] + [f"- {where(r)}: {r.get('error')}" for r in failed]
        parts.append("")
    if m.get("skipped"):
        parts += ["**Not run**", ""] + [f"- {line}" for line in m["skipped"]] + [""]
    notes = list(dict.fromkeys(f"- {r['label']}: {r['notes']}" for r in rows
                               if r.get("notes") and r.get("engine") != "torch-eager"))
    if notes:
        parts += ["**Notes**", ""] + notes + [""]
    summary = target_summary(rows)
    if summary:
        parts += [f"**int8 target: ≥ {INT8_TARGET_SPEEDUP:g}× eager torch (same run and threads); accuracy guard of "
                  f"dcam-export: image/pixel AUROC within {GUARD_LIMITS.max_image_auroc_drop:g} point of the fp32 "
                  f"file, score Spearman ρ ≥ {GUARD_LIMITS.min_score_spearman:g}; here recomputed on the test split "
                  f"(normal and defective images, so ρ is higher than on normals alone), next to dcam-export's own "
                  f"verdict from the manifest (ρ on validation normals)**", ""] + summary + [""]
    if m.get("gemm"):
        parts += ["**Measured peak (GEMM micro-benchmark per engine and precision; bold = the machine peak of that "
                  "precision, which % peak refers to)**", "", gemm_table(m["gemm"]), ""]
        for k, v in (m.get("gemm_notes") or {}).items():
            parts.append(f"- {k}: {v}")
        for threads, bw in sorted((m.get("bandwidth") or {}).items()):
            parts.append(f"- copy bandwidth, {threads} thr: {bw['gb_per_s']:.1f} GB/s "
                         f"({bw['working_set_mib']} MiB working set; the roofline's memory limit)")
        parts.append("")
    parts += ["**Columns**", "",
              "- Device: where the engine ran (`--device`; cpu, cuda, tensorrt, gpu, npu); JSON rows also list the "
              "ONNX Runtime providers / OpenVINO execution devices. Accelerator rows have no % peak (the peak is a "
              "CPU GEMM); their × eager is against eager torch on the CPU.",
              "- Median / p90 / p99 ms: inference only (`Engine.run` on one preprocessed 1×3×S×S tensor), "
              "after the warm-up runs; percentiles by linear interpolation. FPS = 1000 / median.",
              "- E2E ms: median of decode (file → RGB) + resize + normalise + inference, cycling through the frames; "
              "Decode ms: the file decode alone. Frame ms: a decoded BGR camera frame of that size → decision (resize "
              "by the manifest's `input.resize`, normalise, inference); Frame / engine: the larger of the two over the "
              "median (the host work around the engine; target ≤ 1.25).",
              "- GMACs: multiply-accumulates of the convolutions and matrix products of one forward pass "
              "(teacher + student; the fp32 distance head is not counted). GMAC/s = GMACs / median.",
              "- % peak: GMAC/s over the machine peak of the row's precision — the best GEMM any engine reached "
              "here at the same thread count (int8 rows vs the int8 peak, fp32 rows incl. eager torch vs fp32).",
              "- Roofline ms: Σ over the file's convolutions/matrix products of max(MACs / that peak, bytes moved / "
              "the measured copy bandwidth), bytes at the file's precision (bench.roofline); % roofline = roofline "
              "ms / median: how close the engine runs to this CPU's limit for this graph (depthwise layers are "
              "memory-bound, so the GEMM peak alone would be the wrong ceiling).",
              "- RSS MB: peak resident memory of a fresh process that loaded this one model and ran it "
              "(interpreter, numpy/OpenCV and engine libraries included).",
              "- × eager: eager-torch median / this median, both from this run at the same thread count.",
              "- Other CPU: cores that other processes kept busy while this row was timed (/proc/stat minus the "
              "worker's own CPU time). † = contended: they took cores this row needed (more than cores − threads + "
              "0.25); its absolute times and ratios are not trustworthy — rerun on a quiet machine.",
              "- AUROC: mean over categories of the test split; Δ = change vs the fp32 file of the same format; "
              "ρ = Spearman rank correlation of the image scores with that fp32 file's.", ""]
    return "\n".join(parts)

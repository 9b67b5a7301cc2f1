"""``bench-latency --plot OUT.png``: latency against image AUROC per file — the choice a user makes.

One point per model file at the largest thread count benched (CPU rows): x = median inference ms, y = image
AUROC on --data's test split; marker by precision, colour by engine, the file name beside it, a hollow
marker where dcam-export's accuracy guard failed. Without --data there is no AUROC, so the y axis is the
score Spearman vs the fp32 file when that exists, else the plot says why it is empty.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARKERS = {"fp32": "o", "int8": "s", "bf16": "^", "fp16": "^"}
COLOURS = {"onnxruntime": "tab:blue", "openvino": "tab:purple", "litert": "tab:orange", "torch-eager": "tab:gray"}


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the latency/accuracy scatter of ``rows`` (bench-latency JSON rows) to ``path``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("--plot: needs matplotlib (pip install matplotlib)") from None
    ok = [r for r in rows if r.get("status") == "ok" and r.get("device") == "cpu" and r.get("median_ms")]
    threads = max((r["threads"] for r in ok), default=1)
    points = [r for r in ok if r["threads"] == threads]
    metric = "image_auroc" if any(r.get("image_auroc") is not None for r in points) else "score_spearman_vs_fp32"
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    shown = 0
    for r in points:
        y = r.get(metric)
        if metric == "score_spearman_vs_fp32" and y is None and r.get("precision") == "fp32":
            y = 1.0
        if y is None:
            continue
        guard = r.get("export_guard") or {}
        failed = guard.get("passed") is False
        colour = COLOURS.get(r.get("engine", ""), "tab:green")
        ax.scatter([r["median_ms"]], [y], marker=MARKERS.get(r.get("precision", ""), "D"), s=70,
                   facecolors="none" if failed else colour, edgecolors=colour, linewidths=1.5)
        ax.annotate(r["label"] + (" (guard failed)" if failed else ""), (r["median_ms"], y), fontsize=7,
                    xytext=(5, 3), textcoords="offset points")
        shown += 1
    ax.set_xlabel(f"median inference ms ({threads} thread{'s' if threads > 1 else ''}, lower is better)")
    ax.set_ylabel("image AUROC (test split)" if metric == "image_auroc" else "score Spearman vs fp32")
    ax.set_title("latency vs accuracy per file: circles fp32, squares int8; hollow = export guard failed"
                 if shown else "no file with an accuracy figure (run with --data)")
    ax.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    return Path(path)

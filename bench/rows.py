"""Rows of the bench-latency table (the JSON output): one per model file × device × thread count, plus eager rows.

``build_rows`` works in three steps: one ``Row`` per timed worker result (its own latency and accuracy), then
the comparisons between rows (speed-up over the eager row of the same architecture and thread count,
throughput against the machine's GEMM peak, accuracy change against the fp32 file), then the table order.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench import cpuload, stats
from bench.files import ModelFile
from bench.gemm import GemmResult, reference_peak
from bench.macs import MacsUnavailable
from bench.roofline import BYTES_PER_ELEMENT, LayerCost, layer_shape_source, onnx_layer_costs, roofline_ms
from bench.worker import CAMERA_FRAMES
from edge.accuracy import category_means, defined, recorded_guard
from edge.formats import FORMATS, with_precision

Architecture = tuple[str, str, int]  # (method, backbone, image size), as ModelFile.architecture
Results = Mapping[tuple[Any, ...], dict[str, Any]]
_NOT_A_COLUMN = {"column": False}  # metadata of the Row fields that steer the comparisons only
SETTING_KEYS = ("runs", "warmup", "rounds")


@dataclass(kw_only=True)
class Row:
    """One row of the table. Its fields are the JSON columns, in order (``ROW_KEYS``), but the last three."""

    model: str
    label: str
    format: str
    engine: str
    device: str  # where it ran (what ``auto`` resolved to); before it ran, the requested one
    providers: list[str] | None = None
    precision: str
    threads: int
    status: str
    error: str | None = None
    size_mb: float | None = None
    gmacs: float | None = None
    gmacs_source: str | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    fps: float | None = None
    e2e_median_ms: float | None = None
    e2e_p90_ms: float | None = None
    e2e_fps: float | None = None
    frame_1024_ms: float | None = None  # a decoded 1024×1024 BGR camera frame → decision (median)
    frame_640x480_ms: float | None = None
    # The worse of the two frame sizes' (frame ms / median_ms): the host work around the engine (issue: ≤ 1.25).
    frame_overhead: float | None = None
    decode_median_ms: float | None = None  # decoding one data-set image file alone (the part of E2E before the frame)
    gmac_per_s: float | None = None
    peak_gmac_per_s: float | None = None
    peak_source: str | None = None
    peak_fraction: float | None = None
    roofline_ms: float | None = None  # Σ per-layer max(compute at peak, memory at bandwidth) (bench.roofline)
    roofline_fraction: float | None = None  # roofline_ms / median_ms
    peak_rss_mb: float | None = None
    speedup_vs_eager: float | None = None
    eager_median_ms: float | None = None
    eager_model: str | None = None
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    image_auroc_delta: float | None = None
    pixel_auroc_delta: float | None = None
    score_spearman_vs_fp32: float | None = None
    export_guard: dict[str, Any] | None = None
    other_cpu_cores: float | None = None
    contended: bool | None = None
    runs: int | None = None
    warmup: int | None = None
    rounds: int | None = None
    notes: str | None = None
    architecture: Architecture | None = field(default=None, metadata=_NOT_A_COLUMN)
    requested_device: str | None = field(default=None, metadata=_NOT_A_COLUMN)  # --device value; None: eager
    scores: list[float] | None = field(default=None, metadata=_NOT_A_COLUMN)  # image scores on the test split

    @property
    def is_eager(self) -> bool:
        return self.format == "torch"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ROW_KEYS}


ROW_KEYS = tuple(f.name for f in fields(Row) if f.metadata.get("column", True))


# ----------------------------------------------------------------------------------------------------
# one row per worker result


def _eager_id(arch: Architecture) -> str:
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
    guard = recorded_guard((manifest or {}).get("accuracy"))
    return None if guard is None else {"passed": guard.passed, "violations": list(guard.violations)}


def _eager_row(arch: Architecture, threads: int, result: dict[str, Any], files: Sequence[ModelFile],
               target: dict[str, Any]) -> Row:
    # The eager baseline has no file of its own: its MACs are those of the first file of its architecture.
    first = next(f for f in files if f.architecture == arch)
    return Row(model=_eager_id(arch), label=f"eager torch ({arch[1]}, {arch[2]}px)", format="torch",
               engine="torch-eager", device="cpu", precision="fp32", threads=threads,
               status=result.get("status", "failed"), gmacs=first.gmacs, gmacs_source=first.gmacs_source,
               notes=_eager_note(result, target), architecture=arch)


def _file_row(f: ModelFile, device: str, threads: int, result: dict[str, Any]) -> Row:
    return Row(model=str(f.path), label=f.label, format=f.format, engine=FORMATS[f.format].engine, device=device,
               precision=f.precision, threads=threads, status=result.get("status", "failed"), size_mb=f.size_mb,
               gmacs=f.gmacs, gmacs_source=f.gmacs_source, export_guard=export_guard(f.manifest),
               notes=f.manifest_note, architecture=f.architecture, requested_device=device)


def _record_run(row: Row, result: dict[str, Any], cores: int | None) -> None:
    """What the worker measured: where it ran, latency statistics, memory and other processes' CPU use."""
    row.engine = result.get("engine", row.engine)
    row.device = result.get("device", row.device)
    row.providers = result.get("providers")
    if result.get("reduced_precision"):
        note = f"computes in {'/'.join(result['reduced_precision'])}" + (
            "" if result.get("guard_covered", True) else ", not covered by the export accuracy guard")
        row.notes = "; ".join(n for n in (row.notes, note) if n)
    s = stats.summarize(result["infer_ms"])
    row.median_ms, row.p90_ms, row.p99_ms, row.mean_ms, row.fps = s.median_ms, s.p90_ms, s.p99_ms, s.mean_ms, s.fps
    row.peak_rss_mb = result.get("peak_rss_mb")
    if result.get("e2e_ms"):
        e = stats.summarize(result["e2e_ms"])
        row.e2e_median_ms, row.e2e_p90_ms, row.e2e_fps = e.median_ms, e.p90_ms, e.fps
    if result.get("decode_ms"):
        row.decode_median_ms = stats.summarize(result["decode_ms"]).median_ms
    frames = []
    for name in CAMERA_FRAMES:
        if result.get(f"frame_{name}_ms"):
            frames.append(stats.summarize(result[f"frame_{name}_ms"]).median_ms)
            setattr(row, f"frame_{name}_ms", frames[-1])
    if frames and row.median_ms:
        row.frame_overhead = max(frames) / row.median_ms
    row.other_cpu_cores = result.get("other_cpu_cores")
    row.contended = cpuload.contended(row.other_cpu_cores, row.threads, cores)


def _record_accuracy(row: Row, accuracy: dict[str, Any] | None) -> None:
    """Image / pixel AUROC: the mean over categories (MVTec protocol); the scores for the Spearman vs fp32."""
    row.scores = (accuracy or {}).get("scores")
    if accuracy and accuracy.get("status") == "ok":
        means = category_means(accuracy["per_category"], ("image_auroc", "pixel_auroc"))
        row.image_auroc, row.pixel_auroc = defined(means["image_auroc"]), defined(means["pixel_auroc"])


def _measured_row(key: tuple[Any, ...], result: dict[str, Any], files: Sequence[ModelFile], results: Results,
                  eager_targets: Mapping[Architecture, dict[str, Any]], settings: Mapping[str, Any],
                  cores: int | None) -> Row:
    """The row of one ("eager", arch, threads) or ("file", path, device, threads) result."""
    threads = key[-1]
    if key[0] == "eager":
        row = _eager_row(key[1], threads, result, files, eager_targets[key[1]])
        accuracy = results.get(("accuracy", key[1]))
    else:
        row = _file_row(next(f for f in files if str(f.path) == key[1]), key[2], threads, result)
        accuracy = results.get(("accuracy", key[1], key[2]))
    row.error = result.get("error")
    row.runs, row.warmup, row.rounds = (settings.get(k) for k in SETTING_KEYS)
    if row.ok:
        _record_run(row, result, cores)
    _record_accuracy(row, accuracy)
    return row


# ----------------------------------------------------------------------------------------------------
# comparisons between rows


def fp32_counterpart(path: Path, files: Sequence[ModelFile]) -> ModelFile | None:
    """The fp32 file of the same model and format: dcam.int8.onnx → dcam.onnx in the same directory."""
    want = with_precision(path, "fp32")
    return next((f for f in files if f.path == want and f.precision == "fp32"), None)


def _compare_with_eager(row: Row, eager_ms: Mapping[tuple[Architecture | None, int], float | None]) -> None:
    if row.architecture is not None and (row.architecture, row.threads) in eager_ms:
        row.eager_model = _eager_id(row.architecture)
    if row.ok:
        row.eager_median_ms = eager_ms.get((row.architecture, row.threads))
        row.speedup_vs_eager = stats.speedup(row.eager_median_ms, row.median_ms)


def _compare_with_peak(row: Row, gemm: list[GemmResult], bandwidth: Mapping[int, float],
                       costs: list[LayerCost] | None) -> None:
    if not row.ok:
        return
    row.gmac_per_s = stats.gmac_per_s(row.gmacs, row.median_ms)
    if row.device == "cpu":  # the peak is a CPU GEMM: meaningless for an accelerator's row
        row.peak_gmac_per_s, row.peak_source = reference_peak(gemm, row.precision, row.threads)
        row.peak_fraction = stats.fraction(row.gmac_per_s, row.peak_gmac_per_s)
        gb_per_s = bandwidth.get(row.threads)
        if costs and row.peak_gmac_per_s and gb_per_s and row.precision in BYTES_PER_ELEMENT:
            row.roofline_ms = roofline_ms(costs, row.precision, row.peak_gmac_per_s, gb_per_s)
            row.roofline_fraction = stats.fraction(row.roofline_ms, row.median_ms)


def _layer_costs(models: Iterable[str]) -> dict[str, list[LayerCost] | None]:
    """Layer costs per model file, each ONNX graph read once (a model's formats and thread counts share it)."""
    by_source: dict[Path, list[LayerCost] | None] = {}
    costs: dict[str, list[LayerCost] | None] = {}
    for model in dict.fromkeys(models):
        try:
            source = layer_shape_source(model)
        except MacsUnavailable:
            costs[model] = None
            continue
        if source not in by_source:
            try:
                by_source[source] = onnx_layer_costs(source)
            except MacsUnavailable:
                by_source[source] = None
        costs[model] = by_source[source]
    return costs


def _compare_with_fp32(row: Row, reference: Row) -> None:
    """Accuracy change against the fp32 file of the same format on the same (requested) device."""
    row.image_auroc_delta = stats.delta(row.image_auroc, reference.image_auroc)
    row.pixel_auroc_delta = stats.delta(row.pixel_auroc, reference.pixel_auroc)
    if row.scores and reference.scores:
        row.score_spearman_vs_fp32 = stats.spearman(row.scores, reference.scores)


def _compare(rows: Sequence[Row], files: Sequence[ModelFile], gemm: list[GemmResult],
             bandwidth: Mapping[int, float]) -> None:
    eager_ms = {(r.architecture, r.threads): r.median_ms for r in rows if r.is_eager and r.ok}
    costs = _layer_costs(r.model for r in rows if not r.is_eager and r.ok and r.device == "cpu")
    # Accuracy does not depend on the thread count: any row of the fp32 file on that device will do.
    by_file_and_device: dict[tuple[str, str | None], Row] = {}
    for r in rows:
        by_file_and_device.setdefault((r.model, r.requested_device), r)
    for row in rows:
        _compare_with_eager(row, eager_ms)
        _compare_with_peak(row, gemm, bandwidth, costs.get(row.model))
        fp32 = None if row.is_eager else fp32_counterpart(Path(row.model), files)
        reference = None if fp32 is None else by_file_and_device.get((str(fp32.path), row.requested_device))
        if reference is not None:
            _compare_with_fp32(row, reference)


# ----------------------------------------------------------------------------------------------------
# the table


def _sort(rows: list[Row], files: Sequence[ModelFile], results: Results) -> None:
    """Per thread count, per architecture: its eager row, then its files (the order the table reads best in)."""
    file_order = {str(f.path): i for i, f in enumerate(files)}
    arch_order = {a: i for i, a in enumerate(dict.fromkeys(f.architecture for f in files))}
    device_order = {d: i for i, d in enumerate(dict.fromkeys(k[2] for k in results if k[0] == "file"))}
    rows.sort(key=lambda r: (r.threads, arch_order.get(r.architecture, len(arch_order)), not r.is_eager,
                             file_order.get(r.model, -1), device_order.get(r.requested_device, -1)))


def build_rows(files: Sequence[ModelFile], results: Results, eager_targets: Mapping[Architecture, dict[str, Any]],
               settings: Mapping[str, Any], cores: int | None = None) -> list[dict[str, Any]]:
    """JSON rows (ROW_KEYS) from the worker results: latency statistics, speed-up over the eager row of the
    same architecture and thread count, achieved vs peak GMAC/s (CPU rows: the peak is a CPU GEMM), accuracy and
    its change vs the fp32 file on the same device.

    ``results`` keys: ("eager", arch, threads), ("file", path, device, threads), ("accuracy", path, device),
    ("accuracy", arch), ("gemm", threads). ``device`` is the requested one; the row's "device" is where it ran
    (what ``auto`` resolved to). ``settings`` (runs, warmup, rounds) is copied into every row; ``cores`` (the machine's
    logical cores) decides whether other processes' CPU use made a row "contended".
    """
    gemm = [GemmResult(**g) for k, r in results.items() if k[0] == "gemm" and r.get("status") == "ok"
            for g in r["gemm"]]
    bandwidth = {int(k[1]): float(r["bandwidth"]["gb_per_s"]) for k, r in results.items()
                 if k[0] == "gemm" and r.get("status") == "ok" and r.get("bandwidth")}
    rows = [_measured_row(key, result, files, results, eager_targets, settings, cores)
            for key, result in results.items() if key[0] in ("eager", "file")]
    _compare(rows, files, gemm, bandwidth)
    _sort(rows, files, results)
    return [row.to_json() for row in rows]

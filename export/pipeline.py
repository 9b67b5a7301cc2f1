"""``run_export``: run dir → fused graph → every requested file + its manifest, evaluated by the guard."""
from __future__ import annotations

import dataclasses
import importlib
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.formats import FORMAT_NAMES, PRECISIONS, get_format, model_filename
from edge.manifest import forget_entry
from train.models import method_spec

from .config import MODEL_STEM, ExportConfig, ExportError, require
from .datasets import CalibrationWarning, ExportData, load_export_data
from .graph import FusedGraph, load_fused_graph
from .guard import PARITY_ATOL, Outputs, file_accuracy, guard_violations, load_file_engine, score_outputs, split_metrics
from .head_scope import WeightKey
from .int8_scope import choose_layers
from .manifest_writer import build_manifest, write_file_manifest
from .thresholds import file_thresholds
from .writers import WriteJob, Written


class AccuracyGuardError(RuntimeError):
    """An int8 file lost more accuracy than the guard allows (and --allow-accuracy-drop was not given)."""

    result: ExportResult | None = None  # what was written before the guard failed

@dataclass
class ExportedFile:
    format: str
    precision: str
    path: Path
    manifest: Path
    accuracy: dict[str, Any]
    violations: list[str]
    threshold: float
    size_bytes: int
    seconds: float = 0.0  # time its writer took (conversion / quantisation)


@dataclass
class ExportResult:
    out: Path
    files: list[ExportedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def guard_passed(self) -> bool:
        return not any(f.violations for f in self.files)

    def table(self) -> str:
        """One line per file: size, latency, parity/correlation and AUROC figures, guard verdict."""
        head = (f"{'file':<18} {'MB':>6} {'ms/img':>7} {'spearman':>8} {'map_corr':>8} {'max|Δmap|':>9} "
                f"{'img_auroc':>9} {'pix_auroc':>9} {'threshold':>9}  guard")
        lines = [head]
        for f in self.files:
            v, t = f.accuracy["validation_normals"], f.accuracy.get("test") or {}

            def num(x: Any, fmt: str = ".4f") -> str:
                return format(x, fmt) if isinstance(x, (int, float)) and np.isfinite(x) else "-"
            lines.append(f"{f.path.name:<18} {f.size_bytes / 1e6:>6.2f} {num(f.accuracy['ms_per_image'], '.2f'):>7} "
                         f"{num(v.get('score_spearman')):>8} {num(v.get('map_correlation')):>8} "
                         f"{num(v.get('max_abs_diff_map'), '.2e'):>9} {num(t.get('image_auroc')):>9} "
                         f"{num(t.get('pixel_auroc')):>9} {num(f.threshold):>9}  "
                         f"{'ok' if not f.violations else 'FAIL: ' + '; '.join(f.violations)}")
        return "\n".join(lines)


def plan_files(cfg: ExportConfig) -> list[tuple[str, str, str]]:
    """(format, precision, file name) of every requested file the format offers, in export order: formats as
    edge.formats orders them, then precisions (fp32, fp16, int8)."""
    return [(fmt, p, model_filename(MODEL_STEM, fmt, p)) for fmt in FORMAT_NAMES if fmt in cfg.formats
            for p in PRECISIONS if p in cfg.precisions and p in get_format(fmt).precisions]


def not_offered(cfg: ExportConfig) -> list[str]:
    """"<format> <precision>" for each requested pair the format does not offer (skipped with a warning)."""
    return [f"{fmt} {p}" for fmt in FORMAT_NAMES if fmt in cfg.formats for p in cfg.precisions
            if p not in get_format(fmt).precisions]


def check_converters(cfg: ExportConfig) -> None:
    """ExportError naming the extra to install when a requested format's converter is missing (checked before
    any slow work, so a missing extra fails in a second)."""
    for fmt, precision, _ in plan_files(cfg):
        for p in dict.fromkeys(("fp32", precision)):  # fp16 and int8 are made from the fp32 file
            for module in get_format(fmt).converters[p]:
                require(module, f"{fmt} {p} export")


class _Exporter:
    """State shared while producing the files of one export (graph, data, reference outputs)."""

    def __init__(self, cfg: ExportConfig, graph: FusedGraph, data: ExportData, ref: Outputs,
                 ref_test: dict[str, Any] | None, tmp: Path, result: ExportResult) -> None:
        self.cfg, self.graph, self.data, self.ref, self.ref_test = cfg, graph, data, ref, ref_test
        self.tmp, self.result = tmp, result
        self.out = Path(cfg.out)
        self._calibration: np.ndarray | None = None
        self._fp32: dict[str, Written] = {}
        self._keep_fp32: tuple[dict[str, WeightKey], dict[str, Any]] | None = None

    @property
    def calibration(self) -> np.ndarray:
        if self._calibration is None:
            self._calibration = self.data.calibration.arrays(self.graph.spec)
        return self._calibration

    @property
    def keep_fp32(self) -> tuple[dict[str, WeightKey], dict[str, Any]]:
        """The layers every int8 file keeps fp32 (chosen once, export.int8_scope) and the report on them."""
        if self._keep_fp32 is None:
            self._keep_fp32 = choose_layers(self.graph, self.calibration, self.data.validation,
                                            self.cfg.int8_fp32_layers, self.cfg.int8_sensitivity_target,
                                            self.cfg.progress, self.cfg.int8_weight_bits)
        return self._keep_fp32

    def fp32_path(self, fmt: str) -> Path:
        """Where the fp32 file of a format goes: --out if requested, else a temp dir (a conversion source only:
        int8 is quantised from it, OpenVINO converts the ONNX one)."""
        requested = fmt in self.cfg.formats and "fp32" in self.cfg.precisions
        return (self.out if requested else self.tmp) / model_filename(MODEL_STEM, fmt, "fp32")

    def fp32(self, fmt: str) -> Written:
        """Produce (once) the fp32 file of a format with its writer (edge.formats names the module)."""
        if fmt not in self._fp32:
            job = WriteJob(self.graph, self.fp32_path(fmt), self.cfg.format_options(fmt),
                           fp32_of=lambda other: self.fp32(other).path)
            self._fp32[fmt] = _writer(fmt).write_fp32(job)
        return self._fp32[fmt]

    def fp16(self, fmt: str) -> Written:
        job = WriteJob(self.graph, self.out / model_filename(MODEL_STEM, fmt, "fp16"), self.cfg.format_options(fmt),
                       source=self.fp32(fmt).path)
        return _writer(fmt).write_fp16(job)

    def write(self, fmt: str, precision: str) -> Written:
        """The file of ``fmt`` at ``precision`` (fp32 once; fp16 and int8 from it)."""
        return {"fp32": self.fp32, "fp16": self.fp16, "int8": self.int8}[precision](fmt)

    def int8(self, fmt: str) -> Written:
        keep, report = self.keep_fp32
        job = WriteJob(self.graph, self.out / model_filename(MODEL_STEM, fmt, "int8"), self.cfg.format_options(fmt),
                       source=self.fp32(fmt).path, calibration=self.calibration, keep_fp32=keep)
        written = _writer(fmt).write_int8(job)
        assert written.quantization is not None
        written.quantization["fp32_layers_kept"].update(sensitivity=report)
        return written

    def finish(self, written: Written) -> ExportedFile:
        """Evaluate a file through edge.engines, calibrate its own thresholds and write its manifest (with the
        output names the engine found, read back exactly at run time)."""
        cfg, fmt, precision, path = self.cfg, written.format, written.precision, written.path
        forget_entry(path)  # a previous export's entry describes the replaced file: never let the engine read it
        engine = load_file_engine(path, cfg.threads)
        outputs = score_outputs(engine.run, self.data, self.graph.spec, desc=path.name, progress=cfg.progress)
        accuracy = file_accuracy(self.ref, outputs, self.data, self.ref_test, cfg.threads)
        accuracy["engine"] = {k: v for k, v in engine.describe().items() if k != "model"}
        violations = guard_violations(precision, accuracy, cfg.max_image_auroc_drop, cfg.max_pixel_auroc_drop,
                                      cfg.min_score_spearman)
        accuracy["guard"] = {"passed": not violations, "violations": violations,
                             # an fp16 file that holds the guard may run in fp16 (TensorRT, GPUs): edge.devices
                             "covers": ["fp16"] if precision == "fp16" and not violations else [],
                             "allowed_by_flag": bool(violations and cfg.allow_accuracy_drop),
                             "limits": {"max_image_auroc_drop_points": cfg.max_image_auroc_drop,
                                        "max_pixel_auroc_drop_points": cfg.max_pixel_auroc_drop,
                                        "min_score_spearman": cfg.min_score_spearman,
                                        "fp32_parity_atol": PARITY_ATOL}}
        threshold = file_thresholds(self.data, outputs, cfg.threshold_mode, cfg.target_fpr)
        export_info = {"tool": "dcam-export", "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                         for k, v in dataclasses.asdict(cfg).items()},
                       "data": self.data.sources, "warnings": list(self.result.warnings)}
        manifest = write_file_manifest(path, build_manifest(
            fmt, precision, self.graph, threshold, accuracy, written.quantization, export_info, engine.graph_io,
            runtime_note=getattr(_writer(fmt), "RUNTIME_NOTE", None)))
        return ExportedFile(fmt, precision, path, manifest, accuracy, violations, float(threshold["global"]),
                            written.size_bytes, written.seconds)


def _writer(fmt: str) -> Any:
    """The export module that writes ``fmt`` (write_fp32 / write_int8, export.writers)."""
    return importlib.import_module(get_format(fmt).writer)


def run_export(cfg: ExportConfig) -> ExportResult:
    """Write every requested file with its manifest; AccuracyGuardError (carrying ``.result``) when a file
    fails the guard and ``cfg.allow_accuracy_drop`` is False."""
    check_converters(cfg)
    out = Path(cfg.out)
    result = ExportResult(out)
    plan = [(fmt, p) for fmt, p, _ in plan_files(cfg)]
    skipped = not_offered(cfg)
    if not plan:
        raise ExportError(f"--formats {','.join(cfg.formats)} --precisions {','.join(cfg.precisions)}: "
                          f"no file to write ({', '.join(skipped)} not offered)")
    for pair in skipped:
        result.warnings.append(f"{pair}: not offered by this format, skipped")
        tqdm.write(f"warning: {pair}: not offered by this format, skipped", file=sys.stderr)
    with tqdm(total=3 + len(plan), desc="dcam-export", unit="step", file=sys.stderr, disable=not cfg.progress) as bar:
        bar.set_postfix_str("fusing the inference graph")
        graph, train_cfg = load_fused_graph(cfg.run, seed=cfg.seed)
        fp32_only = method_spec(train_cfg.model.method).fp32_only  # why this method has no int8 path yet
        if fp32_only and any(p == "int8" for _, p in plan):
            plan = [(fmt, p) for fmt, p in plan if p != "int8"]
            if not plan:
                raise ExportError(f"--precisions int8: {train_cfg.model.method} exports fp32 only ({fp32_only})")
            message = f"{train_cfg.model.method}: int8 skipped, fp32 only ({fp32_only})"
            result.warnings.append(message)
            tqdm.write(f"warning: {message}", file=sys.stderr)
            bar.total = 3 + len(plan)
        bar.update()
        bar.set_postfix_str("loading images")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CalibrationWarning)
            data = load_export_data(train_cfg, graph.info["categories"], graph.spec, cfg.calib_data,
                                    cfg.calib_samples if "int8" in cfg.precisions else 1, cfg.seed, cfg.progress)
        for w in caught:
            if any(p == "int8" for _, p in plan) and issubclass(w.category, CalibrationWarning):
                result.warnings.append(str(w.message))
                tqdm.write(f"warning: {w.message}", file=sys.stderr)
        bar.update()
        bar.set_postfix_str("torch fp32 reference")
        ref = score_outputs(graph.run, data, graph.spec, desc="torch fp32", progress=cfg.progress, batch_size=16)
        ref_test = split_metrics(data.test, *ref.test_outputs()) if data.test is not None else None
        bar.update()
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="dcam-export-") as tmp:
            exporter = _Exporter(cfg, graph, data, ref, ref_test, Path(tmp), result)
            for fmt, precision in plan:
                bar.set_postfix_str(model_filename(MODEL_STEM, fmt, precision))
                written = exporter.write(fmt, precision)
                result.files.append(exporter.finish(written))
                bar.update()
    if not result.guard_passed and not cfg.allow_accuracy_drop:
        failed = [f"{f.path.name}: {'; '.join(f.violations)}" for f in result.files if f.violations]
        err = AccuracyGuardError("accuracy guard FAILED for " + " | ".join(failed) +
                                 " (files and manifests were written with accuracy.guard.passed=false; fix the "
                                 "calibration data or pass --allow-accuracy-drop to accept)")
        err.result = result
        raise err
    return result

"""``dcam-export`` options (one dataclass field per CLI flag and ``--config`` key) and the export error types.

Formats, precisions, the per-format options and their allowed values, and the file-name rule are
``edge.formats``; the constants below re-export them under the names this package uses.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from edge.accuracy import GuardLimits
from edge.cliconfig import option
from edge.formats import (
    DEFAULT_INT8_WEIGHT_BITS,
    DEFAULT_PRECISIONS,
    FORMAT_NAMES,
    INT8_WEIGHT_BITS,
    ONNX_CALIBRATIONS,
    ONNX_INT8_SCOPES,
    OPENVINO_BIAS_CORRECTIONS,
    OPENVINO_PRESETS,
    PRECISIONS,
    TFLITE_INT8_RECIPES,
    get_format,
)

FORMATS = FORMAT_NAMES
THRESHOLD_MODES = ("fpr", "f1")
# Architecture-independent stem of every exported file (contract: dcam.onnx, dcam.int8.onnx, ...).
MODEL_STEM = "dcam"
EXTRA_HINT = "pip install dcam-edge[export]"
# Post-training quantisation wants a few hundred representative images (NNCF's default subset_size).
RECOMMENDED_CALIB_SAMPLES = 300


class ExportError(ValueError):
    """Bad export input or a failed conversion; the message names the file/option and what was expected."""


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional converter package or raise one line naming the extra to install."""
    # TensorFlow-based converters (litert-torch, ai-edge-*) print C++ INFO lines on import otherwise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("torchao").setLevel(logging.ERROR)  # litert-torch's torchao warns about CUDA kernels
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{purpose} needs the Python package {module.split('.')[0]!r} "
                          f"({type(exc).__name__}: {exc}); install the export extra: {EXTRA_HINT}") from None


def _parse_list(value: str | list[str] | tuple[str, ...], valid: tuple[str, ...], flag: str) -> tuple[str, ...]:
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [v for v in items if v not in valid]
    if unknown:
        raise ExportError(f"{flag}: unknown value(s) {', '.join(unknown)}; expected one or more of {', '.join(valid)}")
    if not items:
        raise ExportError(f"{flag}: expected one or more of {', '.join(valid)}")
    return tuple(dict.fromkeys(items))  # de-duplicated, order kept


@dataclass
class ExportConfig:
    """What to export and how (defaults: the issue's guard limits and 1 false alarm per 1000 normal images).

    One field per ``dcam-export`` flag and ``--config`` key (edge.cliconfig)."""

    run: str = option("", "dcam-train run directory (config.json + best.pt)")
    out: str = option("", "output directory for the model files and manifests")
    # A comma-separated string is accepted too ("onnx,openvino"): the flag's form.
    formats: tuple[str, ...] = option(FORMATS, f"comma-separated subset of {','.join(FORMATS)}", split=",")
    precisions: tuple[str, ...] = option(DEFAULT_PRECISIONS, f"comma-separated subset of {','.join(PRECISIONS)} "
                                         "(fp16: for GPUs/NPUs; ONNX and OpenVINO)", split=",")
    calib_data: str | None = option(None, "folder of normal images for int8 calibration (default: the run's "
                                          "training normals)")
    calib_samples: int = option(RECOMMENDED_CALIB_SAMPLES, "at most this many calibration images (warning under "
                                                           f"{RECOMMENDED_CALIB_SAMPLES})")
    threshold_mode: str = option("fpr", "fpr: false-alarm rate on validation normals; f1: F1-optimal on labelled "
                                        "test images", choices=THRESHOLD_MODES)
    target_fpr: float = option(0.001, "false-alarm rate on normal images for --threshold-mode fpr")
    allow_accuracy_drop: bool = option(False, "exit 0 even when an int8 file fails the accuracy guard")
    # Accuracy guard for int8 vs fp32 (percentage points of AUROC; Spearman of image scores): edge.accuracy's limits.
    max_image_auroc_drop: float = option(GuardLimits.max_image_auroc_drop,
                                         "guard: largest allowed int8 image-AUROC drop vs fp32, in points")
    max_pixel_auroc_drop: float = option(GuardLimits.max_pixel_auroc_drop,
                                         "guard: largest allowed int8 pixel-AUROC drop vs fp32, in points")
    min_score_spearman: float = option(GuardLimits.min_score_spearman, "guard: smallest allowed Spearman of int8 vs "
                                       "fp32 image scores on validation normals")
    threads: int = option(2, "engine threads for evaluation/timing")
    # Measured (export.sensitivity): a few early teacher convolutions carry most of the int8 loss on real photos
    int8_fp32_layers: str = option("auto", "convolutions every int8 file keeps fp32: auto (the fewest most "
                                   "int8-sensitive ones that bring the simulated score Spearman to "
                                   "--int8-sensitivity-target, at most 8), N (the N most sensitive) or 0 (none)")
    int8_sensitivity_target: float = option(0.99, "--int8-fp32-layers auto: simulated int8-vs-fp32 score Spearman "
                                            "on validation normals to reach")
    # "backbone" quantises every backbone op (Conv, Add, Clip, ...); "conv" only Conv/MatMul/Gemm (head fp32 in both)
    onnx_int8_scope: str = option("backbone", "backbone: quantise every backbone op; conv: only Conv/MatMul/Gemm "
                                              "(head always fp32)", choices=ONNX_INT8_SCOPES)
    onnx_calibration: str = option("minmax", "ONNX Runtime activation-range calibration method",
                                   choices=ONNX_CALIBRATIONS)
    # "static" = int8 weights + int8 activations for the backbone's CONV_2D / DEPTHWISE_CONV_2D; "dynamic" =
    # int8 weights, activations quantised at run time
    tflite_int8: str = option("static", "static: int8 conv weights+activations (calibrated); dynamic: int8 weights, "
                                        "dynamic range", choices=TFLITE_INT8_RECIPES)
    # full: NNCF's BiasCorrection (measured on a 256 px Lite0: map correlation 0.9957 → 0.9978, pixel-AUROC
    # drop 0.95 → 0.48 points); fast: FastBiasCorrection, quicker export
    openvino_bias_correction: str = option("full", "NNCF bias correction after int8 quantisation: full (more "
                                                   "accurate) or fast", choices=OPENVINO_BIAS_CORRECTIONS)
    openvino_preset: str = option("performance", "NNCF quantisation preset: performance (symmetric int8 "
                                  "activations) or mixed (asymmetric activations, weights symmetric)",
                                  choices=OPENVINO_PRESETS)
    # Measured on an AVX2-only EPYC (Zen 3), photoset7 Lite0 model, 8 layers fp32: 8-bit weights overflow the
    # int16 pair sums there (score Spearman ONNX 0.83, OpenVINO 0.92); 7-bit: 0.93 / 0.98 (edge.cpu).
    int8_weight_bits: int = option(DEFAULT_INT8_WEIGHT_BITS,
                                   "int8 weight range of the ONNX and OpenVINO files: 7 (exact on every x86 CPU) or 8 "
                                   "(one more bit; overflows on x86 CPUs without VNNI)",
                                   choices=INT8_WEIGHT_BITS.choices)
    seed: int = option(0, "seed of the calibration-image subset")
    progress: bool = option(True, "show progress bars (--no-progress hides them)")

    def __post_init__(self) -> None:
        self.formats = _parse_list(self.formats, FORMATS, "--formats")
        self.precisions = _parse_list(self.precisions, PRECISIONS, "--precisions")
        self._check_paths_and_thresholds()
        self._check_format_options()
        self._check_guard_limits()

    def _check_paths_and_thresholds(self) -> None:
        if not self.run:
            raise ExportError("--run: expected a dcam-train run directory")
        if not self.out:
            raise ExportError("--out: expected an output directory")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ExportError(f"--threshold-mode: expected one of {', '.join(THRESHOLD_MODES)}, "
                              f"got {self.threshold_mode!r}")
        if not 0.0 < self.target_fpr < 1.0:
            raise ExportError(f"--target-fpr: expected a rate in (0, 1), e.g. 0.001, got {self.target_fpr}")
        if self.calib_data is not None and not Path(self.calib_data).is_dir():
            raise ExportError(f"--calib-data {self.calib_data}: directory not found "
                              f"(expected a folder of normal images)")
        if self.calib_samples < 1:
            raise ExportError(f"--calib-samples: expected a positive integer, got {self.calib_samples}")
        if self.threads < 1:
            raise ExportError(f"--threads: expected a positive integer, got {self.threads}")

    def _check_format_options(self) -> None:
        for fmt in self.formats:  # each requested format checks its own options (edge.formats)
            for format_option in get_format(fmt).options:
                if getattr(self, format_option.field) not in format_option.choices:
                    raise ExportError(f"{format_option.flag}: expected one of "
                                      f"{', '.join(map(str, format_option.choices))}, "
                                      f"got {getattr(self, format_option.field)!r}")

    def _check_guard_limits(self) -> None:
        if self.int8_fp32_layers != "auto" and not (self.int8_fp32_layers.isdigit()):
            raise ExportError(f"--int8-fp32-layers: expected auto or a count >= 0, got {self.int8_fp32_layers!r}")
        if not -1.0 <= self.int8_sensitivity_target <= 1.0:
            raise ExportError(f"--int8-sensitivity-target: expected a value in [-1, 1], "
                              f"got {self.int8_sensitivity_target}")
        for name in ("max_image_auroc_drop", "max_pixel_auroc_drop"):
            if getattr(self, name) < 0:
                raise ExportError(f"--{name.replace('_', '-')}: expected >= 0 AUROC points")
        if not -1.0 <= self.min_score_spearman <= 1.0:
            raise ExportError(f"--min-score-spearman: expected a value in [-1, 1], got {self.min_score_spearman}")

    def format_options(self, fmt: str) -> dict[str, Any]:
        """The values of the options only ``fmt`` reads ({"onnx_int8_scope": "backbone", ...})."""
        return {option.field: getattr(self, option.field) for option in get_format(fmt).options}

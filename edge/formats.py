"""Every model file format dcam-edge knows: ONE table, read by edge, export and bench.

One frozen record per format (the idea of ultralytics' ``export_formats()``): its name (the manifest's
``format``, ``dcam-export --formats``, bench's format column), file suffix and side file, the edge engine
that runs it and the package that engine needs, the packages dcam-export converts with per precision,
the export module that writes it and the dcam-export options only it reads.  Which devices each engine
runs on is ``edge.devices`` (keyed by these names); the file-name rule ``<stem>[.int8]<suffix>`` is
``model_filename`` / ``parse_model_filename`` here and nowhere else.

Adding a format (TensorRT, NCNN): a record in ``FORMATS`` and its writer module in ``export/``
(``write_<precision>`` for each of its ``precisions``, see ``export.writers``); a new engine also needs its
class in ``edge.engines`` and its devices in ``edge.devices``.  Pure data and stdlib: imports no engine, no torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")
# What dcam-export writes unless --precisions says otherwise (fp16 files are for GPUs: asked for explicitly).
DEFAULT_PRECISIONS = ("fp32", "int8")


class FormatError(ValueError):
    """An unknown format name or model-file extension."""


@dataclass(frozen=True)
class FormatOption:
    """A dcam-export option that only this format reads: its ExportConfig field and allowed values."""

    field: str
    choices: tuple[str | int, ...]

    @property
    def flag(self) -> str:
        """The command-line flag (``onnx_int8_scope`` → ``--onnx-int8-scope``)."""
        return "--" + self.field.replace("_", "-")


@dataclass(frozen=True)
class ModelFormat:
    """One model file format, from export to run time."""

    name: str  # manifest "format", --formats value, bench format column
    suffix: str  # of the model file
    engine: str  # edge.engines Engine.name that runs it
    engine_label: str  # how messages name that engine
    runtime_package: str  # pip package the engine imports (the edge install needs only this one)
    converters: Mapping[str, tuple[str, ...]]  # precision → modules dcam-export imports (checked before any work)
    writer: str  # export module with write_<precision> for each of ``precisions``
    options: tuple[FormatOption, ...] = ()
    weights_suffix: str | None = None  # side file the engine loads with the model (OpenVINO .bin)
    gemm_backend: str | None = None  # bench.gemm backend that runs this engine's GEMM kernels (None: none)
    precisions: tuple[str, ...] = PRECISIONS  # what dcam-export can write in this format

    @property
    def install(self) -> str:
        return f"pip install {self.runtime_package}"

    def weights_path(self, model_path: str | Path) -> Path | None:
        """The side file that belongs to ``model_path`` (``dcam.xml`` → ``dcam.bin``), else None."""
        return Path(model_path).with_suffix(self.weights_suffix) if self.weights_suffix else None

    def files(self, model_path: str | Path) -> tuple[Path, ...]:
        """Everything the engine loads: the model file, then its side file if the format has one."""
        weights = self.weights_path(model_path)
        return (Path(model_path),) + ((weights,) if weights is not None else ())

    def size_bytes(self, model_path: str | Path) -> int:
        """Bytes on disk of ``files(model_path)`` that exist."""
        return sum(p.stat().st_size for p in self.files(model_path) if p.is_file())


ONNX_INT8_SCOPES = ("backbone", "conv")  # every backbone op / only Conv, MatMul, Gemm (head fp32 either way)
ONNX_CALIBRATIONS = ("minmax", "percentile", "entropy")  # ONNX Runtime activation-range methods
OPENVINO_BIAS_CORRECTIONS = ("full", "fast")  # NNCF BiasCorrection / FastBiasCorrection
OPENVINO_PRESETS = ("performance", "mixed")  # NNCF: symmetric activations / asymmetric activations
TFLITE_INT8_RECIPES = ("static", "dynamic")  # ai-edge-quantizer: int8 activations too / dynamic range
# int8 weight range: 7 (|q| ≤ 64) keeps the u8×s8 pair sums of x86 CPUs without VNNI inside int16 (edge.cpu),
# 8 is one more bit, exact only on CPUs with VNNI/AMX or ARM. For the engines whose x86 kernels sum in int16.
INT8_WEIGHT_BITS = FormatOption("int8_weight_bits", (7, 8))
DEFAULT_INT8_WEIGHT_BITS = 7

FORMATS: dict[str, ModelFormat] = {f.name: f for f in (
    ModelFormat("onnx", ".onnx", "onnxruntime", "ONNX Runtime", "onnxruntime",
                {"fp32": ("onnx", "onnxscript", "onnxruntime"), "fp16": ("onnxruntime.transformers.float16",),
                 "int8": ("onnxruntime.quantization",)},
                "export.onnx_export",
                (FormatOption("onnx_int8_scope", ONNX_INT8_SCOPES),
                 FormatOption("onnx_calibration", ONNX_CALIBRATIONS), INT8_WEIGHT_BITS),
                gemm_backend="onnxruntime"),
    # The fp32 IR is converted from the fp32 ONNX graph, hence onnx/onnxscript.
    ModelFormat("openvino", ".xml", "openvino", "OpenVINO", "openvino",
                {"fp32": ("onnx", "onnxscript", "openvino"), "fp16": ("openvino",), "int8": ("nncf",)},
                "export.openvino_export", (FormatOption("openvino_bias_correction", OPENVINO_BIAS_CORRECTIONS),
                                           FormatOption("openvino_preset", OPENVINO_PRESETS), INT8_WEIGHT_BITS),
                weights_suffix=".bin", gemm_backend="openvino"),
    ModelFormat("tflite", ".tflite", "litert", "LiteRT", "ai-edge-litert",
                {"fp32": ("litert_torch", "ai_edge_litert"), "int8": ("ai_edge_quantizer",)},
                "export.tflite_export", (FormatOption("tflite_int8", TFLITE_INT8_RECIPES),),
                precisions=("fp32", "int8")),  # fp16: LiteRT's GPU delegate runs the fp32 file in fp16 itself
)}
FORMAT_NAMES = tuple(FORMATS)  # the canonical order: onnx, openvino, tflite
SUFFIXES = tuple(f.suffix for f in FORMATS.values())


def get_format(name: str) -> ModelFormat:
    """The record of a format name (FormatError listing the known ones)."""
    if name not in FORMATS:
        raise FormatError(f"format {name!r}: expected one of {', '.join(FORMAT_NAMES)}")
    return FORMATS[name]


def format_for_path(path: str | Path, error: type[Exception] = FormatError) -> ModelFormat:
    """The format of a model file by its extension; ``error`` (one line naming the file) for any other."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    raise error(f"{path}: unknown model extension {suffix!r}; expected one of {sorted(SUFFIXES)}")


def is_model_file(path: str | Path) -> bool:
    """Does the extension name a known format?"""
    return Path(path).suffix.lower() in SUFFIXES


@dataclass(frozen=True)
class ModelName:
    """What a model file name says: ``dcam.int8.onnx`` → stem "dcam", format "onnx", precision "int8"."""

    stem: str
    format: str
    precision: str


def model_filename(stem: str, fmt: str, precision: str) -> str:
    """``<stem><suffix>`` for fp32, ``<stem>.<precision><suffix>`` otherwise (dcam.onnx, dcam.int8.xml, ...)."""
    infix = "" if precision == "fp32" else f".{precision}"
    return f"{stem}{infix}{get_format(fmt).suffix}"


def parse_model_filename(path: str | Path, error: type[Exception] = FormatError) -> ModelName:
    """The inverse of ``model_filename`` (a name without a precision infix is fp32)."""
    path = Path(path)
    fmt = format_for_path(path, error)
    base = path.name[:-len(path.suffix)]
    for precision in PRECISIONS:
        if precision != "fp32" and base.lower().endswith(f".{precision}"):
            return ModelName(base[:-len(precision) - 1], fmt.name, precision)
    return ModelName(base, fmt.name, "fp32")


def with_precision(path: str | Path, precision: str) -> Path:
    """The file of the same model and format at another precision (dcam.int8.onnx → dcam.onnx for fp32)."""
    name = parse_model_filename(path)
    return Path(path).with_name(model_filename(name.stem, name.format, precision))

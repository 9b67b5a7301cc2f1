"""Which inference devices each engine can use: ONE table, read by edge.engines and bench.

``--device`` takes cpu, cuda, tensorrt, gpu, npu or auto.  ``ENGINES`` has one entry per format of
``edge.formats`` (same order; suffix, engine name, label and install hint come from that record, and
import fails when the two disagree).  Per engine each device maps onto what that engine is given: an
ONNX Runtime execution provider (plus the providers that take the nodes it cannot run, as ONNX
Runtime assigns them in order) or an OpenVINO device name.  LiteRT (.tflite) runs on the CPU only.

Accuracy guard coverage.  dcam-export measures every file's accuracy (``accuracy.guard`` of its
manifest) on the CPU, in the file's own precision (fp32 / int8).  A device that computes in that
same arithmetic is covered by it: CUDA and TensorRT with TF32 switched off, an OpenVINO GPU with
the manifest's f32 precision hint.  Reduced-precision modes — ``fp16`` (TensorRT ``trt_fp16_enable``,
OpenVINO GPU f16 hint) and ``tf32`` (NVIDIA tensor cores on Ampere and later, Jetson Orin included)
— are used only when the manifest lists them in ``accuracy.guard.covers`` (a list such as
``["fp16"]``; no exporter writes it yet, so today never).  A device whose hardware always computes in
reduced precision (the Intel NPU: fp16) is covered only where the guard lists that precision: ``auto``
never picks it otherwise, and an explicit ``--device npu`` runs with a warning.

``auto`` = the first of ``AUTO_ORDER`` that the file's engine supports, this machine offers
(``onnxruntime.get_available_providers()`` / ``openvino.Core().available_devices``) and the guard
covers; cpu is always last.  Nothing here imports an engine package at import time (nor torch).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.formats import FORMATS, ModelFormat, format_for_path

DEVICES = ("cpu", "cuda", "tensorrt", "gpu", "npu")
DEVICE_CHOICES = DEVICES + ("auto",)
AUTO_ORDER = ("tensorrt", "cuda", "npu", "gpu", "cpu")  # fastest first
REDUCED_PRECISIONS = ("fp16", "tf32")  # what accuracy.guard.covers may list


class DeviceError(ValueError):
    """A device the file's engine does not support, or that this machine does not offer."""


@dataclass(frozen=True)
class DeviceTarget:
    """One device of one engine."""

    device: str  # the --device name
    target: str  # ONNX Runtime execution provider / OpenVINO device name / "CPU" (LiteRT)
    # ONNX Runtime: providers for the nodes ``target`` cannot run, in order (only those available are used).
    fallback: tuple[str, ...] = ()
    # Precision the hardware always computes floats in when not the file's own (Intel NPU: fp16).
    computes: str | None = None
    # Faster reduced-precision modes of this device, switched on only where the guard covers them.
    optional: tuple[str, ...] = ()
    # Whether the --threads setting applies (ONNX Runtime: CPU fallback nodes; OpenVINO: CPU only).
    threads: bool = True
    # OpenVINO INFERENCE_PRECISION_HINT values the device accepts (the manifest's hint when it is one of them).
    precision_hints: tuple[str, ...] = ()
    missing: str = ""  # what to install when this machine does not offer ``target``

    def covered_by(self, covers: frozenset[str]) -> bool:
        """Does the manifest's accuracy guard cover this device's arithmetic?"""
        return self.computes is None or self.computes in covers

    def modes(self, covers: frozenset[str]) -> tuple[str, ...]:
        """The reduced precisions this device computes in for a file whose guard covers ``covers``."""
        return tuple(p for p in self.optional if p in covers) + ((self.computes,) if self.computes else ())


def _ort_available() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def _openvino_available() -> list[str]:
    import openvino as ov
    return list(ov.Core().available_devices)


def _cpu_only() -> list[str]:
    return ["CPU"]


@dataclass(frozen=True)
class EngineSupport:
    """The engine of one format (edge.formats) and the devices it can run that format's files on."""

    model_format: ModelFormat
    devices: tuple[DeviceTarget, ...]
    available: Callable[[], list[str]]  # the targets this machine offers (imports the engine package)
    target_word: str = ""  # how the error names a missing target: "CUDAExecutionProvider", "GPU device"

    @property
    def engine(self) -> str:
        return self.model_format.engine

    @property
    def format(self) -> str:
        return self.model_format.name

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (self.model_format.suffix,)

    @property
    def label(self) -> str:
        return self.model_format.engine_label

    @property
    def install(self) -> str:
        return self.model_format.install

    def target(self, device: str) -> DeviceTarget | None:
        return next((t for t in self.devices if t.device == device), None)

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(t.device for t in self.devices)


ORT_GPU_MISSING = ("install onnxruntime-gpu (x86, in place of onnxruntime) or NVIDIA's Jetson onnxruntime-gpu "
                   "wheel (see NVIDIA's Jetson Zoo page for the wheel matching your JetPack)")
# Per format name: (devices, cpu first — the default target; how to list the offered ones; missing-target word).
_DEVICE_TABLE: dict[str, tuple[tuple[DeviceTarget, ...], Callable[[], list[str]], str]] = {
    "onnx": ((
        DeviceTarget("cpu", "CPUExecutionProvider"),
        DeviceTarget("cuda", "CUDAExecutionProvider", fallback=("CPUExecutionProvider",), optional=("tf32",),
                     missing=ORT_GPU_MISSING),
        DeviceTarget("tensorrt", "TensorrtExecutionProvider",
                     fallback=("CUDAExecutionProvider", "CPUExecutionProvider"), optional=("fp16", "tf32"),
                     missing=ORT_GPU_MISSING + "; TensorRT itself comes with JetPack (x86: NVIDIA's TensorRT "
                                               "packages)"),
    ), _ort_available, ""),
    "openvino": ((
        DeviceTarget("cpu", "CPU", precision_hints=("f32", "bf16", "f16")),
        DeviceTarget("gpu", "GPU", optional=("fp16",), threads=False, precision_hints=("f32", "f16"),
                     missing="install Intel's GPU compute runtime (intel-opencl-icd / intel-level-zero-gpu) and add "
                             "the user to group render"),
        DeviceTarget("npu", "NPU", computes="fp16", threads=False,
                     missing="install Intel's NPU driver (intel/linux-npu-driver, Core Ultra CPUs) and add the user "
                             "to group render"),
    ), _openvino_available, " device"),
    "tflite": ((DeviceTarget("cpu", "CPU"),), _cpu_only, " device"),
}
if set(_DEVICE_TABLE) != set(FORMATS):  # a format added to edge.formats needs its devices here (and vice versa)
    raise ImportError(f"edge.devices lists {sorted(_DEVICE_TABLE)}, edge.formats {sorted(FORMATS)}")
ENGINES: tuple[EngineSupport, ...] = tuple(EngineSupport(f, *_DEVICE_TABLE[name]) for name, f in FORMATS.items())
ENGINE_BY_FORMAT: dict[str, EngineSupport] = {e.format: e for e in ENGINES}


def engine_for(path: str | Path) -> EngineSupport | None:
    """The engine of a model file by its extension (None for an unknown one)."""
    try:
        return ENGINE_BY_FORMAT[format_for_path(path).name]
    except ValueError:
        return None


def offers(available: Sequence[str], target: str) -> bool:
    """Is ``target`` among the available providers/devices ("GPU" also matches "GPU.0", "GPU.1")?"""
    return any(a == target or a.startswith(target + ".") for a in available)


def parse_devices(text: str, flag: str = "--device") -> tuple[str, ...]:
    """"cpu,cuda" → ("cpu", "cuda"), duplicates dropped; DeviceError naming ``flag`` for anything else."""
    values = tuple(dict.fromkeys(t.strip().lower() for t in str(text).split(",") if t.strip()))
    bad = [v for v in values if v not in DEVICE_CHOICES]
    if not values or bad:
        raise DeviceError(f"{flag} {text!r}: expected {', '.join(DEVICE_CHOICES)} (comma-separated where several "
                          f"are allowed)")
    return values


def check_device(device: str, flag: str = "--device") -> str:
    """The device name itself if it is one of DEVICE_CHOICES, else DeviceError naming ``flag``."""
    if device not in DEVICE_CHOICES:
        raise DeviceError(f"{flag} {device!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    return device


def guard_covers(manifest_data: Mapping[str, Any] | None) -> frozenset[str]:
    """Reduced precisions the manifest's accuracy guard was also evaluated at (``accuracy.guard.covers``)."""
    guard = ((manifest_data or {}).get("accuracy") or {}).get("guard") or {}
    covers = guard.get("covers") if isinstance(guard, Mapping) else None
    if not isinstance(covers, (list, tuple)):
        return frozenset()
    return frozenset(str(c) for c in covers if str(c) in REDUCED_PRECISIONS)


def _unsupported(support: EngineSupport, device: str) -> str:
    suffix = "/".join(support.suffixes)
    if support.device_names == ("cpu",):
        return f"--device {device}: {suffix} files run on the CPU only ({support.label}); use --device cpu"
    others = [e.suffixes[0] for e in ENGINES if e.target(device) is not None]
    return (f"--device {device}: {support.label} ({suffix}) runs on {', '.join(support.device_names)}, not {device}"
            + (f"; {device} needs a {' or '.join(others)} file" if others else ""))


def _probe(support: EngineSupport, device: str) -> list[str]:
    try:
        return list(support.available())
    except ImportError:
        raise DeviceError(f"--device {device}: {support.label} is not installed ({support.install})") from None


def candidates(support: EngineSupport, device: str, covers: frozenset[str] = frozenset()) -> list[DeviceTarget]:
    """The device targets to try for a file of ``support``'s engine, in order (the first that starts wins).

    cpu: that target alone, without probing (today's behaviour).  An explicit device: that target,
    or DeviceError (one line) when the engine does not support it or this machine does not offer
    it.  auto: every target of ``AUTO_ORDER`` that is offered and that the guard covers, cpu last.
    """
    check_device(device)
    if device == "cpu":
        return [support.devices[0]]
    if device != "auto":
        target = support.target(device)
        if target is None:
            raise DeviceError(_unsupported(support, device))
        available = _probe(support, device)
        if not offers(available, target.target):
            raise DeviceError(f"--device {device}: {support.label} has no {target.target}{support.target_word} here "
                              f"(available: {', '.join(available) or 'none'}); {target.missing}")
        return [target]
    try:
        available = list(support.available())
    except Exception:  # engine package missing or broken: the CPU attempt reports it
        available = []
    out = []
    for name in AUTO_ORDER:
        target = support.target(name)
        if target is None or not target.covered_by(covers):
            continue
        if name == "cpu" or offers(available, target.target):
            out.append(target)
    return out


def default_trt_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """TensorRT engine cache: ``$STATE_DIRECTORY/trt-cache`` under systemd (StateDirectory=dcam-edge →
    /var/lib/dcam-edge/trt-cache), else ``$XDG_CACHE_HOME/dcam-edge/trt-cache`` (~/.cache/...)."""
    env = os.environ if env is None else env
    state = env.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "trt-cache"
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dcam-edge" / "trt-cache"

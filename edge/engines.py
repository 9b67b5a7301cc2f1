"""Inference engines behind one interface: ONNX Runtime, OpenVINO, LiteRT (TFLite).

``load_engine(path)`` picks the engine by the file's format (``edge.formats``) and, with ``device``,
where it runs (cpu by default; cuda / tensorrt / gpu / npu / auto, see ``edge.devices``, the one table
of which engine runs on which device).  Every engine
takes the normalised float32 N×3×S×S tensor of ``edge.preprocess`` and returns
``(anomaly_map N×1×S×S float32, score N float32)``.  Outputs are taken by the exact tensor names
the manifest's ``graph_io`` holds (resolved once at export, by ``Engine.graph_io`` of this module);
without them (a file without manifest, a hand-written one) by name ("anomaly_map"/"score", loosely:
converters add prefixes), then by shape (the 4-D output is the map; a missing score output is the
map maximum, as in the exported head).
Engine packages are imported lazily so an install needs only the one it uses; torch is never
imported.
"""
from __future__ import annotations

import logging
import os
import platform
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.cpu import int16_pair_sums_saturate
from edge.devices import (
    ENGINE_BY_FORMAT,
    ENGINES,
    DeviceError,
    DeviceTarget,
    candidates,
    default_trt_cache_dir,
    guard_covers,
)
from edge.formats import FORMATS, INT8_WEIGHT_BITS, ModelFormat, format_for_path, parse_model_filename
from edge.manifest import GraphIO, Manifest, ManifestError, load_manifest, manifest_path_for, sha256_file
from edge.signalstack import drop_small_alternate_signal_stack

log = logging.getLogger("edge.engines")

OV_PRECISION_HINTS = ("f32", "bf16", "f16")
CPU_TARGETS = {e.engine: e.devices[0] for e in ENGINES}
CONTRACT_NAMES = GraphIO("anomaly_map", "score")  # what the exported graph calls its outputs (manifest "outputs")


class EngineError(ValueError):
    """Missing, corrupt or unsupported model file, or a missing engine package."""


class DeviceUnavailable(EngineError, DeviceError):
    """The requested device was offered but did not start (``auto`` then tries the next one)."""


DEVICE_START_HINT = ("check that the CUDA, cuDNN and TensorRT libraries this onnxruntime-gpu build needs are "
                     "installed (ONNX Runtime's own error above names the missing one)")


def _tensorrt_options(modes: Sequence[str], cache_dir: Path, precision: str) -> dict[str, Any]:
    """TensorRT EP options: engine cache on; fp16 only where the guard covers it; int8 for QDQ int8 files."""
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
            "trt_fp16_enable": "fp16" in modes, "trt_int8_enable": precision == "int8"}


# Per-provider session options (providers not named here get none).
ORT_PROVIDER_OPTIONS = {"TensorrtExecutionProvider": _tensorrt_options}


# Location-only lines of OpenVINO's multi-line errors ("Exception from src/inference/src/cpp/core.cpp:84:",
# "[ GENERAL_ERROR ] Check '_impl != nullptr' failed at src/core/src/any.cpp:96:"): they say where, not what.
_GENERIC_LINE = re.compile(r"(?:\[\s*[A-Z_]+\s*\]\s*)?(?:RuntimeError:\s*)?"
                           r"(?:Exception from \S+?:\d+:?|Check '.*' failed at \S+?:\d+:?)")
ARM_INT8_IR_HINT = "int8 OpenVINO IR is not supported on this CPU; use dcam.int8.tflite or dcam.int8.onnx"


def _first_line(exc: BaseException) -> str:
    """The first line of an engine error that says what went wrong (at most 300 characters).

    Skips OpenVINO's generic location lines; falls back to the first line, then to the type name.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if not _GENERIC_LINE.fullmatch(line):
            return line[:300]
    return lines[0][:300] if lines else type(exc).__name__


def _openvino_load_error(model_path: Path, precision: str, exc: BaseException) -> str:
    """EngineError text for an OpenVINO read/compile failure, with the ARM int8 hint where it applies.

    OpenVINO >= 2026.2 fails to compile the int8 IR on ARMv8.0 CPUs (Raspberry Pi 4 class) with
    "object is not initialized", while the fp32 IR and the ONNX/TFLite files load.
    """
    message = f"{model_path}: cannot load OpenVINO model ({_first_line(exc)})"
    is_int8 = precision == "int8" or parse_model_filename(model_path).precision == "int8"
    if (is_int8 and platform.machine().lower() in ("aarch64", "arm64", "armv8l")
            and "object is not initialized" in str(exc).lower()):
        message += f"; {ARM_INT8_IR_HINT}"
    return message


def _select_outputs(names: Sequence[str], ranks: Sequence[int | None], map_name: str,
                    score_name: str) -> tuple[int | None, int | None]:
    """Indices of the map and score outputs of a file without resolved names: by name, else by rank
    (4-D = map); None if undecided."""
    def by_name(wanted: str) -> int | None:
        exact = [i for i, n in enumerate(names) if n == wanted]
        if exact:
            return exact[0]
        # Converters may prefix/suffix names (e.g. "StatefulPartitionedCall:anomaly_map").
        loose = [i for i, n in enumerate(names) if wanted in n]
        return loose[0] if len(loose) == 1 else None

    i_map, i_score = by_name(map_name), by_name(score_name)
    if i_map is None:
        four = [i for i, r in enumerate(ranks) if r == 4 and i != i_score]
        i_map = four[0] if len(four) == 1 else None
    if i_score is None and i_map is not None:
        rest = [i for i, r in enumerate(ranks) if i != i_map and r is not None and r <= 2]
        i_score = rest[0] if len(rest) == 1 else None
    return i_map, i_score


def _named_outputs(names: Sequence[str], graph_io: GraphIO, model_path: Path) -> tuple[int, int | None]:
    """Indices of the outputs the manifest's graph_io names exactly; EngineError when one is not in the file."""
    for kind, wanted in (("anomaly_map", graph_io.anomaly_map), ("score", graph_io.score)):
        if wanted is not None and wanted not in names:
            raise EngineError(f"{model_path}: the manifest names output {wanted!r} (graph_io.{kind}) but the model's "
                              f"outputs are {list(names)}; the manifest does not describe this file (re-export it)")
    names = list(names)
    return names.index(graph_io.anomaly_map), None if graph_io.score is None else names.index(graph_io.score)


@dataclass(frozen=True)
class OpenRequest:
    """What ``load_engine`` decided for one attempt to open a file (each engine takes what it needs)."""

    model_path: Path
    precision: str
    outputs: GraphIO  # names to look for
    names_resolved: bool  # True: ``outputs`` is the manifest's graph_io, matched exactly
    threads: int | None
    target: DeviceTarget
    modes: tuple[str, ...]
    manifest: Manifest | None
    precision_hint: str | None
    trt_cache_dir: str | Path | None


class Engine(ABC):
    """Common wrapper: input checks, batch-1 looping, output selection and reshaping."""

    name: str = "engine"

    def __init__(self, model_path: Path, precision: str, outputs: GraphIO = CONTRACT_NAMES,
                 names_resolved: bool = False, target: DeviceTarget | None = None) -> None:
        self.model_path = model_path
        self.precision = precision
        self._outputs, self._names_resolved = outputs, names_resolved
        self.target = target or CPU_TARGETS[self.name]
        self.device = self.target.device  # the --device name it runs on
        self.providers: list[str] = [self.target.target]  # ORT session providers / OpenVINO execution devices
        self.info: dict[str, Any] = {}
        self._i_map: int | None = None
        self._i_score: int | None = None
        self._resolved = False

    # -- engine-specific --------------------------------------------------------------------
    @property
    @abstractmethod
    def input_shape(self) -> tuple[int | None, ...]:
        """Declared input shape as NCHW (None for dynamic dims)."""

    @classmethod
    @abstractmethod
    def open(cls, request: OpenRequest) -> Engine:
        """The engine for one attempt of ``load_engine`` (DeviceUnavailable: ``auto`` tries the next device)."""

    @property
    @abstractmethod
    def input_name(self) -> str:
        """The graph input's tensor name."""

    @abstractmethod
    def _output_names_ranks(self) -> tuple[list[str], list[int | None]]:
        """Declared output names and ranks (None if unknown)."""

    @abstractmethod
    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the graph on one (batch) tensor; return all outputs in declaration order."""

    # -- shared ------------------------------------------------------------------------------
    @property
    def image_size(self) -> int | None:
        s = self.input_shape[-1]
        return int(s) if isinstance(s, int) else None

    def _resolve(self, outputs: list[np.ndarray] | None = None) -> None:
        names, ranks = self._output_names_ranks()
        if self._names_resolved:
            self._i_map, self._i_score = _named_outputs(names, self._outputs, self.model_path)
            self._resolved = True
            return
        if outputs is not None:
            ranks = [o.ndim for o in outputs]
        self._i_map, self._i_score = _select_outputs(names, ranks, self._outputs.anomaly_map,
                                                     self._outputs.score or "score")
        if self._i_map is not None:
            self._resolved = True
        elif outputs is not None:
            raise EngineError(f"{self.model_path}: cannot identify the anomaly-map output among {names} "
                              f"(expected a 4-D output named {self._outputs.anomaly_map!r})")

    @property
    def graph_io(self) -> GraphIO:
        """The tensor names this engine reads the map and score from (what dcam-export records as graph_io);
        EngineError when they are not decided yet (run the engine once first)."""
        if not self._resolved or self._i_map is None:
            raise EngineError(f"{self.model_path}: the anomaly-map output is not identified yet (run it once)")
        names, _ = self._output_names_ranks()
        return GraphIO(names[self._i_map], None if self._i_score is None else names[self._i_score], self.input_name)

    def _run_one(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs = self._infer(x)
        if not self._resolved:
            self._resolve(outs)
        i_map = self._i_map
        assert i_map is not None  # _resolve(outs) identified the map or raised
        amap = np.asarray(outs[i_map], dtype=np.float32)
        n = x.shape[0]
        if amap.ndim == 4 and amap.shape[-1] == 1 and amap.shape[1] != 1:
            amap = amap.transpose(0, 3, 1, 2)  # NHWC map from a TFLite graph
        amap = amap.reshape(n, 1, *amap.shape[-2:])
        if self._i_score is None:
            score = amap.reshape(n, -1).max(axis=1)
        else:
            score = np.asarray(outs[self._i_score], dtype=np.float32).reshape(n)
        return amap, score

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x float32 N×3×S×S (normalised) → (anomaly_map N×1×S×S float32, score N float32)."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        expected = self.input_shape
        if x.ndim != 4 or x.shape[1] != 3 or any(
                isinstance(e, int) and e > 0 and e != a for e, a in zip(expected[2:], x.shape[2:])):
            raise EngineError(f"{self.model_path}: input of shape {tuple(x.shape)} does not match the model input "
                              f"{tuple(expected)} (N×3×S×S, normalised float32 from edge.preprocess)")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if expected[0] == 1 and x.shape[0] > 1:
            # Static batch-1 graphs (all exported ones): loop over the batch.
            parts = [self._run_one(x[i:i + 1]) for i in range(x.shape[0])]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return self._run_one(x)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device, "providers": list(self.providers),
                "model": str(self.model_path), "precision": self.precision,
                "input_shape": list(self.input_shape), **self.info}


def _session_options(ort: Any, threads: int | None) -> Any:
    """ONNX Runtime session options: quiet, ``threads`` intra-op threads, sequential execution."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    # One graph, one request at a time: no inter-op parallelism to compete for the cores.
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model_path: Path, precision: str, outputs: GraphIO = CONTRACT_NAMES,
                 names_resolved: bool = False, threads: int | None = None, target: DeviceTarget | None = None,
                 modes: Sequence[str] = (), trt_cache_dir: Path | None = None) -> None:
        super().__init__(model_path, precision, outputs, names_resolved, target)
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError(f"{model_path}: onnxruntime is not installed (pip install onnxruntime)") from None
        self.info = {}
        providers = self._providers(ort, modes, trt_cache_dir)
        self._keep_fp32_unless_tf32_guarded(modes)
        self._sess = self._session(ort, _session_options(ort, threads), providers)
        self.providers = list(self._sess.get_providers())
        target = self.target
        if target.target not in self.providers:  # ONNX Runtime falls back to the CPU with only a logged error
            raise DeviceUnavailable(f"--device {target.device}: ONNX Runtime could not start {target.target} (the "
                                    f"session got {', '.join(self.providers)}); {DEVICE_START_HINT}")
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            raise EngineError(f"{model_path}: expected one input, found {[i.name for i in inputs]}")
        self._input_name: str = inputs[0].name
        self._input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.info = {"threads": threads, "input_name": self._input_name, **self.info}
        self._resolve()

    def _providers(self, ort: Any, modes: Sequence[str], trt_cache_dir: Path | None) -> list[Any]:
        """The execution providers: the target's (with its options), then its fallbacks."""
        target = self.target
        providers: list[Any] = [target.target]
        if target.fallback:  # nodes the target cannot run go to the next provider, as ONNX Runtime assigns them
            available = ort.get_available_providers()
            providers += [p for p in target.fallback if p in available or p == "CPUExecutionProvider"]
        if target.target in ORT_PROVIDER_OPTIONS:
            if trt_cache_dir is None:
                raise EngineError(f"{self.model_path}: --device {target.device} needs an engine cache directory")
            providers[0] = (target.target, ORT_PROVIDER_OPTIONS[target.target](modes, trt_cache_dir, self.precision))
            self.info["trt_cache_dir"] = str(trt_cache_dir)
        return providers

    def _keep_fp32_unless_tf32_guarded(self, modes: Sequence[str]) -> None:
        if "tf32" not in self.target.optional:
            return
        # NVIDIA tensor cores round fp32 to TF32 by default (Ampere and later, Jetson Orin too); the accuracy
        # guard measured fp32, so keep fp32 unless it covers tf32. Read by cuBLAS/cuDNN/TensorRT at start-up,
        # i.e. when this session loads them; a value set by the operator is kept.
        if "tf32" not in modes:
            os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
        self.info["tf32"] = os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"

    def _session(self, ort: Any, options: Any, providers: list[Any]) -> Any:
        try:
            return ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/… types
            if self.target.device != "cpu":
                raise DeviceUnavailable(f"{self.model_path}: cannot load ONNX model on --device {self.target.device} "
                                        f"({_first_line(e)})") from None
            raise EngineError(f"{self.model_path}: cannot load ONNX model ({_first_line(e)})") from None

    @classmethod
    def open(cls, request: OpenRequest) -> Engine:
        r = request
        cache = None
        if r.target.target in ORT_PROVIDER_OPTIONS:
            cache = _model_cache_dir(Path(r.trt_cache_dir) if r.trt_cache_dir else default_trt_cache_dir(),
                                     r.model_path, r.manifest)
        return cls(r.model_path, r.precision, r.outputs, r.names_resolved, r.threads, r.target, r.modes, cache)

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._input_shape

    def _output_names_ranks(self) -> tuple[list[str], list[int | None]]:
        outs = self._sess.get_outputs()
        return [o.name for o in outs], [len(o.shape) if o.shape is not None else None for o in outs]

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self._sess.run(None, {self._input_name: x})
        return outputs


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, model_path: Path, precision: str, outputs: GraphIO = CONTRACT_NAMES,
                 names_resolved: bool = False, threads: int | None = None, precision_hint: str = "f32",
                 target: DeviceTarget | None = None, modes: Sequence[str] = ()) -> None:
        super().__init__(model_path, precision, outputs, names_resolved, target)
        if precision_hint not in OV_PRECISION_HINTS:
            raise EngineError(f"{model_path}: inference_precision_hint {precision_hint!r}, "
                              f"expected one of {list(OV_PRECISION_HINTS)}")
        bin_path = FORMATS["openvino"].weights_path(model_path)
        if bin_path is None or not bin_path.is_file():
            raise EngineError(f"{bin_path}: OpenVINO weights file not found (must sit beside {model_path.name})")
        try:
            import openvino as ov
        except ImportError:
            raise EngineError(f"{model_path}: openvino is not installed (pip install openvino)") from None
        target = self.target
        config: dict[str, Any] = {}
        hint: str | None = None
        if target.precision_hints:
            # Pin the precision: on AMX CPUs OpenVINO would otherwise silently run bf16 (score drift), on a GPU f16.
            hint = "f16" if "fp16" in modes else (precision_hint if precision_hint in target.precision_hints
                                                  else "f32")
            config["INFERENCE_PRECISION_HINT"] = hint
        config["PERFORMANCE_HINT"] = "LATENCY"
        if threads and target.threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = ov.Core()
            model = core.read_model(str(model_path))
            self._compiled = core.compile_model(model, target.target, config)
        except Exception as e:
            if target.device != "cpu":
                raise DeviceUnavailable(f"{model_path}: cannot compile the OpenVINO model for --device "
                                        f"{target.device} ({_first_line(e)}); {target.missing}") from None
            raise EngineError(_openvino_load_error(model_path, precision, e)) from None
        drop_small_alternate_signal_stack()  # else SIGTERM can become SIGSEGV on AVX-512/AMX CPUs
        if len(self._compiled.inputs) != 1:
            raise EngineError(f"{model_path}: expected one input, found {len(self._compiled.inputs)}")
        ps = self._compiled.input(0).get_partial_shape()
        self._input_shape = tuple(d.get_length() if d.is_static else None for d in ps)
        self._request = self._compiled.create_infer_request()
        self.providers = self._property("EXECUTION_DEVICES", list) or [target.target]
        self.info = {"threads": threads if target.threads else None, "inference_precision_hint": hint,
                     "compiled_precision": self._property("INFERENCE_PRECISION_HINT", lambda p: p.get_type_name())}
        self._resolve()

    @classmethod
    def open(cls, request: OpenRequest) -> Engine:
        r = request
        hint = r.precision_hint or (r.manifest.inference_precision_hint if r.manifest else "f32")
        return cls(r.model_path, r.precision, r.outputs, r.names_resolved, r.threads, hint, r.target, r.modes)

    @property
    def input_name(self) -> str:
        return str(self._compiled.input(0).get_any_name())

    def _property(self, name: str, convert: Any) -> Any:
        """A compiled-model property, None where the device does not report it."""
        try:
            return convert(self._compiled.get_property(name))
        except Exception:
            return None

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._input_shape

    def _output_names_ranks(self) -> tuple[list[str], list[int | None]]:
        names, ranks = [], []
        for out in self._compiled.outputs:
            tensor_names = sorted(out.get_names())
            # Prefer the name the exporter gave; OpenVINO may attach several aliases.
            pick = next((n for n in tensor_names if n in (self._outputs.anomaly_map, self._outputs.score)),
                        tensor_names[0] if tensor_names else "")
            names.append(pick)
            ps = out.get_partial_shape()
            ranks.append(ps.rank.get_length() if ps.rank.is_static else None)
        return names, ranks

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        self._request.infer({0: x})
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self._compiled.outputs))]


class LiteRtEngine(Engine):
    name = "litert"

    def __init__(self, model_path: Path, precision: str, outputs: GraphIO = CONTRACT_NAMES,
                 names_resolved: bool = False, threads: int | None = None, target: DeviceTarget | None = None) -> None:
        super().__init__(model_path, precision, outputs, names_resolved, target)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:  # older/slower fallback runtime (needs numpy<2)
                from tflite_runtime.interpreter import Interpreter
                self.name = "tflite_runtime"
            except ImportError:
                raise EngineError(f"{model_path}: neither ai-edge-litert nor tflite-runtime is installed "
                                  f"(pip install ai-edge-litert)") from None
        try:
            self._interp = Interpreter(model_path=str(model_path), num_threads=threads)
            self._interp.allocate_tensors()
        except Exception as e:
            raise EngineError(f"{model_path}: cannot load TFLite model ({_first_line(e)})") from None
        ins = self._interp.get_input_details()
        if len(ins) != 1:
            raise EngineError(f"{model_path}: expected one input, found {[d['name'] for d in ins]}")
        self._in = ins[0]
        self._outs = self._interp.get_output_details()
        shape = tuple(int(d) for d in self._in["shape"])
        # Some converters produce NHWC inputs; the runtime keeps NCHW at its interface.
        self._nhwc = len(shape) == 4 and shape[-1] == 3 and shape[1] != 3
        self._input_shape = (shape[0], shape[3], shape[1], shape[2]) if self._nhwc else shape
        self.info = {"threads": threads, "input_layout": "NHWC" if self._nhwc else "NCHW"}
        self._resolve()

    @classmethod
    def open(cls, request: OpenRequest) -> Engine:
        r = request
        return cls(r.model_path, r.precision, r.outputs, r.names_resolved, r.threads, r.target)

    @property
    def input_name(self) -> str:
        return str(self._in["name"])

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._input_shape

    def _output_names_ranks(self) -> tuple[list[str], list[int | None]]:
        return [d["name"] for d in self._outs], [len(d["shape"]) for d in self._outs]

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        if self._nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        dtype = self._in["dtype"]
        if dtype != np.float32:  # quantised I/O: float → int with the tensor's scale/zero point
            scale, zero = self._in["quantization"]
            x = np.clip(np.round(x / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        outs = []
        for d in self._outs:
            y = self._interp.get_tensor(d["index"])
            if d["dtype"] != np.float32:
                scale, zero = d["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            outs.append(y)
        return outs


ENGINE_CLASSES: dict[str, type[Engine]] = {cls.name: cls for cls in (OnnxRuntimeEngine, OpenVinoEngine, LiteRtEngine)}


def load_engine(model_path: str | Path, threads: int | None = None, manifest: Manifest | None = None,
                precision_hint: str | None = None, device: str = "cpu",
                trt_cache_dir: str | Path | None = None) -> Engine:
    """Open a model with the engine of its format (.onnx / .xml / .tflite, ``edge.formats``), on ``device``.

    Output names (``graph_io``, exact) and the OpenVINO precision hint come from ``manifest`` when given,
    else from the model's manifest file if it exists (read without hashing; ``load_manifest`` verifies),
    else the name/shape heuristic of the module docstring and "f32".  ``threads`` sets ONNX Runtime intra-op
    threads / OpenVINO INFERENCE_NUM_THREADS / LiteRT num_threads (None: engine default).
    ``device`` (``edge.devices``): cpu (default), cuda / tensorrt (.onnx), gpu / npu (.xml) or auto
    (the fastest this machine offers that the manifest's accuracy guard covers; a device that
    does not start is skipped).  ``trt_cache_dir``: TensorRT engine cache (default
    ``edge.devices.default_trt_cache_dir()``); each model file gets its own subdirectory named
    after its sha256, so a replaced model never reuses a stale engine.
    Raises EngineError (DeviceError for the device) naming the file or option in one line.
    """
    model_path = Path(model_path)
    fmt = format_for_path(model_path, EngineError)
    _check_model_file(model_path, threads)
    if manifest is None:
        manifest = _manifest_beside(model_path)
    support = ENGINE_BY_FORMAT[fmt.name]
    covers = guard_covers(manifest.data if manifest else None)
    targets = candidates(support, device, covers)  # DeviceError: unsupported / not offered here
    outputs, names_resolved = _output_names(manifest)
    precision = manifest.precision if manifest else parse_model_filename(model_path).precision
    for i, target in enumerate(targets):
        request = OpenRequest(model_path, precision, outputs, names_resolved, threads, target,
                              tuple(target.modes(covers)), manifest, precision_hint, trt_cache_dir)
        try:
            engine = ENGINE_CLASSES[fmt.engine].open(request)
        except DeviceUnavailable as e:
            if device != "auto" or i == len(targets) - 1:
                raise
            log.info("--device auto: %s; trying %s", e, targets[i + 1].device)
            continue
        _note_guard_coverage(engine, target, covers, model_path, precision)
        _note_runtime_version(manifest, fmt.runtime_package, model_path)
        _note_int8_overflow(manifest, fmt, precision, model_path)
        return engine
    raise EngineError(f"--device {device}: no device to run {model_path} on")  # pragma: no cover - cpu is last


def _check_model_file(model_path: Path, threads: int | None) -> None:
    if not model_path.is_file():
        raise EngineError(f"{model_path}: model file not found")
    if os.path.getsize(model_path) == 0:
        raise EngineError(f"{model_path}: model file is empty")
    if threads is not None and threads < 1:
        raise EngineError(f"--threads {threads}: expected a positive number of threads")


def _manifest_beside(model_path: Path) -> Manifest | None:
    """The model's manifest file, read without hashing; None if there is none or it is unreadable."""
    if not manifest_path_for(model_path).is_file():
        return None
    try:
        return load_manifest(model_path, verify_sha256=False)
    except ManifestError:
        return None  # the engine can still run; the runner reports manifest problems


def _output_names(manifest: Manifest | None) -> tuple[GraphIO, bool]:
    """The output names to look for, and whether they are the manifest's graph_io (matched exactly)."""
    if manifest is not None and manifest.graph_io is not None:
        return manifest.graph_io, True
    if manifest is not None:
        return GraphIO(manifest.output_name("anomaly_map"), manifest.output_name("score")), False
    return CONTRACT_NAMES, False


def _note_guard_coverage(engine: Engine, target: DeviceTarget, covers: frozenset[str], model_path: Path,
                         precision: str) -> None:
    """Record in the engine's info what it computes in; warn when the accuracy guard did not measure that."""
    covered = target.covered_by(covers)
    engine.info.update(reduced_precision=list(target.modes(covers)), guard_covered=covered)
    if not covered:
        log.warning("%s on --device %s computes in %s, which this file's export accuracy guard does not cover "
                    "(it was measured in %s on the CPU): scores may shift; re-calibrate the threshold with "
                    "edge-calibrate --device %s", model_path.name, target.device, target.computes, precision,
                    target.device)


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric release parts: "1.23.2" → (1, 23, 2), "2025.3.0-19807" → (2025, 3, 0)."""
    release = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(p) for p in release.group(0).split(".")) if release else ()


def installed_version(package: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _note_runtime_version(manifest: Manifest | None, package: str, model_path: Path) -> None:
    """Warn when the installed runtime is older than the one dcam-export checked this file with
    (``runtime.checked_with``): older kernels may lack an op or compute it differently."""
    checked = (manifest.entry.runtime.get("checked_with") or {}).get(package) if manifest else None
    installed = installed_version(package)
    if checked and installed and version_tuple(installed) < version_tuple(str(checked)):
        log.warning("%s was checked at export with %s %s; this machine has %s %s, which is older: scores are "
                    "not guaranteed to match (pip install '%s>=%s')", model_path.name, package, checked, package,
                    installed, package, checked)


def _note_int8_overflow(manifest: Manifest | None, fmt: ModelFormat, precision: str, model_path: Path,
                        saturates: bool | None = None) -> None:
    """Warn when an int8 file with 8-bit weights (files written before --int8-weight-bits, or with 8) runs where
    this engine's int8 kernels add u8×s8 product pairs in int16 (x86 without VNNI, edge.cpu): they overflow."""
    if precision != "int8" or INT8_WEIGHT_BITS not in fmt.options:
        return
    quantization = (manifest.entry.extra.get("quantization") if manifest else None) or {}
    if int(quantization.get("weight_bits", 8)) < 8:
        return
    if saturates if saturates is not None else int16_pair_sums_saturate():
        log.warning("%s has 8-bit int8 weights and this CPU has no VNNI: %s's int8 kernels add product pairs in "
                    "int16 here, which such weights overflow, so scores can be wrong (measured: score Spearman 0.83 "
                    "vs fp32). Re-export with dcam-export --int8-weight-bits 7 (the default) or run the fp32 file",
                    model_path.name, fmt.engine_label)


def _model_cache_dir(base: Path, model_path: Path, manifest: Manifest | None) -> Path:
    """``base/<first 16 hex digits of the model's sha256>``, created; EngineError naming --trt-cache-dir."""
    sha = manifest.entry.model_sha256 if manifest else ""
    if len(sha) < 16:
        sha = sha256_file(model_path)
    path = base / sha[:16]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"--trt-cache-dir {base}: cannot create {path} ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise EngineError(f"--trt-cache-dir {base}: {path} is not writable for this user")
    return path

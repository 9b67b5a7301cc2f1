"""Peak GEMM throughput of this machine, measured with the kernels each engine actually runs.

A model's convolutions lower to GEMMs (im2col / direct convolutions are GEMM-shaped), so a large
square GEMM — M = K = N = ``size`` — in the same library and precision is the roofline an engine can
approach on this CPU (Williams et al., "Roofline", CACM 2009: attainable = min(peak, AI × bandwidth);
a 1024³ GEMM has an arithmetic intensity far above the ridge point, so it measures the compute peak).

Backends (each imported only when asked for, so the edge install needs none of the optional ones):

* ``numpy``/fp32: BLAS sgemm (reference only; no engine runs numpy).
* ``onnxruntime``/fp32: a one-node ``MatMul`` graph → MLAS sgemm (what fp32 .onnx files run).
* ``onnxruntime``/int8: ``MatMulInteger`` u8 × s8 → MLAS QGEMM (VNNI/AMX when the CPU has them), the
  kernel ONNX Runtime's QLinearConv / fused QDQ convolutions run.
* ``openvino``/fp32: MatMul with constant weights compiled with INFERENCE_PRECISION_HINT=f32 (as
  the engine pins fp32 files).
* ``openvino``/int8: FakeQuantize(u8 activations) × dequantised s8 constant weights, the pattern NNCF
  writes; OpenVINO's low-precision transformations run it as an int8 GEMM (oneDNN, VNNI/AMX).
* ``torch``/fp32 and ``torch``/bf16: ``torch.matmul`` (the eager baseline; bf16 for reference).

LiteRT (XNNPACK) has no micro-benchmark here: building a .tflite needs the converter stack.

Throughput is reported in GMAC/s (1 MAC = 2 FLOP) from the median of ``runs`` timed repetitions, for each
of a few sizes (small sizes under-use wide vector units, large ones spill caches; the best one counts).
The machine peak of a precision is the best GEMM of any backend (``machine_peaks``); every row of that
precision is compared with it, so "% of peak" says how much of this CPU an engine leaves unused —
an engine's convolution kernels can beat its own MatMul, so its own GEMM is not its ceiling.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.stats import time_median_ms
from edge.formats import FORMATS

# (backend, precision) pairs this module can measure.
BACKENDS: tuple[tuple[str, str], ...] = (
    ("numpy", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
    ("openvino", "fp32"), ("openvino", "int8"), ("torch", "fp32"), ("torch", "bf16"),
)
# The GEMM kernel family each engine runs its convolutions with: (engine name, file precision) → (backend,
# precision), from edge.formats' gemm_backend (LiteRT/XNNPACK has none here), plus the eager baseline.
ENGINE_GEMM: dict[tuple[str, str], tuple[str, str]] = {
    **{(f.engine, p): (f.gemm_backend, p) for f in FORMATS.values() if f.gemm_backend for p in f.precisions},
    ("torch-eager", "fp32"): ("torch", "fp32"),
}


class GemmUnavailable(RuntimeError):
    """The backend (or a package it needs to build its graph) is not installed."""


@dataclass
class GemmResult:
    """One measured GEMM: ``gmac_per_s`` = size³ / median time."""

    backend: str
    precision: str
    threads: int
    size: int
    median_ms: float
    gmac_per_s: float
    other_cpu_cores: float | None = None  # cores other processes kept busy meanwhile (bench.cpuload)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _operands(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((size, size), dtype=np.float32),
            rng.standard_normal((size, size), dtype=np.float32))


def _numpy_fp32(size: int, threads: int) -> Callable[[], Any]:
    # numpy's BLAS reads its thread count from the environment at import: the worker sets it.
    a, b = _operands(size)
    return lambda: a @ b


def _onnx_model_bytes(precision: str, size: int) -> tuple[bytes, dict[str, np.ndarray]]:
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise GemmUnavailable("the onnx package is needed to build the MatMul graph (pip install onnx)") from None
    a, b = _operands(size)
    if precision == "fp32":
        weight = numpy_helper.from_array(b, "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type, feed = TensorProto.FLOAT, TensorProto.FLOAT, a
    else:
        weight = numpy_helper.from_array(np.clip(np.round(b * 32), -127, 127).astype(np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        feed = np.clip(np.round(a * 32 + 128), 0, 255).astype(np.uint8)
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [size, size])],
                              [helper.make_tensor_value_info("Y", y_type, [size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime ≥ 1.14
    return model.SerializeToString(), {"A": feed}


def _onnxruntime(precision: str) -> Callable[[int, int], Callable[[], Any]]:
    def build(size: int, threads: int) -> Callable[[], Any]:
        try:
            import onnxruntime as ort
        except ImportError:
            raise GemmUnavailable("onnxruntime is not installed") from None
        model, feed = _onnx_model_bytes(precision, size)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, feed)
    return build


def _openvino(precision: str) -> Callable[[int, int], Callable[[], Any]]:
    def build(size: int, threads: int) -> Callable[[], Any]:
        try:
            import openvino as ov
            import openvino.opset13 as ops
        except ImportError:
            raise GemmUnavailable("openvino is not installed") from None
        a, b = _operands(size)
        param = ops.parameter([size, size], np.float32, name="A")
        if precision == "fp32":
            weights = ops.constant(b)
            x = param
        else:
            # NNCF's int8 pattern: u8 FakeQuantize on activations, s8 weights with Convert → Multiply(scale).
            lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
            x = ops.fake_quantize(param, lo, hi, lo, hi, 256)
            q = ops.constant(np.clip(np.round(b * 32), -127, 127).astype(np.int8))
            weights = ops.multiply(ops.convert(q, np.float32), ops.constant(np.float32(1 / 32)))
        model = ov.Model([ops.matmul(x, weights, False, False)], [param], "gemm")
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads}
        compiled = ov.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        return lambda: request.infer({0: a})
    return build


def _torch(precision: str) -> Callable[[int, int], Callable[[], Any]]:
    def build(size: int, threads: int) -> Callable[[], Any]:
        try:
            import torch
        except ImportError:
            raise GemmUnavailable("torch is not installed") from None
        torch.set_num_threads(threads)
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        a, b = (torch.from_numpy(m).to(dtype) for m in _operands(size))

        def fn() -> Any:
            with torch.inference_mode():
                return torch.matmul(a, b)
        return fn
    return build


BUILDERS: dict[tuple[str, str], Callable[[int, int], Callable[[], Any]]] = {
    ("numpy", "fp32"): _numpy_fp32,
    ("onnxruntime", "fp32"): _onnxruntime("fp32"), ("onnxruntime", "int8"): _onnxruntime("int8"),
    ("openvino", "fp32"): _openvino("fp32"), ("openvino", "int8"): _openvino("int8"),
    ("torch", "fp32"): _torch("fp32"), ("torch", "bf16"): _torch("bf16"),
}


def measure_gemm(backend: str, precision: str, threads: int, size: int = 1024, runs: int = 10) -> GemmResult:
    """Median time of a size×size×size GEMM in ``backend`` at ``precision``; GemmUnavailable if not installed."""
    if (backend, precision) not in BUILDERS:
        raise ValueError(f"GEMM backend {backend}/{precision}: expected one of "
                         f"{', '.join(f'{b}/{p}' for b, p in BACKENDS)}")
    if size < 1 or runs < 1 or threads < 1:
        raise ValueError(f"GEMM size, runs and threads must be positive, got {size}, {runs}, {threads}")
    fn = BUILDERS[(backend, precision)](size, threads)
    ms = time_median_ms(fn, runs)
    return GemmResult(backend, precision, threads, size, ms, size ** 3 / (ms * 1e-3) / 1e9)


def machine_peaks(results: list[GemmResult]) -> dict[tuple[str, int], GemmResult]:
    """Best measurement per (precision, threads) over all backends and sizes: the machine's measured limit."""
    peaks: dict[tuple[str, int], GemmResult] = {}
    for r in results:
        key = (r.precision, r.threads)
        if key not in peaks or r.gmac_per_s > peaks[key].gmac_per_s:
            peaks[key] = r
    return peaks


def reference_peak(results: list[GemmResult], precision: str, threads: int) -> tuple[float | None, str | None]:
    """(GMAC/s, "backend/precision @ size³") of the machine peak a row of ``precision`` is compared with.

    One limit per precision — the best GEMM any engine reached on this machine at this thread count — so
    every engine's "% of peak" is on the same scale and says how much of the hardware it leaves unused.
    """
    best = machine_peaks(results).get((precision, threads))
    if best is None:
        return None, None
    return best.gmac_per_s, f"{best.backend}/{best.precision} @ {best.size}³"


def gemm_env(threads: int) -> dict[str, str]:
    """Environment for a worker process so BLAS/OpenMP pools match the requested thread count."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


__all__ = ["BACKENDS", "ENGINE_GEMM", "GemmResult", "GemmUnavailable", "gemm_env", "machine_peaks",
           "measure_gemm", "reference_peak"]

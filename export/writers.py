"""The writer interface every format module of ``edge.formats`` implements, and the one wrapper around it.

A writer module (``ModelFormat.writer``: export.onnx_export, export.openvino_export, export.tflite_export)
defines one function per precision of its ``ModelFormat.precisions``, each decorated with ``try_export``
(ultralytics' ``@try_export`` idea):

* ``write_fp32(job)`` writes ``job.path`` from ``job.graph`` (or from another format's fp32 file,
  ``job.fp32_of(name)``: OpenVINO converts the ONNX graph);
* ``write_int8(job)`` writes ``job.path`` from ``job.source`` (the fp32 file of the same format) and
  ``job.calibration``, keeps the distance head and the ``job.keep_fp32`` layers fp32, and returns the
  manifest's "quantization" section;
* ``write_fp16(job)`` (ONNX, OpenVINO) writes ``job.path`` from ``job.source`` (the fp32 file) and returns the
  manifest's "quantization" section (what is fp16, what stays fp32).

Each reads only its own dcam-export options (``job.options``, the fields ``ModelFormat.options`` names),
and may define ``RUNTIME_NOTE`` (a line for the manifest's ``runtime.note``).  The wrapper times the call,
measures what was written (the model file and its side file) and turns any converter exception into one
ExportError line naming the file; ExportErrors (missing package, a check of ours) pass through unchanged.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.formats import get_format

from .config import ExportError
from .head_scope import WeightKey

if TYPE_CHECKING:  # pragma: no cover
    from .graph import FusedGraph


@dataclass(frozen=True)
class WriteJob:
    """One file to write: where, from what, with which of the format's own options."""

    graph: FusedGraph
    path: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None  # fp16 / int8: the fp32 file of the same format
    calibration: np.ndarray | None = None  # int8: preprocessed calibration images (N×3×S×S)
    fp32_of: Callable[[str], Path] | None = None  # the fp32 file of another format, produced on demand
    keep_fp32: Mapping[str, WeightKey] = field(default_factory=dict)  # int8: layers kept fp32 (export.int8_scope)


@dataclass(frozen=True)
class Written:
    """What a writer produced."""

    path: Path
    format: str
    precision: str
    seconds: float
    size_bytes: int  # the model file and its side file (OpenVINO .bin)
    quantization: dict[str, Any] | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def try_export(fmt: str, precision: str) -> Callable[[Callable[[WriteJob], Any]], Callable[[WriteJob], Written]]:
    """Decorate a writer of ``fmt`` at ``precision``: the call returns ``Written`` (timing, size, its result)
    or raises ExportError "<path>: <fmt> <precision> export failed (<Type>: <first line>)"."""
    model_format = get_format(fmt)

    def decorate(write: Callable[[WriteJob], Any]) -> Callable[[WriteJob], Written]:
        @functools.wraps(write)
        def wrapper(job: WriteJob) -> Written:
            start = time.perf_counter()
            try:
                info = write(job)
            except ExportError:
                raise
            except Exception as exc:  # converters raise their own types; the user gets one line
                raise ExportError(f"{job.path}: {fmt} {precision} export failed ({_first_line(exc)})") from None
            if not Path(job.path).is_file():
                raise ExportError(f"{job.path}: {fmt} {precision} export wrote no file")
            return Written(Path(job.path), fmt, precision, time.perf_counter() - start,
                           model_format.size_bytes(job.path), info if precision != "fp32" else None)
        return wrapper
    return decorate

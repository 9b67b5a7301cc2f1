"""``python -m bench.input_fold``: would folding the input normalisation into the graph make a frame faster?

    python -m bench.input_fold --models DIR [--sizes 1024x1024,640x480] [--threads 1] [--runs 200] [--json OUT]

For each exported ONNX and OpenVINO file in DIR (with its manifest), a twin that takes the fitted model view's
uint8 NHWC RGB pixels is built in memory — ONNX: Cast → Transpose → Mul → Add spliced in front of the graph;
OpenVINO: its PrePostProcessor (u8 NHWC tensor, mean/scale, which OpenVINO folds into the first convolution).
Per camera-frame size, interleaved in one process: the engine alone on a prepared input, the host path
(``fit_frame`` + ``normalize`` + engine: what edge-run does) and the folded path (``fit_frame`` + twin), median ms,
and the twin's max |Δ map| against the host path (parity: the same map within float rounding for fp32 files).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.resize import parse_size
from bench.stats import percentile
from edge.cliconfig import ConfigCli, option, run_cli
from edge.manifest import load_manifest
from edge.preprocess import PreprocessSpec, fit_frame, normalisation_affine, normalize

FOLDED_INPUT = "pixels"
Runner = Callable[[np.ndarray], np.ndarray]  # model input → anomaly map


@dataclass
class InputFoldConfig:
    """bench.input_fold options."""

    models: str = option("", "folder of exported .onnx / .xml files with their manifests")
    sizes: tuple[str, ...] = option(("1024x1024", "640x480"), "camera frame sizes WIDTHxHEIGHT, comma-separated",
                                    split=",")
    threads: int = option(1, "engine threads")
    runs: int = option(200, "timed frames per path, file and size")
    json: str = option("", "write the rows as JSON here")

    def __post_init__(self) -> None:
        if not self.models or not Path(self.models).is_dir():
            raise ValueError(f"--models: expected a folder of exported files, got {self.models!r}")
        for size in self.sizes:
            parse_size(size)
        if min(self.threads, self.runs) < 1:
            raise ValueError("--threads and --runs must be positive")


def fold_onnx(model: Any, spec: PreprocessSpec) -> Any:
    """A copy of an ONNX ModelProto whose input is uint8 1×S×S×3 RGB: Cast, Transpose to NCHW, ·a + b in front."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    original = graph.input[0].name
    scale, offset = normalisation_affine(spec)
    graph.initializer.extend([numpy_helper.from_array(scale[None], "pixels_scale"),
                              numpy_helper.from_array(offset[None], "pixels_offset")])
    prefix = [helper.make_node("Cast", [FOLDED_INPUT], ["pixels_float"], to=TensorProto.FLOAT),
              helper.make_node("Transpose", ["pixels_float"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
              helper.make_node("Mul", ["pixels_nchw", "pixels_scale"], ["pixels_scaled"]),
              helper.make_node("Add", ["pixels_scaled", "pixels_offset"], [original])]
    del graph.input[0]
    s = spec.image_size
    graph.input.insert(0, helper.make_tensor_value_info(FOLDED_INPUT, TensorProto.UINT8, [1, s, s, 3]))
    for i, node in enumerate(prefix):
        graph.node.insert(i, node)
    onnx.checker.check_model(folded)
    return folded


def _onnx_runners(path: Path, spec: PreprocessSpec, threads: int) -> tuple[Runner, Runner]:
    import onnx
    import onnxruntime as ort

    from edge.engines import _session_options  # the session edge-run opens

    def session(model_bytes: bytes) -> Runner:
        sess = ort.InferenceSession(model_bytes, _session_options(ort, threads), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]

    model = onnx.load(str(path))
    return session(model.SerializeToString()), session(fold_onnx(model, spec).SerializeToString())


def _openvino_runners(path: Path, spec: PreprocessSpec, threads: int) -> tuple[Runner, Runner]:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}

    def runner(model: Any) -> Runner:
        compiled = core.compile_model(model, "CPU", config)
        request, output = compiled.create_infer_request(), compiled.outputs[0]
        return lambda x: request.infer([x])[output]

    model = core.read_model(str(path))
    ppp = ov.preprocess.PrePostProcessor(core.read_model(str(path)))
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([255.0 * m for m in spec.mean]) \
        .scale([255.0 * s for s in spec.std])
    return runner(model), runner(ppp.build())


RUNNERS = {".onnx": _onnx_runners, ".xml": _openvino_runners}


def sample_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A BGR uint8 frame with edges and texture at every scale (seeded noise, blurred)."""
    import cv2
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(frame, (0, 0), 2)


def interleaved_median_ms(paths: Mapping[str, Callable[..., Any]], runs: int, warmup: int = 5) -> dict[str, float]:
    """Median ms of each callable, timed in turn within every round (a slower phase of a shared machine then
    falls on all of them alike instead of on whichever ran during it)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(warmup + runs):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: percentile(t, 50.0) for name, t in times.items()}


def measure_file(path: Path, sizes: Sequence[tuple[int, int]], threads: int, runs: int) -> list[dict[str, Any]]:
    """One row per frame size: engine, host-path and folded-path median ms and the folded map's max |Δ|."""
    spec = load_manifest(path).preprocess_spec()
    host_engine, folded_engine = RUNNERS[path.suffix](path, spec, threads)
    rows = []
    for width, height in sizes:
        frame = sample_frame(width, height)
        view = fit_frame(frame, spec)
        prepared = normalize(view, spec)[None]
        difference = float(np.abs(host_engine(prepared) - folded_engine(view[None])).max())
        paths = {"engine_ms": lambda x=prepared: host_engine(x),
                 "host_path_ms": lambda f=frame: host_engine(normalize(fit_frame(f, spec), spec)[None]),
                 "folded_path_ms": lambda f=frame: folded_engine(fit_frame(f, spec)[None])}
        rows.append({"file": path.name, "frame": f"{width}x{height}", **interleaved_median_ms(paths, runs),
                     "max_abs_diff_map": difference})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| file | frame | engine ms | host normalise: frame ms (/ engine) | folded: frame ms (/ engine) | "
             "max \\|Δ map\\| |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['frame']} | {r['engine_ms']:.2f} | {r['host_path_ms']:.2f} "
              f"({r['host_path_ms'] / r['engine_ms']:.3f}) | {r['folded_path_ms']:.2f} "
              f"({r['folded_path_ms'] / r['engine_ms']:.3f}) | {r['max_abs_diff_map']:.2e} |" for r in rows]
    return "\n".join(lines)


def run(cfg: InputFoldConfig) -> int:
    import cv2
    cv2.setNumThreads(cfg.threads)
    files = sorted(p for p in Path(cfg.models).iterdir() if p.suffix in RUNNERS)
    if not files:
        raise ValueError(f"--models {cfg.models}: no .onnx or .xml file")
    rows = [row for path in files for row in measure_file(path, [parse_size(s) for s in cfg.sizes], cfg.threads,
                                                           cfg.runs)]
    print(markdown(rows))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"threads": cfg.threads, "rows": rows}, indent=1))
    return 0


CLI = ConfigCli(InputFoldConfig, prog="python -m bench.input_fold", description=__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: run(CLI.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""One model (or micro-benchmark) in its own process: ``python -m bench.worker JOB.json``.

Each model file × thread count lives in a fresh interpreter so that (a) its peak RSS (``getrusage``
high-water mark) belongs to that model alone, (b) thread pools and allocator state of one engine never
leak into the next, and (c) a crash in a native engine becomes a failed row, not a failed benchmark.

Latency jobs are *served*: the worker loads the model, warms it up, answers ``ready`` and then times
as many runs as each command on stdin asks for. The parent interleaves the models of one comparison in
rounds, so load from other processes on a shared machine hits the eager baseline and every file alike
and the speed-up ratios stay fair even when absolute times drift.

Protocol (one JSON object per line): the worker writes ``<MESSAGE_TAG> {...}`` lines on stdout (other
stdout lines, e.g. from engines, are ignored) — ``{"type": "progress", "n": k}`` or
``{"type": "reply", ...}``; the parent writes ``{"cmd": "infer"|"e2e", "n": k, "warm": w, "warm_ms": t}``
(untimed calls first, see ``_timed``) and ``{"cmd": "finish"}``. Accuracy and GEMM jobs run once and
reply with their result.
"""
from __future__ import annotations

import gc
import json
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import cpuload

MESSAGE_TAG = "\x1ebench-worker"


def send(message: dict[str, Any]) -> None:
    print(f"{MESSAGE_TAG} {json.dumps(message)}", flush=True)


def progress(n: int = 1) -> None:
    send({"type": "progress", "n": n})


def peak_rss_mb() -> float:
    """High-water resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if platform.system() == "Darwin" else rss / 1024


def _timed(fn: Callable[[], Any], runs: int, warm: int = 0, warm_ms: float = 0.0
           ) -> tuple[list[float], tuple[float, float] | None]:
    """Untimed calls until ``warm`` calls and ``warm_ms`` have passed (caches, thread pools and CPU clocks back
    up after another model ran), then ``runs`` timed calls.

    Returns their latencies in ms and (CPU seconds other processes used, wall seconds) during the timed calls.
    """
    t_end = time.perf_counter() + warm_ms / 1e3
    done = 0
    while done < warm or (done and time.perf_counter() < t_end):
        fn()
        done += 1
    times = []
    before = cpuload.snapshot()
    gc.disable()  # a collection in the middle of a run is noise, not model latency
    try:
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        gc.enable()
    return times, cpuload.other_cpu_seconds(before, cpuload.snapshot())


def _runner(job: dict[str, Any]) -> tuple[Callable[[Any], Any], dict[str, Any], Any]:
    """(x → (map, score), info, PreprocessSpec) for a model file or the eager baseline.

    The spec comes from the manifest; a file without one gets its graph's input size and ImageNet
    normalisation (latency does not depend on the normalisation constants).
    """
    from edge.preprocess import PreprocessSpec
    threads = int(job["threads"])
    if job["target"]["kind"] == "eager":
        from bench import eager
        eager.set_threads(threads)
        t = job["target"]
        pipeline = eager.build_eager(t["method"], t["backbone"], int(t["image_size"]), t.get("run"))
        return (pipeline, {"engine": "torch-eager", "precision": "fp32", "device": "cpu", **eager.describe(pipeline)},
                PreprocessSpec.from_dict(job["spec"]))
    from edge.engines import load_engine
    target = job["target"]
    engine = load_engine(target["path"], threads=threads, device=target.get("device", "cpu"),
                         trt_cache_dir=target.get("trt_cache_dir"))
    info = engine.describe()
    spec = (PreprocessSpec.from_dict(job["spec"]) if job.get("spec")
            else PreprocessSpec(image_size=engine.image_size or PreprocessSpec.image_size))
    return engine.run, {"engine": engine.name, "precision": engine.precision, "device": engine.device,
                        "providers": list(engine.providers),
                        **{k: v for k, v in info.items() if k in ("compiled_precision", "input_layout",
                                                                  "reduced_precision", "guard_covered")}}, spec


# Camera frame sizes bench-latency times from frame to decision (name → cv2 (width, height)).
CAMERA_FRAMES = {"1024": (1024, 1024), "640x480": (640, 480)}


def serve_latency(job: dict[str, Any], commands: Any) -> dict[str, Any]:
    """Load, warm up, reply ready; then time inference / end-to-end frames on command until "finish"."""
    import cv2
    import numpy as np

    from edge.preprocess import decode_bgr, preprocess_frame
    cv2.setNumThreads(int(job["threads"]))  # decode/resize get the same core budget as the engine
    frames = [Path(p) for p in job["frames"]]
    run, info, spec = _runner(job)
    first = decode_bgr(frames[0])  # full size: the camera frames below are resized from it
    x = preprocess_frame(first, spec)[None]
    # Decoded camera frames of the two common sizes (the same picture): frame → decision without a file decode.
    cameras = {f"frame_{name}": cv2.resize(first, size, interpolation=cv2.INTER_AREA)
               for name, size in CAMERA_FRAMES.items()}
    _, score = run(x)
    if not np.isfinite(np.asarray(score)).all():
        raise ValueError(f"{job['target'].get('path', 'eager model')}: non-finite score {score}")
    _timed(lambda: run(x), int(job["warmup"]))
    send({"type": "reply", "status": "ready"})
    counter = iter(range(1 << 62))

    def next_file() -> Any:  # cycle through the frame files
        return decode_bgr(frames[next(counter) % len(frames)], spec)  # as edge-run's file source decodes

    def frame() -> Any:  # edge-run on image files: decode (BGR, as its sources read) → preprocess → inference
        return run(preprocess_frame(next_file(), spec)[None])

    def camera(bgr: Any) -> Callable[[], Any]:
        return lambda: run(preprocess_frame(bgr, spec)[None])

    commands_by_name: dict[str, Callable[[], Any]] = {
        "infer": lambda: run(x), "e2e": frame, "decode": next_file,
        **{name: camera(bgr) for name, bgr in cameras.items()}}
    for line in commands:
        cmd = json.loads(line)
        if cmd["cmd"] == "finish":
            break
        fn = commands_by_name[cmd["cmd"]]
        ms, others = _timed(fn, int(cmd["n"]), int(cmd.get("warm", 0)), float(cmd.get("warm_ms", 0)))
        send({"type": "reply", "ms": ms, "others": others})
    return {**info, "peak_rss_mb": peak_rss_mb()}


def run_accuracy(job: dict[str, Any]) -> dict[str, Any]:
    """Image and pixel AUROC per category (MVTec protocol: mean over categories) and the raw scores."""
    import numpy as np

    from edge.metrics import image_auroc, pixel_auroc
    from edge.preprocess import load_view, normalize
    run, info, spec = _runner(job)
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for s in job["samples"]:
        by_cat.setdefault(s["category"], []).append(s)
    per_category, scores_out = {}, []
    for cat, samples in by_cat.items():
        maps, scores, masks, labels = [], [], [], []
        for s in samples:
            view, mask = load_view(s["path"], spec, s["mask"] or None)
            amap, score = run(normalize(view, spec)[None])
            maps.append(amap[0, 0])
            scores.append(float(score[0]))
            masks.append(mask if mask is not None else np.zeros((spec.image_size, spec.image_size), np.uint8))
            labels.append(int(s["label"]))
            progress()
        per_category[cat] = {"image_auroc": image_auroc(np.array(labels), np.array(scores)),
                             "pixel_auroc": pixel_auroc(np.stack(masks), np.stack(maps)) if any(labels) else None,
                             "n_images": len(samples)}
        scores_out.extend(scores)
    return {**info, "per_category": per_category, "scores": scores_out}


def run_gemm(job: dict[str, Any]) -> dict[str, Any]:
    from bench.gemm import GemmUnavailable, measure_gemm
    results, notes = [], {}
    for backend, precision in job["backends"]:
        for size in job["sizes"]:
            try:
                before = cpuload.snapshot()
                result = measure_gemm(backend, precision, int(job["threads"]), int(size), int(job["runs"])).to_dict()
                others = cpuload.other_cpu_seconds(before, cpuload.snapshot())
                results.append({**result, "other_cpu_cores": cpuload.other_cores(*others) if others else None})
            except GemmUnavailable as e:
                notes[f"{backend}/{precision}"] = str(e)
            except Exception as e:  # noqa: BLE001 - one backend failing must not hide the others
                notes[f"{backend}/{precision}"] = f"failed at {size}³: {_first_line(e)}"
            progress(int(job["runs"]) + 2)
    from bench.roofline import STREAM_MIB, measure_bandwidth
    bandwidth = {"gb_per_s": measure_bandwidth(int(job["threads"])), "working_set_mib": STREAM_MIB}
    return {"gemm": results, "notes": notes, "bandwidth": bandwidth}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:400] if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    try:
        if job["kind"] == "latency":
            result = serve_latency(job, sys.stdin)
        else:
            result = {"accuracy": run_accuracy, "gemm": run_gemm}[job["kind"]](job)
        send({"type": "reply", "status": "ok", **result})
    except Exception as e:  # noqa: BLE001 - every failure becomes a failed row with one clear line
        send({"type": "reply", "status": "failed", "error": _first_line(e),
              "traceback": traceback.format_exc(limit=4)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

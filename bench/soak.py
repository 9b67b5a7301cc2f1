"""Soak benchmark of the edge frame loop: N frames through ``edge.runner.run``, memory and latency over time.

    python -m bench.soak [--frames 10000] [--model FILE | --image-size 256] [--frame-size 640x480]
                         [--threads 1] [--defect-every 500] [--defect-len 8] [--threshold auto|manifest|X]
                         [--jsonl PATH] [--alarm-log PATH] [--snapshot-dir DIR] [--with-webhook]
                         [--fps F] [--rss-every 1000] [--json OUT] [--no-progress]

The real loop (source → preprocess → engine → debounce → frame log → sinks), not a copy of it:
``run(RunConfig)`` with two of its injection points, a generated raw source and, without
``--jsonl``, a null writer for the frame log (every line is still formatted, just not kept).
The source yields one fixed random BGR image with a bright square defect that moves across it
for ``--defect-len`` frames out of every ``--defect-every``, so alarms are raised and cleared and
the sinks (``--snapshot-dir``, ``--alarm-log``, ``--with-webhook``: an in-process receiver on
127.0.0.1) do real work.  Without ``--model`` a tiny self-contained ONNX graph + manifest is built
with the ``onnx`` package (anomaly map = channel mean of x², score = its max), so no training is
needed; it measures the runtime around the model, not a backbone.

Measured: process RSS (``/proc/self/status`` VmRSS; ``getrusage`` peak where /proc is missing)
before the run, at the first / middle / last scored frame, after the sinks closed, and every
``--rss-every`` frames; capture→decision latency of every frame (p50/p90/p99/max/mean over the
whole run — the runner's own summary only keeps its last 1000 frames, reported alongside);
frames/s; alarms raised/cleared; the runner's sink counters.  Exit status 0, 2 on bad input
(one ``error:`` line).
"""
from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from edge.cliconfig import ConfigCli, option, run_cli
from edge.counters import RuntimeCounters
from edge.jsonsafe import json_safe, write_json
from edge.sources import RawSource

GENERATED_THRESHOLD = 0.5  # clean frames score ≤ 0.0625 on the generated model, the defect 1.0


class SoakError(ValueError):
    """Bad option or an input the soak cannot run with (one ``error:`` line, exit 2)."""


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024  # bytes on macOS, kB elsewhere


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS); the peak (ru_maxrss) where /proc is not available."""
    kb = _proc_status_kb("VmRSS")
    return kb / 1024 if kb is not None else _maxrss_mb()


def peak_rss_mb() -> float:
    kb = _proc_status_kb("VmHWM")
    return kb / 1024 if kb is not None else _maxrss_mb()


RSS_SOURCE = "VmRSS (/proc/self/status)" if _proc_status_kb("VmRSS") is not None else "ru_maxrss (peak)"


# ---------------------------------------------------------------------------------------------
# Generated model and frames
# ---------------------------------------------------------------------------------------------
def make_tiny_model(directory: str | Path, image_size: int = 256, threshold: float = GENERATED_THRESHOLD) -> Path:
    """Write ``soak-tiny.onnx`` + manifest (mirrors tests/test_edge_runtime.make_tiny_onnx).

    The model: map = mean_c x², score = max."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise SoakError("no --model given and the 'onnx' package is not installed to generate one "
                        "(pip install onnx, or pass --model FILE)") from None
    from edge.manifest import write_manifest
    from edge.preprocess import PreprocessSpec

    s = int(image_size)
    path = Path(directory) / "soak-tiny.onnx"
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, s, s])
    m = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, s, s])
    sc = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])
    nodes = [helper.make_node("Mul", ["image", "image"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["anomaly_map"], axes=[1], keepdims=1),
             helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "soak_tiny", [x], [m, sc]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    spec = PreprocessSpec.for_normalization("half", s)
    write_manifest(path, {"precision": "fp32", "runtime": {"inference_precision_hint": "f32"},
                          "input": {"name": "image", "shape": [1, 3, s, s], **spec.to_dict()},
                          "model": {"method": "tiny", "backbone": "none", "categories": ["soak"]},
                          "threshold": {"global": float(threshold), "per_category": {}}})
    return path


class DefectSchedule:
    """A fixed random BGR image; frames ``i % every >= every - length`` carry a bright moving square."""

    def __init__(self, width: int, height: int, every: int, length: int, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # Mid-grey texture: ±0.25 after "half" normalisation, so the generated model scores it ≤ 0.0625.
        self.base = rng.integers(96, 160, size=(height, width, 3), dtype=np.uint8)
        self.width, self.height, self.every, self.length, self.size = width, height, every, length, size

    def defect_box(self, i: int) -> tuple[int, int] | None:
        """Top-left (x, y) of the defect in frame ``i``, or None for a clean frame."""
        phase = i % self.every
        if phase < self.every - self.length:
            return None
        episode, step = divmod(i, self.every)
        span_x, span_y = max(1, self.width - self.size), max(1, self.height - self.size)
        x = (episode * 97 + step * 13) % span_x  # moves within an episode, starts elsewhere in the next
        y = (episode * 61 + step * 7) % span_y
        return x, y

    def frame(self, i: int) -> np.ndarray:
        img = self.base.copy()  # a new buffer per frame, as a camera delivers
        box = self.defect_box(i)
        if box is not None:
            x, y = box
            img[y:y + self.size, x:x + self.size] = 255
        return img

    def episodes(self, frames: int, raise_k: int) -> int:
        """Defect episodes that have at least ``raise_k`` defect frames within ``frames``."""
        if self.length < raise_k:
            return 0
        first = self.every - self.length  # index of the first defect frame of episode 0
        return sum(1 for e in range(frames // self.every + 1) if e * self.every + first + raise_k <= frames)


class GeneratedSource(RawSource):
    """RawSource over a DefectSchedule: endless (the runner stops at max_frames); live + paced with ``fps``."""

    def __init__(self, schedule: DefectSchedule, fps: float | None = None) -> None:
        self.schedule = schedule
        self.fps = fps
        self.live = fps is not None  # live: the runner's LatestFrame grabber thread drops what it cannot score
        self.description = (f"generated {schedule.width}x{schedule.height} BGR"
                            + (f" @ {fps:g} fps" if fps else ""))
        self._i = 0
        self._next = 0.0

    def open(self) -> None:
        self._next = time.monotonic()

    def read(self) -> tuple[np.ndarray | None, str | None]:
        if self.fps:
            self._next += 1.0 / self.fps
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self._next = time.monotonic()  # fell behind: do not burst to catch up
        img = self.schedule.frame(self._i)
        self._i += 1
        return img, None


class NullWriter:
    """Stands in for the frame log's stream: counts lines, keeps nothing."""

    def __init__(self) -> None:
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Measurement hook: the runner calls metrics.record_frame once per scored frame, on its thread
# ---------------------------------------------------------------------------------------------
class SoakMetrics(RuntimeCounters):
    """RuntimeCounters that also keeps every frame's latency (preallocated) and samples RSS."""

    def __init__(self, frames: int, rss_every: int, bar: Any = None) -> None:
        super().__init__()
        # np.full writes every element: the pages are resident before the first RSS sample.
        self.lat = np.full(frames, np.nan, dtype=np.float64)
        self.n = 0
        self.rss_every = rss_every
        self.mid_at = max(1, frames // 2)
        self.series: list[dict[str, float]] = []
        self.marks: dict[str, float] = {}
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.clears = 0
        self._was_alarm = False
        self.bar = bar

    def _sample(self, now: float) -> None:
        self.series.append({"frame": self.n, "rss_mb": rss_mb(), "t": now})

    def record_frame(self, latency_ms: float, score: float, alarm_active: bool) -> None:
        super().record_frame(latency_ms, score, alarm_active)
        now = time.monotonic()
        if self.n < len(self.lat):
            self.lat[self.n] = latency_ms
        self.n += 1
        if self._was_alarm and not alarm_active:
            self.clears += 1
        self._was_alarm = bool(alarm_active)
        if self.n == 1:
            self.t_first = now
            self.marks["start"] = rss_mb()
            self._sample(now)
        elif self.n % self.rss_every == 0 or self.n == len(self.lat):
            self._sample(now)  # every rss_every frames and at the last one
        if self.n == self.mid_at:
            self.marks["mid"] = rss_mb()
        if self.n == len(self.lat):
            self.marks["end"] = self.series[-1]["rss_mb"]
        self.t_last = now
        if self.bar is not None:
            self.bar.update(1)


# ---------------------------------------------------------------------------------------------
# Webhook receiver (127.0.0.1 only)
# ---------------------------------------------------------------------------------------------
class WebhookReceiver:
    """Threaded HTTP server on 127.0.0.1:<free port> that answers 200 to every JSON POST and counts them."""

    def __init__(self) -> None:
        receiver = self
        self.posts = 0
        self.bad = 0
        self.ids: set[str] = set()
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    alarm_id = str(json.loads(body)["id"])
                except (ValueError, KeyError, TypeError):
                    alarm_id = None
                with receiver.lock:
                    receiver.posts += 1
                    if alarm_id is None:
                        receiver.bad += 1
                    else:
                        receiver.ids.add(alarm_id)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alarm"
        self.thread = threading.Thread(target=self.server.serve_forever, name="soak-webhook", daemon=True)

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {"posts": self.posts, "unique_ids": len(self.ids), "bad": self.bad}


def _no_proxy_for_localhost() -> None:
    """The webhook sink's urllib opener honours http_proxy: keep 127.0.0.1 off any proxy."""
    for key in ("no_proxy", "NO_PROXY"):
        entries = [e for e in os.environ.get(key, "").split(",") if e.strip()]
        if "127.0.0.1" not in entries:
            os.environ[key] = ",".join(entries + ["127.0.0.1"])


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@dataclass
class SoakConfig:
    """Soak options (one field per flag and ``--config`` key)."""

    frames: int = option(10000, "frames to score")
    model: str | None = option(None, "exported .onnx/.xml/.tflite with its manifest (default: a generated tiny "
                                     "ONNX model)", metavar="FILE")
    image_size: int | None = option(None, "input size of the generated model (default: 256)")
    frame_size: str = option("640x480", "generated BGR frame size in pixels (N = N×N)", metavar="WxH|N")
    threads: int = option(1, "inference threads, also OpenCV's")
    defect_every: int = option(500, "a defect episode every K frames", metavar="K")
    defect_len: int = option(8, "frames per defect episode, the square moving each frame", metavar="L")
    defect_size: int | None = option(None, "side of the defect square (default: shorter frame side / 12)",
                                     metavar="PX")
    threshold: str = option("auto", "'auto' (midway between the clean frame's and the defect frames' scores, so any "
                                    "model alarms on the defect), 'manifest', or a number")
    jsonl: str | None = option(None, "append the frame log here (default: formatted, then discarded)", metavar="PATH")
    jsonl_every: int = option(1, "frame log: every k-th frame's line (events always)", metavar="K")
    alarm_log: str | None = option(None, "enable the log sink (alarm JSON lines) to this file", metavar="PATH")
    snapshot_dir: str | None = option(None, "enable the snapshot sink (frame + overlay per alarm)", metavar="DIR")
    with_webhook: bool = option(False, "enable the webhook sink, POSTing to a receiver this script runs on 127.0.0.1")
    fps: float | None = option(None, "pace the source as a live camera at F frames/s (the runner's latest-frame "
                                     "grabber drops what it cannot score); default: as fast as the loop runs")
    rss_every: int = option(1000, "RSS sample every N frames", metavar="N")
    seed: int = option(0, "seed of the generated image")
    json: str | None = option(None, "write the results as JSON here", metavar="OUT")
    progress: bool = option(True, "tqdm progress bar")
    log_level: str = option("WARNING", "edge runtime log level on stderr")
    frame_width: int = field(init=False)
    frame_height: int = field(init=False)

    def __post_init__(self) -> None:
        self.frame_width, self.frame_height = _parse_frame_size(self.frame_size)
        self.log_level = self.log_level.upper()
        _check_soak_options(self)


CLI = ConfigCli(SoakConfig, "python -m bench.soak", "Soak benchmark: N frames through the edge frame loop; RSS over "
                "time, latency percentiles, alarms and sink counters.")


def _parse_frame_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise SoakError(f"--frame-size {text!r}: expected WxH or N (pixels)") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 16 or max(dims) > 8192:
        raise SoakError(f"--frame-size {text!r}: expected WxH or N with sides 16..8192")
    return dims[0], dims[1]


def _check_soak_options(cfg: SoakConfig) -> None:
    """SoakError naming the first bad option."""
    for flag, value, ok, expected in _range_checks(cfg):
        if not ok:
            raise SoakError(f"{flag} {value!r}: expected {expected}")
    if cfg.model is not None and cfg.image_size is not None:
        raise SoakError("--image-size: only for the generated model (the --model file fixes its input size)")
    _check_threshold(cfg.threshold)
    if cfg.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SoakError(f"--log-level {cfg.log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
    if cfg.model is not None and not Path(cfg.model).is_file():
        raise SoakError(f"--model {cfg.model}: file not found")


def _range_checks(cfg: SoakConfig) -> list[tuple[str, Any, bool, str]]:
    """(flag, value, whether it is in range, the range) of every numeric option that is set."""
    width, height = cfg.frame_width, cfg.frame_height
    checks: list[tuple[str, Any, bool, str]] = [("--frames", cfg.frames, cfg.frames >= 1, ">= 1"),
              ("--threads", cfg.threads, cfg.threads >= 1, ">= 1"),
              ("--defect-every", cfg.defect_every, cfg.defect_every >= 2, ">= 2"),
              ("--defect-len", cfg.defect_len, 1 <= cfg.defect_len < cfg.defect_every, "1 .. --defect-every - 1"),
              ("--jsonl-every", cfg.jsonl_every, cfg.jsonl_every >= 1, ">= 1"),
              ("--rss-every", cfg.rss_every, cfg.rss_every >= 1, ">= 1")]
    if cfg.image_size is not None:
        checks.append(("--image-size", cfg.image_size, 8 <= cfg.image_size <= 4096, "8 .. 4096"))
    if cfg.defect_size is not None:
        checks.append(("--defect-size", cfg.defect_size, 1 <= cfg.defect_size <= min(width, height),
                       f"1 .. {min(width, height)} (the shorter frame side)"))
    if cfg.fps is not None:
        checks.append(("--fps", cfg.fps, math.isfinite(cfg.fps) and cfg.fps > 0, "> 0"))
    return checks


def _check_threshold(threshold: str) -> None:
    """--threshold: auto, manifest or a finite number."""
    if threshold in ("auto", "manifest"):
        return
    try:
        number = float(threshold)
    except ValueError:
        raise SoakError(f"--threshold {threshold!r}: expected auto, manifest or a number") from None
    if not math.isfinite(number):
        raise SoakError(f"--threshold {threshold!r}: expected a finite number")


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _auto_threshold(model: str, threads: int, schedule: DefectSchedule) -> dict[str, float]:
    """Score the clean image and episode 0's defect frames once; threshold midway between them."""
    from edge.runner import load_model, score_frame
    manifest, engine = load_model(model, threads)
    try:
        clean = score_frame(engine, manifest, schedule.frame(0))[1]
        first = schedule.every - schedule.length
        defect = min(score_frame(engine, manifest, schedule.frame(i))[1] for i in range(first, schedule.every))
    finally:
        del engine
    if not defect > clean:
        raise SoakError(f"--threshold auto: {model} scores the defect frames ({defect:.6g}) no higher than the "
                        f"clean frame ({clean:.6g}); pass --threshold manifest or a number, or a larger --defect-size")
    return {"clean_score": clean, "defect_score_min": defect, "threshold": clean + 0.5 * (defect - clean)}


def _percentiles(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(x.max()), "mean": float(x.mean())}


def soak(cfg: SoakConfig) -> dict[str, Any]:
    """Run the soak; returns the result dict (what --json writes)."""
    import cv2

    from edge.runner import run  # before rss_before: the baseline includes the runner's imports

    cv2.setNumThreads(cfg.threads)  # resize/normalise get the same core budget as the engine
    logging.basicConfig(level=cfg.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    defect_size = cfg.defect_size or max(4, min(cfg.frame_width, cfg.frame_height) // 12)
    schedule = DefectSchedule(cfg.frame_width, cfg.frame_height, cfg.defect_every, cfg.defect_len, defect_size,
                              cfg.seed)
    tmp = tempfile.TemporaryDirectory(prefix="soak-")
    receiver: WebhookReceiver | None = None
    try:
        generated = cfg.model is None
        model = str(make_tiny_model(tmp.name, cfg.image_size or 256)) if generated else str(cfg.model)
        threshold, auto = _threshold(cfg, model, schedule)
        if cfg.with_webhook:
            _no_proxy_for_localhost()
            receiver = WebhookReceiver().start()
        run_cfg = _run_config(cfg, model, threshold, _sinks_config(cfg, receiver, Path(tmp.name) / "spool"))
        source = GeneratedSource(schedule, cfg.fps)
        writer = None if cfg.jsonl else NullWriter()
        measured = _measured_run(cfg, run, run_cfg, source, writer)
        webhook = receiver.stats() if receiver is not None else None
    finally:
        if receiver is not None:
            receiver.close()
        tmp.cleanup()

    summary, metrics = measured.summary, measured.metrics
    n = metrics.n
    scoring_s = (metrics.t_last - metrics.t_first) if metrics.t_first is not None and metrics.t_last else None
    return json_safe({
        "tool": "bench.soak",
        "config": asdict(cfg) | {"defect_size": defect_size, "model": model, "generated_model": generated},
        "model": {"file": Path(model).name, "generated": generated, "engine": summary["engine"],
                  "threshold": summary["threshold"], "threshold_mode": cfg.threshold, "auto_threshold": auto},
        "source": summary["source"],
        "frames": summary["frames"], "stopped_by": summary["stopped_by"],
        "duration_s": summary["duration_s"], "wall_s": measured.wall_s, "scoring_s": scoring_s,
        "fps": (n - 1) / scoring_s if scoring_s else None,
        "fps_runner_last_10s": summary["fps"],
        "rss_source": RSS_SOURCE,
        "rss_mb": _rss_report(metrics, measured.rss_before, measured.rss_after),
        "rss_series": _rss_series(metrics),
        "latency_ms": _percentiles(metrics.lat[:n]),
        "latency_frames": n,
        "latency_definition": "capture → decision (preprocess + inference + threshold/debounce), every frame",
        "runner_latency_ms": summary["latency_ms"],  # the runner's ring: its last 1000 frames only
        "alarms": summary["alarms"], "clears": metrics.clears, "alarm_active": summary["alarm_active"],
        "defect_episodes": schedule.episodes(n, run_cfg.decision.raise_k),
        "dropped": summary["dropped"], "corrupt": summary["corrupt"], "reconnects": summary["reconnects"],
        "stalls": summary["stalls"], "sink_errors": summary["sink_errors"], "sinks": summary["sinks"],
        "webhook_receiver": webhook,
        "frame_log": {"path": cfg.jsonl, "lines": writer.lines if writer is not None else None},
    })


@dataclass
class _Measured:
    summary: dict[str, Any]  # edge.runner.run's
    metrics: SoakMetrics
    wall_s: float
    rss_before: float  # MB just before the run, and after it closed
    rss_after: float


def _measured_run(cfg: SoakConfig, run: Callable[..., dict[str, Any]], run_cfg: Any, source: GeneratedSource,
                  writer: NullWriter | None) -> _Measured:
    """The run with its progress bar, per-frame metrics, wall time and memory before and after."""
    from tqdm import tqdm
    bar = tqdm(total=cfg.frames, desc="soak", unit="frame", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5, disable=not cfg.progress)
    metrics = SoakMetrics(cfg.frames, cfg.rss_every, bar)
    rss_before = rss_mb()
    t0 = time.monotonic()
    try:
        summary = _run_until_done_or_signalled(run, run_cfg, source, writer, metrics)
    finally:
        bar.close()
    wall = time.monotonic() - t0
    return _Measured(summary, metrics, wall, rss_before, rss_mb())


def _threshold(cfg: SoakConfig, model: str, schedule: DefectSchedule) -> tuple[float | None, dict[str, float] | None]:
    """The decision threshold (None: the manifest's) and, for --threshold auto, how it was found."""
    if cfg.threshold == "auto":
        auto = _auto_threshold(model, cfg.threads, schedule)
        return auto["threshold"], auto
    if cfg.threshold == "manifest":
        return None, None
    return float(cfg.threshold), None


def _sinks_config(cfg: SoakConfig, receiver: WebhookReceiver | None, spool_dir: Path) -> Any:
    """The alarm sinks the soak exercises: --alarm-log, --snapshot-dir, and the local webhook receiver."""
    from edge.sinks import DeliveryOptions, SinkConfig
    if not (cfg.alarm_log or cfg.snapshot_dir or receiver is not None):
        return SinkConfig()
    kw: dict[str, Any] = {"on_clear": True}
    if cfg.alarm_log:
        kw["log_path"] = cfg.alarm_log
    if cfg.snapshot_dir:
        kw["snapshot_dir"] = cfg.snapshot_dir
    if receiver is not None:
        kw.update(webhook_url=receiver.url, webhook=DeliveryOptions(
            spool_dir=str(spool_dir), timeout=2.0, backoff=0.2, backoff_max=2.0))
    return SinkConfig(**kw)


def _run_config(cfg: SoakConfig, model: str, threshold: float | None, sinks: Any) -> Any:
    from edge.config import DecisionConfig, RunConfig, SourceConfig
    return RunConfig(model=model, threads=cfg.threads, max_frames=cfg.frames, jsonl=cfg.jsonl,
                     jsonl_every=cfg.jsonl_every, log_level=cfg.log_level,
                     source=SourceConfig(latest_only=True, open_timeout=5.0),
                     decision=DecisionConfig(threshold=threshold), sinks=sinks)


def _run_until_done_or_signalled(run: Callable[..., dict[str, Any]], run_cfg: Any, source: GeneratedSource,
                                 writer: NullWriter | None, metrics: SoakMetrics) -> dict[str, Any]:
    """edge.runner.run; Ctrl-C / SIGTERM stop it after the current frame and it still reports."""
    stop = threading.Event()
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return run(run_cfg, stop_event=stop, raw_source=source, out=cast(IO[str], writer), metrics=metrics)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _rss_report(metrics: SoakMetrics, before_run: float | None, after_close: float | None) -> dict[str, Any]:
    """Resident memory at the run's marks (start, middle, end of --frames) and its growth between them."""
    n = metrics.n
    marks = metrics.marks
    start, mid = marks.get("start"), marks.get("mid")
    if mid is None and metrics.series:  # stopped before the middle of --frames: the sample nearest n/2
        mid = min(metrics.series, key=lambda s: abs(s["frame"] - n / 2))["rss_mb"]
    # The last scored frame's sample; a run that stopped early (signal): its last periodic sample.
    end = marks.get("end", metrics.series[-1]["rss_mb"] if metrics.series else None)

    def growth(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return {"before_run": before_run, "start": start, "mid": mid, "end": end, "after_close": after_close,
            "peak": peak_rss_mb(), "growth_start_to_end": growth(start, end), "growth_mid_to_end": growth(mid, end)}


def _rss_series(metrics: SoakMetrics) -> list[dict[str, Any]]:
    """Every periodic memory sample, with the frame rate and latency since the previous one."""
    series, prev = [], None
    for s in metrics.series:
        row: dict[str, Any] = {"frame": s["frame"], "rss_mb": round(s["rss_mb"], 2),
                               "elapsed_s": round(s["t"] - (metrics.t_first or s["t"]), 3)}
        if prev is not None and s["frame"] > prev["frame"]:
            seg = metrics.lat[prev["frame"]:s["frame"]]
            dt = s["t"] - prev["t"]
            row.update(fps=(s["frame"] - prev["frame"]) / dt if dt > 0 else None,
                       latency_p50_ms=_percentiles(seg)["p50"], latency_p99_ms=_percentiles(seg)["p99"])
        series.append(row)
        prev = s
    return series


def _f(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def render(r: dict[str, Any]) -> str:
    """The short human-readable table."""
    c, m, rss, lat = r["config"], r["model"], r["rss_mb"], r["latency_ms"]
    eng = m["engine"]
    size = eng.get("input_shape", [None])[-1]
    lines: list[str] = []
    lines.append(
        f"bench.soak: {r['frames']} frames of {r['source']} → {m['file']} "
        f"({'generated, ' if m['generated'] else ''}{size} px, {eng.get('engine')} {eng.get('precision')}, "
        f"{c['threads']} thread{'s' if c['threads'] != 1 else ''}); stopped by {r['stopped_by']}"
    )
    lines.append(
        f"  throughput   {_f(r['fps'], '.1f')} frames/s over {_f(r['scoring_s'], '.1f')} s of scoring "
        f"(wall {_f(r['wall_s'], '.1f')} s incl. model load and sink close)"
    )
    lines.append(
        f"  latency ms   p50 {_f(lat['p50'])}  p90 {_f(lat['p90'])}  p99 {_f(lat['p99'])}  max {_f(lat['max'])}  "
        f"mean {_f(lat['mean'])}  (capture→decision, all {r['latency_frames']} frames)"
    )
    lines.append(
        f"  RSS MB       before run {_f(rss['before_run'], '.1f')} | start {_f(rss['start'], '.1f')} | "
        f"mid {_f(rss['mid'], '.1f')} | end {_f(rss['end'], '.1f')} | after close {_f(rss['after_close'], '.1f')} | "
        f"peak {_f(rss['peak'], '.1f')}   growth start→end {_f(rss['growth_start_to_end'], '+.2f')}, "
        f"mid→end {_f(rss['growth_mid_to_end'], '+.2f')}  [{r['rss_source']}]"
    )
    lines.append(
        f"  alarms       {r['alarms']} raised, {r['clears']} cleared, {r['defect_episodes']} defect episodes; "
        f"threshold {_f(m['threshold'], '.4g')} ({m['threshold_mode']}); dropped {r['dropped']}, "
        f"corrupt {r['corrupt']}, sink errors {r['sink_errors']}"
    )
    fl = r["frame_log"]
    lines.append(f"  frame log    {fl['path']}" if fl["path"] else
                 f"  frame log    {fl['lines']} JSON lines formatted (null writer)")
    for name, st in (r["sinks"] or {}).items():
        lines.append(f"  sink         {name}: " + ", ".join(f"{k} {v}" for k, v in st.items()))
    if r["webhook_receiver"] is not None:
        w = r["webhook_receiver"]
        lines.append(f"  receiver     127.0.0.1: {w['posts']} POSTs, {w['unique_ids']} unique alarm ids, "
                     f"{w['bad']} unreadable")
    lines.append("  per sample   " + f"{'frame':>7} {'RSS MB':>8} {'fps':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for s in r["rss_series"]:
        lines.append("               " + f"{s['frame']:>7} {s['rss_mb']:>8.1f} {_f(s.get('fps'), '.1f'):>8} "
                     f"{_f(s.get('latency_p50_ms')):>8} {_f(s.get('latency_p99_ms')):>8}")
    return "\n".join(lines)


def _soak(argv: Sequence[str] | None) -> int:
    cfg = CLI.parse(argv)
    result = soak(cfg)
    print(render(result))
    if cfg.json:
        try:
            write_json(cfg.json, result)
        except OSError as e:
            raise SoakError(f"--json {cfg.json}: cannot write it ({e.strerror or e})") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """SoakError and the edge runtime's error classes (EngineError, ManifestError, …) → one error line, exit 2."""
    return run_cli(lambda: _soak(argv))


if __name__ == "__main__":
    sys.exit(main())

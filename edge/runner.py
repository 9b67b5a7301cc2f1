"""``edge-run`` and ``edge-calibrate`` without argument parsing and signal handling: source → preprocess →
engine → threshold + debounce → frame log / sinks / status.

``run(config) -> summary`` and ``calibrate(config) -> summary`` are what the commands run, so tests and
the end-to-end check call them directly.  The parts: ``edge.loop`` (frame iteration, stop reasons, source
teardown; shared by both), ``edge.publisher`` (frame log, overlay, live view, sinks, status endpoint),
``edge.heartbeat`` (systemd notifications) and ``edge.summary`` (the run summary).  Memory stays flat:
no per-frame history is kept except bounded deques (latency window, last 1000 events).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from edge.config import CalibrateConfig, RunConfig, SourceConfig
from edge.counters import RuntimeCounters
from edge.decision import Decider, resolve_threshold
from edge.engines import Engine, EngineError, load_engine
from edge.formats import format_for_path
from edge.heartbeat import Heartbeat
from edge.loop import FrameLoop
from edge.manifest import Manifest, backup_manifest, load_manifest, update_threshold
from edge.preprocess import PreprocessSpec, preprocess_frame
from edge.publisher import CorruptFiles, Publisher, RunIdentity
from edge.sdnotify import SystemdNotifier
from edge.sinks import sink_stats
from edge.sources import Frame, RawSource, ResilientSource, Roi, make_raw_source
from edge.summary import RunSummary, RunTally
from edge.thresholds import calibrate_threshold, threshold_section

log = logging.getLogger("edge.runner")


def load_model(model: str | None, threads: int | None, device: str = "cpu",
               trt_cache_dir: str | None = None) -> tuple[Manifest, Engine]:
    """Verified manifest + engine on ``device`` (edge.devices); EngineError/ManifestError/DeviceError naming the
    file or option on any problem."""
    if not model:
        raise EngineError("--model: required (an exported .onnx, .xml or .tflite file)")
    path = Path(model)
    format_for_path(path, EngineError)
    if not path.is_file():
        raise EngineError(f"{path}: model file not found")
    manifest = load_manifest(path, verify_sha256=True)
    manifest.check_accuracy_guard()
    engine = load_engine(path, threads=threads, manifest=manifest, device=device, trt_cache_dir=trt_cache_dir)
    spec = manifest.preprocess_spec()
    if engine.image_size is not None and engine.image_size != spec.image_size:
        raise EngineError(f"{path}: graph input is {engine.image_size}px but the manifest says "
                          f"image_size {spec.image_size}")
    return manifest, engine


def engine_status(engine: Engine) -> dict[str, Any]:
    """What /status shows of the engine: name, device, providers, precision and its settings (no file path)."""
    return {k: v for k, v in engine.describe().items() if k != "model"}


def open_source(cfg: SourceConfig, metrics: RuntimeCounters, stop_event: threading.Event,
                raw: RawSource | None = None, on_corrupt: Callable[[str | None], None] | None = None,
                spec: PreprocessSpec | None = None) -> ResilientSource:
    """ResilientSource for the configured camera/stream/file (or an injected RawSource); image files decode as
    the model's ``spec`` says, except with --roi, whose rectangle is in full-resolution pixels."""
    if raw is None:
        raw = make_raw_source(camera=cfg.camera, picamera=cfg.picamera, source=cfg.source,
                              width=cfg.camera_width, height=cfg.camera_height, fps=cfg.camera_fps,
                              stall_timeout=cfg.stall_timeout, spec=None if cfg.roi else spec)
    return ResilientSource(raw, metrics=metrics, roi=Roi.parse(cfg.roi), open_timeout=cfg.open_timeout,
                           backoff_max=cfg.reconnect_max_backoff, stop_event=stop_event, on_corrupt=on_corrupt,
                           stall_timeout=cfg.stall_timeout)


def score_frame(engine: Engine, manifest: Manifest, frame_bgr: np.ndarray) -> tuple[np.ndarray, float]:
    """One BGR frame → (anomaly map S×S, score) through THE shared preprocessing path."""
    x = preprocess_frame(frame_bgr, manifest.preprocess_spec())
    amap, score = engine.run(x[None])
    return amap[0, 0], float(score[0])


def run(config: RunConfig, *, stop_event: threading.Event | None = None, raw_source: RawSource | None = None,
        out: IO[str] | None = None, metrics: RuntimeCounters | None = None, sinks: list[Any] | None = None,
        notifier: SystemdNotifier | None = None) -> dict[str, Any]:
    """Run the frame loop until end of input, ``max_frames``, ``duration`` or ``stop_event``.

    Writes the frame log (edge.publisher: one JSON line per frame, keys frame, time, score,
    threshold, alarm, event, latency_ms, path; a skipped corrupt file gets one too, event
    "corrupt", with its path) to ``out`` / ``config.jsonl`` / stdout and returns the summary
    (``edge.summary.RunSummary.to_dict()``: counters, latency percentiles, events, why it
    stopped).  ``raw_source``, ``sinks``, ``out`` and ``notifier`` are injection points for tests.

    systemd (edge.heartbeat): ``STATUS=`` while the source opens / while waiting for its first
    frame, ``READY=1`` once the first frame is scored, ``WATCHDOG=1`` from the loop while the
    source's reading loop is alive, ``STOPPING=1`` first thing at the end.
    """
    stop_event = stop_event or threading.Event()
    metrics = metrics or RuntimeCounters()
    manifest, engine = load_model(config.model, config.threads, config.device, config.trt_cache_dir)
    dec = config.decision
    threshold = resolve_threshold(manifest, dec.category, dec.threshold)
    decider = Decider(threshold, dec.raise_k, dec.raise_n, dec.clear_m)
    if config.jsonl_every < 1:
        raise EngineError(f"--jsonl-every {config.jsonl_every}: expected >= 1")
    corrupt = CorruptFiles()
    source = open_source(config.source, metrics, stop_event, raw_source, on_corrupt=corrupt.note,
                         spec=manifest.preprocess_spec())
    source_desc = source.raw.description
    _announce(config, engine, metrics, threshold, source_desc)
    heartbeat = Heartbeat(notifier or SystemdNotifier(), source, metrics, config.source.stall_timeout)
    publisher = Publisher(config, metrics, threshold=threshold, corrupt=corrupt, out=out, sinks=sinks,
                          identity=RunIdentity(str(config.model), dec.category, source_desc),
                          fit=manifest.preprocess_spec().fit)
    tally = RunTally()
    inspect = _Inspection(engine, manifest, decider, metrics, heartbeat, publisher, tally)
    t_start = time.monotonic()
    with ExitStack() as stack:
        stack.callback(heartbeat.close)
        stack.callback(heartbeat.stopping)  # a start-up failure below still says STOPPING=1
        stack.enter_context(publisher)
        frames = stack.enter_context(FrameLoop(
            source, metrics, stop_event, max_frames=config.max_frames, duration=config.duration,
            latest_only=config.source.latest_only, started=t_start, before_read=heartbeat.tick,
            after_read=lambda: publisher.write_corrupt(decider.debouncer.alarm)))
        stack.callback(heartbeat.stopping)  # teardown: STOPPING=1 first, then the source, sinks, status, log
        heartbeat.tick()  # STATUS=opening …; READY=1 only once the first frame is scored
        for frame in frames:
            inspect(frame)
        final_fps = metrics.fps()  # before the sinks' close time dilutes it
    return RunSummary.collect(
        stopped_by=frames.stop_reason, tally=tally, counters=metrics.snapshot(),
        alarm_active=decider.debouncer.alarm, threshold=threshold, category=dec.category, fps=final_fps,
        duration_s=time.monotonic() - t_start, engine=engine.describe(), source=source_desc,
        sinks=sink_stats(publisher.sinks)).to_dict()


def _announce(config: RunConfig, engine: Engine, metrics: RuntimeCounters, threshold: float, source: str) -> None:
    """The run's static facts: to the counters (/status, /metrics) and one log line."""
    metrics.set_info(source=source, model=str(config.model), engine=engine.name, threshold=threshold,
                     device=engine.device, engine_info=engine_status(engine))
    category = config.decision.category
    log.info("model %s (%s, %s, device %s: %s), threshold %.6g%s, source %s", config.model, engine.name,
             engine.precision, engine.device, ", ".join(engine.providers), threshold,
             f" [category {category}]" if category else "", source)


@dataclass
class _Inspection:
    """What happens to each frame ``edge-run`` scores: score, debounce, count, publish."""

    engine: Engine
    manifest: Manifest
    decider: Decider
    metrics: RuntimeCounters
    heartbeat: Heartbeat
    publisher: Publisher
    tally: RunTally

    def __call__(self, frame: Frame) -> None:
        amap, score = score_frame(self.engine, self.manifest, frame.bgr)
        decision = self.decider.update(score)
        latency_ms = (time.monotonic() - frame.t_capture) * 1e3
        self.tally.add(frame, score, decision.event)
        self.metrics.record_frame(latency_ms, score, decision.alarm)
        if decision.event == "raise":
            self.metrics.record_alarm()
        self.heartbeat.frame_scored()
        self.publisher.publish(frame, amap, score, decision, latency_ms)
        if decision.event is not None:
            log.info("alarm %s at frame %d (score %.6g, threshold %.6g)", decision.event, frame.index, score,
                     self.decider.threshold)


def _check_category(manifest: Manifest, category: str | None, new_category: bool) -> None:
    """A mistyped --category must not silently become a new category of the manifest."""
    if category is None or new_category:
        return
    known = set(manifest.categories) | set(manifest.data["threshold"].get("per_category") or {})
    if category not in known:
        raise EngineError(f"--category {category!r}: not in {manifest.path} (categories: "
                          f"{', '.join(sorted(known)) or 'none'}); pass --new-category to add it")


def calibrate(config: CalibrateConfig, *, stop_event: threading.Event | None = None,
              raw_source: RawSource | None = None, progress: bool = True) -> dict[str, Any]:
    """``edge-calibrate``: score ``config.frames`` known-good frames and rewrite the manifest threshold.

    The threshold is ``edge.thresholds.calibrate_threshold(scores, mode="fpr",
    target_fpr=config.target_fpr)`` (empirical quantile or tail fit, see that module); it
    replaces the global threshold, or the ``config.category`` one.  The previous manifest is
    kept as ``<manifest>.bak-<timestamp>``.  Returns a summary (old/new threshold, mode, fit, backup).
    The manifest is left untouched (no backup either) when fewer than ``config.frames`` frames
    arrive (unless at least ``config.allow_fewer_frames`` did) or ``config.category`` is not in
    the manifest (unless ``config.new_category``).
    """
    _check_calibrate_options(config)
    stop_event = stop_event or threading.Event()
    metrics = RuntimeCounters()
    manifest, engine = load_model(config.model, config.threads, config.device, config.trt_cache_dir)
    log.info("calibrating %s (%s, %s, device %s: %s)", config.model, engine.name, engine.precision, engine.device,
             ", ".join(engine.providers))
    _check_category(manifest, config.category, config.new_category)
    try:
        old = manifest.threshold(config.category)
    except ValueError:
        old = None  # a category without its own threshold yet
    source = open_source(config.source, metrics, stop_event, raw_source, spec=manifest.preprocess_spec())
    scores = _score_known_good(source, metrics, stop_event, engine, manifest, config.frames, progress)
    _check_enough_frames(len(scores), config, stop_event.is_set(), source.raw.description, metrics.corrupt)
    result = calibrate_threshold(scores, mode="fpr", target_fpr=config.target_fpr)
    results = {"per_category": {config.category: result}} if config.category else {"global": result}
    section = threshold_section(results, source="edge-calibrate")
    assert config.model is not None  # load_model raised without one
    backup = backup_manifest(config.model)
    path = update_threshold(config.model, section, backup=False)
    return {"manifest": str(path), "backup": str(backup), "category": config.category, "frames": len(scores),
            "corrupt": metrics.corrupt, "old_threshold": old, "threshold": result.threshold, "mode": result.mode,
            "fit": result.fit, "target_fpr": config.target_fpr, "statistics": result.statistics,
            "source": source.raw.description, "device": engine.device, "providers": list(engine.providers)}


def _check_calibrate_options(config: CalibrateConfig) -> None:
    """Bad --frames / --allow-fewer-frames fail before the model is loaded."""
    if config.frames < 1:
        raise EngineError(f"--frames {config.frames}: expected >= 1")
    minimum = config.allow_fewer_frames
    if minimum is not None and not 1 <= minimum <= config.frames:
        raise EngineError(f"--allow-fewer-frames {minimum}: expected 1 .. --frames ({config.frames})")


def _score_known_good(source: ResilientSource, metrics: RuntimeCounters, stop_event: threading.Event,
                      engine: Engine, manifest: Manifest, n_frames: int, progress: bool) -> np.ndarray:
    """Scores of up to ``n_frames`` consecutive frames (no LatestFrame grabber: every frame is a sample)."""
    scores = np.empty(n_frames, dtype=np.float64)  # preallocated: memory is bounded by --frames
    with ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=n_frames, desc="calibrating", unit="frame", file=sys.stderr,
                                       disable=not progress))
        frames = stack.enter_context(FrameLoop(source, metrics, stop_event, max_frames=n_frames))
        for i, frame in enumerate(frames):
            _, scores[i] = score_frame(engine, manifest, frame.bgr)
            bar.update(1)
    return scores[:frames.frames]


def _check_enough_frames(n: int, config: CalibrateConfig, interrupted: bool, source: str, corrupt: int) -> None:
    """EngineError (manifest unchanged) unless ``config.frames`` frames, or ``--allow-fewer-frames``, arrived."""
    if interrupted and n < config.frames:
        raise EngineError(f"calibration interrupted after {n} of {config.frames} frames; manifest unchanged")
    if n == 0:
        raise EngineError(f"{source}: delivered no usable frames; manifest unchanged")
    if n == config.frames:
        return
    minimum = config.allow_fewer_frames
    if minimum is None or n < minimum:
        raise EngineError(f"{source}: delivered {n} of --frames {config.frames} usable frames "
                          f"({corrupt} corrupt); manifest unchanged" +
                          (f" (--allow-fewer-frames {minimum})" if minimum is not None else
                           "; pass --allow-fewer-frames N to accept at least N"))
    log.warning("source ended after %d of %d frames; calibrating on %d (--allow-fewer-frames %d)",
                n, config.frames, n, minimum)

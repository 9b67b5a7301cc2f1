"""The edge frame loop: source → preprocess → engine → threshold + debounce → JSON line / sinks / status.

``run(config) -> summary`` is the whole of ``edge-run`` minus argument parsing and signal
handling, so tests and the end-to-end check can call it directly.  Memory stays flat: no
per-frame history is kept except bounded deques (latency window, last 1000 events).

Sink contract (edge.sinks): ``handle(event, frame_bgr, overlay_bgr)`` is called for every
scored frame; ``event`` is the frame's JSON record plus "model", "category" and "source";
``overlay_bgr`` is the heat-map overlay on event frames ("raise"/"clear") and on the periodic
/latest.jpg frames, else None.  ``handle`` must not block; exceptions it raises are logged and
counted, never fatal.  Sinks are closed once at exit (``edge.sinks.close_sinks``).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import numpy as np

from edge.config import CalibrateConfig, ConfigError, RunConfig, SourceConfig
from edge.decision import Decider, resolve_threshold
from edge.engines import EXTENSIONS, Engine, EngineError, load_engine
from edge.jsonsafe import json_safe
from edge.manifest import Manifest, load_manifest
from edge.metrics_runtime import RuntimeMetrics
from edge.overlay import encode_jpeg, overlay_heatmap
from edge.preprocess import bgr_to_rgb, preprocess_rgb
from edge.sdnotify import SystemdNotifier
from edge.sources import Frame, LatestFrame, RawSource, ResilientSource, Roi, make_raw_source

log = logging.getLogger("edge.runner")

MAX_EVENTS_IN_SUMMARY = 1000


def load_model(model: str | None, threads: int | None, device: str = "cpu",
               trt_cache_dir: str | None = None) -> tuple[Manifest, Engine]:
    """Verified manifest + engine on ``device`` (edge.devices); EngineError/ManifestError/DeviceError naming the
    file or option on any problem."""
    if not model:
        raise EngineError("--model: required (an exported .onnx, .xml or .tflite file)")
    path = Path(model)
    if path.suffix.lower() not in EXTENSIONS:
        raise EngineError(f"{path}: unknown model extension {path.suffix!r}; expected one of {sorted(EXTENSIONS)}")
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


def open_source(cfg: SourceConfig, metrics: RuntimeMetrics, stop_event: threading.Event,
                raw: RawSource | None = None,
                on_corrupt: Callable[[str | None], None] | None = None) -> ResilientSource:
    """ResilientSource for the configured camera/stream/file (or an injected RawSource)."""
    if raw is None:
        raw = make_raw_source(camera=cfg.camera, picamera=cfg.picamera, source=cfg.source,
                              width=cfg.camera_width, height=cfg.camera_height, fps=cfg.camera_fps,
                              stall_timeout=cfg.stall_timeout)
    return ResilientSource(raw, metrics=metrics, roi=Roi.parse(cfg.roi), open_timeout=cfg.open_timeout,
                           backoff_max=cfg.reconnect_max_backoff, stop_event=stop_event, on_corrupt=on_corrupt,
                           stall_timeout=cfg.stall_timeout)


def score_frame(engine: Engine, manifest: Manifest, frame_bgr: np.ndarray) -> tuple[np.ndarray, float]:
    """One BGR frame → (anomaly map S×S, score) through THE shared preprocessing path."""
    x = preprocess_rgb(bgr_to_rgb(frame_bgr), manifest.preprocess_spec())
    amap, score = engine.run(x[None])
    return amap[0, 0], float(score[0])


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _write_line(out: IO[str], record: dict[str, Any]) -> None:
    # Strict JSON: a NaN/Infinity token makes the whole frame log unreadable for JSON parsers.
    out.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
    out.flush()


def _corrupt_record(path: str, threshold: float, alarm: bool) -> dict[str, Any]:
    """Frame-log line of a skipped (empty/undecodable) file: same keys as a scored frame's."""
    return {"frame": None, "time": _iso_now(), "score": None, "threshold": threshold, "alarm": alarm,
            "event": "corrupt", "latency_ms": None, "path": path}


def _open_jsonl(path: str) -> IO[str]:
    """Line-buffered append handle for --jsonl; ConfigError (one line) if it cannot be opened."""
    try:
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError as e:  # missing directory, a directory, no permission
        raise ConfigError(f"--jsonl {path}: cannot append to it ({e.strerror or e})") from None


def _build_sinks(config: RunConfig, metrics: RuntimeMetrics) -> list[Any]:
    if config.sinks is None:
        return []
    from edge.sinks import build_sinks  # type: ignore[attr-defined]
    return list(build_sinks(config.sinks, metrics))


def _close_sinks(sinks: list[Any], timeout: float) -> None:
    try:
        from edge.sinks import close_sinks  # parallel close within one overall timeout
    except ImportError:
        close_sinks = None
    if close_sinks is not None:
        close_sinks(sinks, timeout=timeout)
        return
    for sink in sinks:
        try:
            sink.close(timeout)
        except Exception as e:
            log.warning("closing sink %s failed: %s", type(sink).__name__, e)


def _sink_stats(sinks: list[Any]) -> dict[str, dict[str, int]]:
    """Per-sink counters for the summary (remote sinks: queued / delivered / failed / backlog)."""
    out = {}
    for sink in sinks:
        try:
            out[str(getattr(sink, "name", type(sink).__name__))] = dict(sink.stats())
        except Exception:  # sinks without counters (test doubles) or a broken one
            continue
    return out


def _start_status(config: RunConfig, metrics: RuntimeMetrics, sinks: list[Any]) -> Any:
    if config.status is None or getattr(config.status, "port", None) is None:
        return None
    from edge.status import StatusServer  # type: ignore[attr-defined]
    return StatusServer.from_config(config.status, metrics, sinks)


class _ScoreStats:
    """Running min/max/mean of scores (no per-frame storage)."""

    def __init__(self) -> None:
        self.n, self.mean, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            return
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.min, self.max = min(self.min, x), max(self.max, x)

    def to_dict(self) -> dict[str, float | None]:
        if not self.n:
            return {"min": None, "max": None, "mean": None}
        return {"min": self.min, "max": self.max, "mean": self.mean}


def run(config: RunConfig, *, stop_event: threading.Event | None = None, raw_source: RawSource | None = None,
        out: IO[str] | None = None, metrics: RuntimeMetrics | None = None, sinks: list[Any] | None = None,
        notifier: SystemdNotifier | None = None) -> dict[str, Any]:
    """Run the frame loop until end of input, ``max_frames``, ``duration`` or ``stop_event``.

    Writes one JSON line per frame (keys frame, time, score, threshold, alarm, event,
    latency_ms, path; a skipped corrupt file gets one too, event "corrupt", with its path)
    to ``out`` / ``config.jsonl`` / stdout and returns a summary dict
    (counters, latency percentiles, events, why it stopped).  ``raw_source``, ``sinks``,
    ``out`` and ``notifier`` are injection points for tests.

    systemd: ``STATUS=`` while the source opens / while waiting for its first frame, ``READY=1``
    once the first frame is scored, ``WATCHDOG=1`` from the loop while the source's reading loop
    is alive (``ResilientSource.loop_alive``: not hung in a driver), ``STOPPING=1`` at the end.
    """
    stop_event = stop_event or threading.Event()
    metrics = metrics or RuntimeMetrics()
    notifier = notifier or SystemdNotifier()
    manifest, engine = load_model(config.model, config.threads, config.device, config.trt_cache_dir)
    dec = config.decision
    threshold = resolve_threshold(manifest, dec.category, dec.threshold)
    decider = Decider(threshold, dec.raise_k, dec.raise_n, dec.clear_m)
    if config.jsonl_every < 1:
        raise EngineError(f"--jsonl-every {config.jsonl_every}: expected >= 1")
    corrupt: deque[str] = deque()  # paths of skipped files, for the frame log (deque: the grabber thread appends)

    def note_corrupt(path: str | None) -> None:
        if path is not None:  # files only: a flaky camera's empty frames are counted, not logged one by one
            corrupt.append(path)

    source = open_source(config.source, metrics, stop_event, raw_source, on_corrupt=note_corrupt)
    source_desc = source.raw.description
    metrics.set_info(source=source_desc, model=str(config.model), engine=engine.name, threshold=threshold,
                     device=engine.device, engine_info=engine_status(engine))
    log.info("model %s (%s, %s, device %s: %s), threshold %.6g%s, source %s", config.model, engine.name,
             engine.precision, engine.device, ", ".join(engine.providers), threshold,
             f" [category {dec.category}]" if dec.category else "", source_desc)

    own_out = None
    if out is None:
        if config.jsonl:
            own_out = out = _open_jsonl(config.jsonl)
        else:
            out = sys.stdout
    sink_list: list[Any] = []
    status = None
    grabber: LatestFrame | None = None
    events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS_IN_SUMMARY)
    scores = _ScoreStats()
    stopped_by = "end-of-input"
    t_start = time.monotonic()
    last_overlay = -math.inf
    frame_iter: Iterator[Frame | None] | None = None
    final_fps: float | None = None
    sd_state = {"status": "", "ready": False, "hung": False}

    def sd_status(text: str) -> None:
        if text != sd_state["status"]:
            sd_state["status"] = text
            notifier.status(text)

    def sd_tick() -> None:
        """STATUS= on state changes; WATCHDOG=1 unless the source's reading loop hangs."""
        if not source.opened_once:
            sd_status(f"opening {source_desc}")
        elif not sd_state["ready"]:
            sd_status(f"waiting for frames from {source_desc}")
        elif metrics.stalled:
            sd_status(f"stalled: no frame from {source_desc} for {config.source.stall_timeout:g} s; reconnecting")
        else:
            sd_status(f"scoring {source_desc}")
        if source.loop_alive():
            sd_state["hung"] = False
            notifier.watchdog()
        elif not sd_state["hung"]:
            sd_state["hung"] = True
            log.error("%s: the frame source is hung in a driver call; no longer feeding the systemd watchdog",
                      source_desc)

    def log_corrupt() -> None:
        while corrupt:
            _write_line(out, _corrupt_record(corrupt.popleft(), threshold, decider.debouncer.alarm))

    try:
        sink_list = list(sinks) if sinks is not None else _build_sinks(config, metrics)
        status = _start_status(config, metrics, sink_list)
        frames: Iterable[Frame | None]
        if source.live and config.source.latest_only:
            grabber = LatestFrame(source, metrics)
            frames = grabber
        else:
            frames = source
        sd_tick()  # STATUS=opening …; READY=1 only once the first frame is scored
        n_scored = 0
        frame_iter = iter(frames)
        while True:
            if stop_event.is_set():
                stopped_by = "signal"
                break
            if config.duration is not None and time.monotonic() - t_start >= config.duration:
                stopped_by = "duration"
                break
            if config.max_frames is not None and n_scored >= config.max_frames:
                stopped_by = "max-frames"
                break
            sd_tick()
            try:
                frame = next(frame_iter)
            except StopIteration:
                if stop_event.is_set():
                    stopped_by = "signal"
                break
            finally:
                log_corrupt()  # before this frame's line: the log keeps the input order
            if frame is None:  # idle tick from the grabber (reconnecting / waiting for the camera)
                continue
            amap, score = score_frame(engine, manifest, frame.bgr)
            d = decider.update(score)
            latency_ms = (time.monotonic() - frame.t_capture) * 1e3
            n_scored += 1
            scores.add(score)
            metrics.record_frame(latency_ms, score, d.alarm)
            if not sd_state["ready"]:
                sd_state["ready"] = True
                sd_state["status"] = f"scoring {source_desc}"
                notifier.ready(sd_state["status"])
            live = getattr(status, "live", None)  # the live view's score trace and alarm list
            if live is not None:
                live.add_score(score)
            record = {"frame": frame.index, "time": _iso_now(), "score": _finite_or_none(score),
                      "threshold": threshold, "alarm": d.alarm, "event": d.event,
                      "latency_ms": round(latency_ms, 3), "path": frame.path}
            if d.event is not None or (n_scored - 1) % config.jsonl_every == 0:
                _write_line(out, record)
            now = time.monotonic()
            overlay = None
            jpeg = None
            if d.event is not None or (status is not None and now - last_overlay >= config.overlay_interval):
                overlay = overlay_heatmap(frame.bgr, amap, threshold, score)
                jpeg = encode_jpeg(overlay)
                metrics.set_latest_jpeg(jpeg)
                last_overlay = now
            if d.event is not None:
                if d.event == "raise":
                    metrics.record_alarm()
                if live is not None:
                    live.add_alarm(record, jpeg if d.event == "raise" else None)
                events.append({"frame": frame.index, "event": d.event, "score": _finite_or_none(score),
                               "path": frame.path})
                log.info("alarm %s at frame %d (score %.6g, threshold %.6g)", d.event, frame.index, score, threshold)
            if sink_list:
                # Every frame goes to the sinks (each filters what it acts on, e.g. raise/clear only).
                event = {**record, "model": str(config.model), "category": dec.category, "source": source_desc}
                for sink in sink_list:
                    try:
                        sink.handle(event, frame.bgr, overlay)
                    except Exception as e:  # one broken sink must not stop inspection
                        metrics.record_sink_error()
                        log.warning("sink %s failed: %s", type(sink).__name__, e)
    finally:
        final_fps = metrics.fps()  # before the sinks' close time dilutes it
        notifier.stopping()
        if grabber is not None:
            grabber.stop()
        else:
            source.halt()
        if frame_iter is not None and hasattr(frame_iter, "close"):
            frame_iter.close()  # runs the source's cleanup (releases the camera/file) now, not at GC
        if sink_list:
            _close_sinks(sink_list, config.sink_close_timeout)
        if status is not None:
            try:
                status.close()
            except Exception as e:
                log.warning("stopping the status endpoint failed: %s", e)
        if own_out is not None:
            own_out.close()
        else:
            out.flush()
        notifier.close()
    snap = metrics.snapshot()
    return {
        "stopped_by": stopped_by,
        "frames": snap["frames"], "corrupt": snap["corrupt"], "dropped": snap["dropped"],
        "reconnects": snap["reconnects"], "stalls": snap.get("stalls", 0), "alarms": snap["alarms"],
        "sink_errors": snap["sink_errors"],
        "alarm_active": decider.debouncer.alarm, "threshold": threshold, "category": dec.category,
        "events": list(events), "score": scores.to_dict(), "latency_ms": snap["latency_ms"], "fps": final_fps,
        "duration_s": time.monotonic() - t_start, "engine": engine.describe(), "source": source_desc,
        "sinks": _sink_stats(sink_list),
    }


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

    The threshold is ``edge.calibration.calibrate_threshold(scores, mode="fpr",
    target_fpr=config.target_fpr)`` (empirical quantile or tail fit, see that module); it
    replaces the global threshold, or the ``config.category`` one.  The previous manifest is
    kept as ``<manifest>.bak-<timestamp>``.  Returns a summary (old/new threshold, mode, fit, backup).
    The manifest is left untouched (no backup either) when fewer than ``config.frames`` frames
    arrive (unless at least ``config.allow_fewer_frames`` did) or ``config.category`` is not in
    the manifest (unless ``config.new_category``).
    """
    from edge.calibration import calibrate_threshold, threshold_section
    from edge.manifest import backup_manifest, update_threshold

    if config.frames < 1:
        raise EngineError(f"--frames {config.frames}: expected >= 1")
    minimum = config.allow_fewer_frames
    if minimum is not None and not 1 <= minimum <= config.frames:
        raise EngineError(f"--allow-fewer-frames {minimum}: expected 1 .. --frames ({config.frames})")
    stop_event = stop_event or threading.Event()
    metrics = RuntimeMetrics()
    manifest, engine = load_model(config.model, config.threads, config.device, config.trt_cache_dir)
    log.info("calibrating %s (%s, %s, device %s: %s)", config.model, engine.name, engine.precision, engine.device,
             ", ".join(engine.providers))
    _check_category(manifest, config.category, config.new_category)
    try:
        old = manifest.threshold(config.category)
    except ValueError:
        old = None  # a category without its own threshold yet
    source = open_source(config.source, metrics, stop_event, raw_source)
    scores = np.empty(config.frames, dtype=np.float64)  # preallocated: memory is bounded by --frames
    n = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=config.frames, desc="calibrating", unit="frame", file=sys.stderr)
    frame_iter = iter(source)
    try:
        for frame in frame_iter:
            _, scores[n] = score_frame(engine, manifest, frame.bgr)
            n += 1
            if bar is not None:
                bar.update(1)
            if n >= config.frames:
                break
    finally:
        frame_iter.close()  # release the camera/file now
        if bar is not None:
            bar.close()
    if stop_event.is_set() and n < config.frames:
        raise EngineError(f"calibration interrupted after {n} of {config.frames} frames; manifest unchanged")
    if n == 0:
        raise EngineError(f"{source.raw.description}: delivered no usable frames; manifest unchanged")
    if n < config.frames:
        if minimum is None or n < minimum:
            raise EngineError(f"{source.raw.description}: delivered {n} of --frames {config.frames} usable frames "
                              f"({metrics.corrupt} corrupt); manifest unchanged" +
                              (f" (--allow-fewer-frames {minimum})" if minimum is not None else
                               "; pass --allow-fewer-frames N to accept at least N"))
        log.warning("source ended after %d of %d frames; calibrating on %d (--allow-fewer-frames %d)",
                    n, config.frames, n, minimum)
    result = calibrate_threshold(scores[:n], mode="fpr", target_fpr=config.target_fpr)
    results = {"per_category": {config.category: result}} if config.category else {"global": result}
    section = threshold_section(results, source="edge-calibrate")
    backup = backup_manifest(config.model)
    path = update_threshold(config.model, section, backup=False)
    return {"manifest": str(path), "backup": str(backup), "category": config.category, "frames": n,
            "corrupt": metrics.corrupt, "old_threshold": old, "threshold": result.threshold, "mode": result.mode,
            "fit": result.fit, "target_fpr": config.target_fpr, "statistics": result.statistics,
            "source": source.raw.description, "device": engine.device, "providers": list(engine.providers)}

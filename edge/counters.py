"""Thread-safe runtime counters shared by the frame loop, the status endpoint and the sinks.

The runner is the only writer of most counters; the status server (another thread)
reads them through ``snapshot()`` and ``latest_jpeg()``.  Memory is bounded: latency
samples live in a fixed-size ring (``latency_window``) and only the newest overlay JPEG
is kept.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np


class RuntimeCounters:
    """Counters and gauges of one ``edge-run`` process (all methods are thread-safe).

    Attributes read by ``snapshot()``:
      frames (scored), dropped (frames skipped because the loop fell behind or a sink queue
      was full), corrupt (empty/undecodable frames), reconnects, alarms (raise events),
      alarm_active, last_score, threshold, latency percentiles (p50/p90/p99/max over the last
      ``latency_window`` frames), fps (scored frames per second over the last ``fps_window_s``
      seconds, so it decays to 0 while no frames arrive), uptime, stalls (reads that delivered
      nothing for the stall timeout) and stalled (True from a stall until the next scored frame).
    """

    def __init__(self, latency_window: int = 1000, fps_window_s: float = 10.0) -> None:
        if latency_window < 1:
            raise ValueError(f"latency_window must be >= 1, got {latency_window}")
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._latencies_ms: deque[float] = deque(maxlen=latency_window)
        # Frame completion times for the fps estimate (same bounded window as latency).
        self._frame_times: deque[float] = deque(maxlen=latency_window)
        self.fps_window_s = float(fps_window_s)
        self.stalls = 0
        self.stalled = False
        self.frames = 0
        self.dropped = 0
        self.corrupt = 0
        self.reconnects = 0
        self.alarms = 0
        self.alarm_active = False
        self.last_score: float | None = None
        self.threshold: float | None = None
        self.last_frame_time: float | None = None  # wall clock (time.time()) of the last scored frame
        self.source: str | None = None
        self.model: str | None = None
        self.engine: str | None = None
        self.device: str | None = None  # the --device the engine runs on
        self.engine_info: dict[str, Any] | None = None  # providers, precision, threads, ...
        self.sink_errors = 0
        self._latest_jpeg: bytes | None = None
        self._latest_jpeg_time: float | None = None

    # ---- writers (runner / sources / sinks) -------------------------------------------------
    def record_frame(self, latency_ms: float, score: float, alarm_active: bool) -> None:
        """One scored frame: its end-to-end latency (preprocess + inference + decision)."""
        now = time.monotonic()
        with self._lock:
            self.frames += 1
            self._latencies_ms.append(float(latency_ms))
            self._frame_times.append(now)
            self.last_score = float(score)
            self.alarm_active = bool(alarm_active)
            self.last_frame_time = time.time()
            self.stalled = False

    def record_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def record_corrupt(self, n: int = 1) -> None:
        with self._lock:
            self.corrupt += n

    def record_stall(self) -> None:
        """The source delivered nothing for the stall timeout (``stalled`` until the next frame)."""
        with self._lock:
            self.stalls += 1
            self.stalled = True

    def record_reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def record_alarm(self) -> None:
        """An alarm was raised (counts raise events, not alarmed frames)."""
        with self._lock:
            self.alarms += 1

    def record_sink_error(self, n: int = 1) -> None:
        with self._lock:
            self.sink_errors += n

    def set_info(self, *, source: str | None = None, model: str | None = None, engine: str | None = None,
                 threshold: float | None = None, device: str | None = None,
                 engine_info: dict[str, Any] | None = None) -> None:
        """Static facts for /status and /metrics; ``engine_info``: Engine.describe() without the file path."""
        with self._lock:
            if device is not None:
                self.device = device
            if engine_info is not None:
                self.engine_info = dict(engine_info)
            if source is not None:
                self.source = source
            if model is not None:
                self.model = model
            if engine is not None:
                self.engine = engine
            if threshold is not None:
                self.threshold = float(threshold)

    def set_latest_jpeg(self, data: bytes) -> None:
        """Store the newest overlay JPEG (only one is kept)."""
        with self._lock:
            self._latest_jpeg = bytes(data)
            self._latest_jpeg_time = time.time()

    # ---- readers (status endpoint) ----------------------------------------------------------
    def latest_jpeg(self) -> bytes | None:
        with self._lock:
            return self._latest_jpeg

    def latency_percentiles(self) -> dict[str, float | None]:
        with self._lock:
            lat = np.asarray(self._latencies_ms, dtype=np.float64)
        if lat.size == 0:
            return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(lat.max()),
                "mean": float(lat.mean())}

    def fps(self, now: float | None = None) -> float | None:
        """Scored frames per second over the last ``fps_window_s`` seconds (None until 2 frames).

        Measured up to ``now`` (not up to the last frame), so during a stall it decays to 0
        instead of freezing at its last value.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._frame_times) < 2:
                return None
            times = [t for t in self._frame_times if t > now - self.fps_window_s]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(now - times[0], times[-1] - times[0], 1e-9)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable view of every counter (for /status and the final summary)."""
        lat = self.latency_percentiles()
        fps = self.fps()
        with self._lock:
            return {
                "uptime_s": time.monotonic() - self._started,
                "frames": self.frames,
                "dropped": self.dropped,
                "corrupt": self.corrupt,
                "reconnects": self.reconnects,
                "alarms": self.alarms,
                "alarm_active": self.alarm_active,
                "last_score": self.last_score,
                "threshold": self.threshold,
                "last_frame_time": self.last_frame_time,
                "fps": fps,
                "latency_ms": lat,
                "sink_errors": self.sink_errors,
                "stalls": self.stalls,
                "stalled": self.stalled,
                "source": self.source,
                "model": self.model,
                "engine": self.engine,
                "device": self.device,
                "engine_info": dict(self.engine_info) if self.engine_info is not None else None,
                "latest_jpeg_time": self._latest_jpeg_time,
            }

"""Where every scored frame of ``edge-run`` goes: the frame log, the overlay, the live view and the sinks.

Frame log: one strict-JSON line per frame (keys frame, time, score, threshold, alarm, event,
latency_ms, path; every ``jsonl_every``-th frame plus every event frame) to the given stream,
``--jsonl`` or stdout.  A skipped corrupt file gets a line too (event "corrupt", with its path).

Sink contract (edge.sinks): ``handle(event, frame_bgr, overlay_bgr)`` is called for every
scored frame; ``event`` is the frame's JSON record plus "model", "category" and "source";
``overlay_bgr`` is the heat-map overlay on event frames ("raise"/"clear") and on the periodic
/latest.jpg frames, else None.  ``handle`` must not block; exceptions it raises are logged and
counted, never fatal.

``Publisher`` is a context manager: entering opens the frame log, starts the sinks and the status
endpoint; leaving closes the sinks (within ``sink_close_timeout``), then the status endpoint, then
the frame log — one ``ExitStack``, so whatever was started is closed even when a later part fails.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

import numpy as np

from edge.config import ConfigError, RunConfig
from edge.counters import RuntimeCounters
from edge.decision import Decision
from edge.jsonsafe import json_safe
from edge.overlay import encode_jpeg, overlay_heatmap
from edge.sinks import build_sinks, close_sinks
from edge.sources import Frame
from edge.status import StatusServer

log = logging.getLogger("edge.runner.publisher")  # under edge.runner: one logger level covers the whole frame loop


@dataclass(frozen=True)
class RunIdentity:
    """What every sink event carries besides the frame record."""

    model: str
    category: str | None
    source: str


class CorruptFiles:
    """Paths of skipped (empty/undecodable) files, queued until the loop writes their frame-log lines."""

    def __init__(self) -> None:
        self._paths: deque[str] = deque()  # a deque: the grabber thread appends while the loop pops

    def note(self, path: str | None) -> None:
        """``ResilientSource.on_corrupt``: files only; a flaky camera's empty frames are counted, not logged."""
        if path is not None:
            self._paths.append(path)

    def drain(self) -> Iterator[str]:
        while self._paths:
            yield self._paths.popleft()


def iso_now() -> str:
    """UTC wall clock, milliseconds, ``Z`` suffix (the frame log's "time")."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_jsonl(path: str) -> IO[str]:
    """Line-buffered append handle for --jsonl; ConfigError (one line) if it cannot be opened."""
    try:
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError as e:  # missing directory, a directory, no permission
        raise ConfigError(f"--jsonl {path}: cannot append to it ({e.strerror or e})") from None


def start_status(config: RunConfig, metrics: RuntimeCounters, sinks: list[Any]) -> StatusServer | None:
    """The started status endpoint, or None when no --status-port is configured."""
    if config.status.port is None:
        return None
    return StatusServer.from_config(config.status, metrics, sinks)


class Publisher:
    """Frame log, overlay (/latest.jpg, alarm snapshots), live view and sinks of one run.

    ``out`` and ``sinks`` are injection points for tests (default: ``--jsonl``/stdout and the
    configured sinks).
    """

    def __init__(self, config: RunConfig, metrics: RuntimeCounters, *, threshold: float, identity: RunIdentity,
                 corrupt: CorruptFiles, out: IO[str] | None = None, sinks: list[Any] | None = None,
                 fit: str = "stretch") -> None:
        self.config, self.metrics, self.threshold, self.identity = config, metrics, threshold, identity
        self.fit = fit  # the model's fit policy: how its map lies on the frame (overlays)
        self.corrupt = corrupt
        self._injected_out, self._injected_sinks = out, sinks
        self.out: IO[str] = sys.stdout
        self.sinks: list[Any] = []
        self.status: StatusServer | None = None
        self._stack = ExitStack()
        self._published = 0
        self._last_overlay = -math.inf

    # ---- start / stop -----------------------------------------------------------------------------------
    def __enter__(self) -> Publisher:
        with ExitStack() as stack:  # on a failure below, closes what was already started
            self.out = self._open_frame_log(stack)
            stack.callback(self._close_status)  # registered first, runs after the sinks are closed
            self.sinks = list(self._injected_sinks) if self._injected_sinks is not None else self._build_sinks()
            stack.callback(close_sinks, self.sinks, self.config.sink_close_timeout)
            self.status = start_status(self.config, self.metrics, self.sinks)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _open_frame_log(self, stack: ExitStack) -> IO[str]:
        if self._injected_out is None and self.config.jsonl:
            return stack.enter_context(open_jsonl(self.config.jsonl))
        out = self._injected_out if self._injected_out is not None else sys.stdout
        stack.callback(out.flush)
        return out

    def _build_sinks(self) -> list[Any]:
        return list(build_sinks(self.config.sinks, self.metrics))

    def _close_status(self) -> None:
        if self.status is None:
            return
        try:
            self.status.close()
        except Exception as e:
            log.warning("stopping the status endpoint failed: %s", e)

    # ---- per frame ----------------------------------------------------------------------------------------
    def write_corrupt(self, alarm: bool) -> None:
        """Frame-log lines of the files skipped since the last call (same keys as a scored frame's)."""
        for path in self.corrupt.drain():
            self._write({"frame": None, "time": iso_now(), "score": None, "threshold": self.threshold,
                         "alarm": alarm, "event": "corrupt", "latency_ms": None, "path": path})

    def publish(self, frame: Frame, anomaly_map: np.ndarray, score: float, decision: Decision,
                latency_ms: float) -> dict[str, Any]:
        """Frame log, overlay, live view and sinks for one scored frame; returns its frame record."""
        record = {"frame": frame.index, "time": iso_now(), "score": json_safe(score), "threshold": self.threshold,
                  "alarm": decision.alarm, "event": decision.event, "latency_ms": round(latency_ms, 3),
                  "path": frame.path}
        self._published += 1
        live = getattr(self.status, "live", None)  # the live view's score trace and alarm list
        if live is not None:
            live.add_score(score)
        if decision.event is not None or (self._published - 1) % self.config.jsonl_every == 0:
            self._write(record)
        overlay, jpeg = self._overlay(frame, anomaly_map, score, decision.event is not None)
        if decision.event is not None and live is not None:
            live.add_alarm(record, jpeg if decision.event == "raise" else None)
        if self.sinks:
            self._to_sinks(record, frame, overlay)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        # Strict JSON: a NaN/Infinity token makes the whole frame log unreadable for JSON parsers.
        self.out.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self.out.flush()

    def _overlay(self, frame: Frame, anomaly_map: np.ndarray, score: float,
                 is_event: bool) -> tuple[np.ndarray | None, bytes | None]:
        """Heat-map overlay (and its JPEG for /latest.jpg) on event frames, else every ``overlay_interval`` s
        while the status endpoint runs; (None, None) on the other frames (rendering costs CPU)."""
        now = time.monotonic()
        if not is_event and (self.status is None or now - self._last_overlay < self.config.overlay_interval):
            return None, None
        overlay = overlay_heatmap(frame.bgr, anomaly_map, self.threshold, score, fit=self.fit)
        jpeg = encode_jpeg(overlay)
        self.metrics.set_latest_jpeg(jpeg)
        self._last_overlay = now
        return overlay, jpeg

    def _to_sinks(self, record: dict[str, Any], frame: Frame, overlay: np.ndarray | None) -> None:
        # Every frame goes to the sinks (each filters what it acts on, e.g. raise/clear only).
        event = {**record, "model": self.identity.model, "category": self.identity.category,
                 "source": self.identity.source}
        for sink in self.sinks:
            try:
                sink.handle(event, frame.bgr, overlay)
            except Exception as e:  # one broken sink must not stop inspection
                self.metrics.record_sink_error()
                log.warning("sink %s failed: %s", type(sink).__name__, e)

"""Sink base class: a bounded queue drained by one worker thread, so handle() never blocks.

Every sink (log, snapshot, webhook, MQTT, GPIO, command) subclasses :class:`Sink` and only
implements ``process()`` (and optionally ``wants()``, ``_shutdown()``, ``stats()``).
The frame loop calls ``handle()`` for every frame; events a sink does not want are ignored
without copying anything, wanted ones are enqueued (a full queue drops the event, counts it
and logs a throttled warning — the frame loop is never slowed down by an alarm output).
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from typing import Any, ClassVar

import numpy as np

from edge.jsonsafe import json_safe
from edge.redact import redact_credentials

log = logging.getLogger("edge.sinks")

# One queued event: (event, frame BGR copy or None, overlay BGR copy or None); close() queues None to stop.
_Job = tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]
_ERROR_COUNTERS = frozenset({"dropped", "failed"})  # these also bump RuntimeCounters.sink_errors
# Alarm ids are uuid5(process namespace, event content): identical for every sink of one process
# (so a webhook, MQTT and log line of one alarm can be joined) and never reused by another process.
_PROCESS_NAMESPACE = uuid.uuid4()
_ID_KEYS = ("time", "frame", "event", "path", "category", "model", "score")


def alarm_id(event: dict[str, Any]) -> str:
    """Idempotency id of an event (stable within the process, unique across processes)."""
    key = "|".join(repr(json_safe(event.get(k), default=str)) for k in _ID_KEYS)
    return str(uuid.uuid5(_PROCESS_NAMESPACE, key))


def event_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object every sink emits for an event: {"id": ..., **event}."""
    payload: dict[str, Any] = json_safe(event, default=str)  # paths and other objects as text
    for key in ("source", "path"):
        if isinstance(payload.get(key), str):
            payload[key] = redact_credentials(payload[key])
    payload.setdefault("id", alarm_id(event))
    return payload


def event_json(event: dict[str, Any]) -> str:
    """event_payload() as one compact JSON line (no newline)."""
    return json.dumps(event_payload(event), separators=(",", ":"), allow_nan=False)


class Sink:
    """Threaded queue worker; subclasses implement ``process(event, frame_bgr, overlay_bgr)``."""

    kind: ClassVar[str] = "sink"
    # Only sinks that write images get (copies of) the frames; the others get None.
    needs_images: ClassVar[bool] = False
    # Counter bumped when process() returns: "handled" (done); remote sinks use "queued" (in the outbox).
    processed_counter: ClassVar[str] = "handled"

    def __init__(self, *, queue_size: int = 256, on_clear: bool = False, metrics: Any = None) -> None:
        self.name = self.kind
        self._on_clear = on_clear
        self._metrics = metrics  # edge.counters.RuntimeCounters or None
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._counts_lock = threading.Lock()
        self._counts = {"handled": 0, "dropped": 0, "failed": 0}
        self._last_warning: dict[str, float] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # ---- interface used by the frame loop ----------------------------------------------------
    def start(self) -> Sink:
        """Start the worker thread (idempotent; build_sinks calls it)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"sink-{self.name}", daemon=True)
                self._thread.start()
        return self

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether this sink acts on the event: 'raise' always, 'clear' when on_clear is set."""
        kind = event.get("event")
        return kind == "raise" or (kind == "clear" and self._on_clear)

    def handle(self, event: dict[str, Any], frame_bgr: np.ndarray | None = None,
               overlay_bgr: np.ndarray | None = None) -> None:
        """Enqueue the event (and image copies if needed) and return at once; never raises."""
        try:
            if self._closed or not self.wants(event):
                return
            if self._thread is None:
                self.start()
            # Copies: the frame loop may reuse its buffers while the worker still writes them.
            frame = frame_bgr.copy() if self.needs_images and frame_bgr is not None else None
            overlay = overlay_bgr.copy() if self.needs_images and overlay_bgr is not None else None
            self._queue.put_nowait((dict(event), frame, overlay))
        except queue.Full:
            self._count("dropped")
            self._warn("full", f"sink {self.name}: queue full ({self._queue.maxsize}), event dropped")
        except Exception:  # a sink bug must not stop the frame loop
            self._count("failed")
            log.exception("sink %s: handle() failed", self.name)

    def close(self, timeout: float = 5.0) -> None:
        """Process what is queued (up to `timeout` seconds), stop the worker, release resources (idempotent)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("sink %s: closed after %.1f s with %d event(s) unprocessed", self.name, timeout,
                            self._queue.qsize())
        self._shutdown(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, int]:
        """Counters for /metrics: handled, dropped (queue full), failed, backlog (not yet done)."""
        with self._counts_lock:
            out = dict(self._counts)
        out["backlog"] = self._queue.qsize()
        return out

    # ---- for subclasses ------------------------------------------------------------------------
    def process(self, event: dict[str, Any], frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        raise NotImplementedError

    def _shutdown(self, timeout: float) -> None:
        """Release resources after the worker stopped (files, connections, pins)."""

    def _warn(self, key: str, message: str, every_s: float = 60.0) -> None:
        """log.warning at most once per `every_s` per key (an outage must not flood the journal)."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -math.inf) >= every_s:
            self._last_warning[key] = now
            log.warning("%s", message)

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] = self._counts.get(name, 0) + 1
        if name in _ERROR_COUNTERS and self._metrics is not None:
            self._metrics.record_sink_error()

    # ---- worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:  # close()
                return
            try:
                self.process(*item)
                self._count(self.processed_counter)
            except Exception as exc:
                self._count("failed")
                self._warn(f"fail:{type(exc).__name__}", f"sink {self.name}: {type(exc).__name__}: {exc}",
                           every_s=10.0)
                log.debug("sink %s: failure detail", self.name, exc_info=True)

"""Frame iteration shared by ``edge-run`` and ``edge-calibrate``: which frames, when to stop, how to let go.

``FrameLoop`` wraps a ``ResilientSource`` (optionally behind a ``LatestFrame`` grabber), yields the
frames to score and records why it stopped (``StopReason``).  As a context manager it releases the
source on exit: the grabber thread is stopped (or the source halted) and the frame iterator is
closed, so the camera/file is released at once, not at garbage collection.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any

from edge.counters import RuntimeCounters
from edge.sources import Frame, LatestFrame, ResilientSource


class StopReason(str, Enum):
    """Why the frame loop ended (the ``stopped_by`` of the run summary)."""

    END_OF_INPUT = "end-of-input"
    SIGNAL = "signal"
    DURATION = "duration"
    MAX_FRAMES = "max-frames"


def _nothing() -> None:
    return None


class FrameLoop:
    """Yield frames from ``source`` until end of input, ``stop_event``, ``duration`` s or ``max_frames`` frames.

    Every yielded frame counts towards ``max_frames`` (the caller scores each one).  Idle ticks of the
    grabber (no new frame while a camera reconnects) are not yielded; they still run ``before_read``.
    ``before_read`` runs before every read (systemd status / watchdog), ``after_read`` after every read
    attempt (frame-log lines of files skipped meanwhile).  ``latest_only`` puts a live source behind a
    ``LatestFrame`` grabber so a slow model always gets the newest frame.
    """

    def __init__(self, source: ResilientSource, metrics: RuntimeCounters, stop_event: threading.Event, *,
                 max_frames: int | None = None, duration: float | None = None, latest_only: bool = False,
                 started: float | None = None, before_read: Callable[[], None] = _nothing,
                 after_read: Callable[[], None] = _nothing) -> None:
        self.source, self.stop_event = source, stop_event
        self.max_frames, self.duration = max_frames, duration
        self.started = time.monotonic() if started is None else started
        self.before_read, self.after_read = before_read, after_read
        self.grabber = LatestFrame(source, metrics) if source.live and latest_only else None
        self.stop_reason = StopReason.END_OF_INPUT
        self.frames = 0  # frames yielded so far
        self._iter: Iterator[Frame | None] | None = None

    def __enter__(self) -> FrameLoop:
        frames: Iterable[Frame | None] = self.grabber if self.grabber is not None else self.source
        self._iter = iter(frames)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.grabber is not None:
            self.grabber.stop()
        else:
            self.source.halt()
        if self._iter is not None and hasattr(self._iter, "close"):
            self._iter.close()  # runs the source's cleanup (releases the camera/file) now, not at GC

    def _limit_reached(self) -> StopReason | None:
        if self.stop_event.is_set():
            return StopReason.SIGNAL
        if self.duration is not None and time.monotonic() - self.started >= self.duration:
            return StopReason.DURATION
        if self.max_frames is not None and self.frames >= self.max_frames:
            return StopReason.MAX_FRAMES
        return None

    def __iter__(self) -> Iterator[Frame]:
        if self._iter is None:
            raise RuntimeError("FrameLoop: iterate inside its `with` block")
        while True:
            reason = self._limit_reached()
            if reason is not None:
                self.stop_reason = reason
                return
            self.before_read()
            try:
                frame = next(self._iter)
            except StopIteration:
                if self.stop_event.is_set():
                    self.stop_reason = StopReason.SIGNAL
                return
            finally:
                self.after_read()  # before this frame's line: the frame log keeps the input order
            if frame is None:  # idle tick from the grabber (reconnecting / waiting for the camera)
                continue
            self.frames += 1
            yield frame

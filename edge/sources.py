"""Frame sources: USB/V4L2 camera, Raspberry Pi camera, video file, RTSP/HTTP stream, image files.

Every source yields ``Frame`` objects (BGR uint8, as OpenCV delivers them).  Robustness lives
in ``ResilientSource``:
  * opening a live source retries with exponential backoff up to ``open_timeout`` seconds,
    then ``SourceOpenError`` (a camera that never opens is a configuration error); a file that
    does not open fails at once (waiting cannot repair it);
  * a live source (camera/stream) that fails or ends is reopened with exponential backoff
    (logged, counted as a reconnect) — a video FILE or image list ending is end of input;
  * empty/undecodable frames are skipped, counted (``RuntimeCounters.corrupt``) and reported to
    ``on_corrupt`` (for the frame log); too many in a row on a live source is treated as a
    failure and reconnects;
  * a live read that delivers nothing for ``stall_timeout`` seconds (frozen stream, wedged
    driver) is a stall: logged, counted (``RuntimeCounters.stalls``, ``stalled`` until the next
    scored frame), the hanging read is given up (it runs on a helper thread) and the source is
    reconnected at once instead of after FFmpeg's own ~30 s read timeout;
  * ``loop_alive()`` tells whether the reading loop still makes progress (or is waiting for a
    camera on purpose); the runner feeds the systemd watchdog only while it does.
``LatestFrame`` decouples a live source from a slower model: a grabber thread keeps only the
newest frame (older unconsumed ones are counted as dropped), so decisions are made on fresh
frames instead of a growing buffer.
"""
from __future__ import annotations

import glob as globmod
import logging
import math
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import cv2
import numpy as np

from edge.counters import RuntimeCounters
from edge.preprocess import IMAGE_SUFFIXES, PreprocessSpec, decode_frame
from edge.redact import redact_credentials

log = logging.getLogger("edge.sources")

# Stream URLs: FFmpeg's connect timeout per open attempt (its default is 30 s).
STREAM_OPEN_TIMEOUT_S = 10.0
# An open attempt counts as "waiting for the camera" (not a hang) for this long.
OPEN_GRACE_S = 60.0
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "rtmp://")


class SourceError(ValueError):
    """Bad source option (missing file, bad ROI, …)."""


class SourceOpenError(SourceError):
    """A camera/stream/file could not be opened within the allowed retries."""


class SourceFailure(RuntimeError):
    """A live source failed while running (read error, stream ended unexpectedly)."""


class EndOfInput(Exception):
    """A finite source (video file, image list) has delivered its last frame."""


@dataclass
class Frame:
    """One captured frame: BGR uint8 pixels, sequence index, capture time and optional file path."""

    index: int
    bgr: np.ndarray
    t_capture: float  # time.monotonic() right after the frame was read (latency origin)
    path: str | None = None


@dataclass(frozen=True)
class Roi:
    """Crop rectangle in pixels (``--roi x,y,w,h``)."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str | list[int] | tuple[int, ...] | Roi | None) -> Roi | None:
        if text is None or isinstance(text, Roi):
            return text
        parts = text.split(",") if isinstance(text, str) else list(text)
        try:
            x, y, w, h = (int(str(p).strip()) for p in parts)
        except ValueError:
            raise SourceError(f"--roi {text!r}: expected four integers x,y,w,h") from None
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise SourceError(f"--roi {text!r}: expected x,y >= 0 and w,h > 0")
        return cls(x, y, w, h)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        fh, fw = frame.shape[:2]
        if self.x + self.w > fw or self.y + self.h > fh:
            raise SourceError(f"--roi {self.x},{self.y},{self.w},{self.h}: outside the {fw}x{fh} frame")
        return frame[self.y:self.y + self.h, self.x:self.x + self.w]


# ---------------------------------------------------------------------------------------------
# Raw sources: open / read / close, no retry logic.
# read() returns an ndarray (possibly empty/None = corrupt frame, skipped), raises EndOfInput
# at the end of a finite source, SourceFailure when a live source breaks.
# ---------------------------------------------------------------------------------------------
class RawSource(ABC):
    live: bool = True  # live sources reconnect on failure/end; finite ones stop
    description: str = "source"

    @abstractmethod
    def open(self) -> None:
        """Open the device/file; raise SourceOpenError if it cannot be opened now."""

    @abstractmethod
    def read(self) -> tuple[np.ndarray | None, str | None]:
        """Next (frame BGR or None if corrupt/empty, path or None)."""

    def close(self) -> None:  # noqa: B027 -- a deliberate no-op default: sources with nothing to release skip it
        """Release the device (idempotent)."""

    def replica(self) -> RawSource | None:
        """A new, unopened source for the same device/URL, or None.

        Used after a stall: the hung read keeps this object (it is closed once that read returns)
        and the replica is opened instead.  None (the default) means reuse this object: close()
        it — which should make the hung read return — and open() it again.
        """
        return None


class OpenCvSource(RawSource):
    """cv2.VideoCapture over a camera index (V4L2 on Linux), a video file or a stream URL."""

    def __init__(self, target: int | str, live: bool, width: int | None = None, height: int | None = None,
                 fps: float | None = None, read_timeout: float | None = None) -> None:
        self.target, self.live = target, live
        self.width, self.height, self.fps = width, height, fps
        # Stream URLs: FFmpeg's own read timeout (default ~30 s); set above the runtime's stall
        # timeout so the runtime notices first and the abandoned read still returns soon after.
        self.read_timeout = read_timeout
        # Redacted once here: every log line, error, metric and summary shows this name, never the password.
        self.description = f"camera {target}" if isinstance(target, int) else redact_credentials(str(target))
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if isinstance(self.target, int) and sys.platform.startswith("linux"):
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
        elif self.live and self.read_timeout and _has_ffmpeg():
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(STREAM_OPEN_TIMEOUT_S * 1000),
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1, int(self.read_timeout * 1000))])
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"{self.description}: cannot open" +
                                  ("" if self.live else " as a video (unsupported format or corrupt file)"))
        if self.live:
            # Keep the driver queue short: stale buffered frames only add latency.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap

    def read(self) -> tuple[np.ndarray | None, str | None]:
        assert self._cap is not None, "open() first"
        ok, frame = self._cap.read()
        if not ok:
            if not self.live:
                raise EndOfInput()
            raise SourceFailure(f"{self.description}: read failed (device lost or stream ended)")
        return frame, None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def replica(self) -> OpenCvSource:
        # Never release a VideoCapture while another thread is inside its read(): open a new one.
        return OpenCvSource(self.target, self.live, self.width, self.height, self.fps, self.read_timeout)


def _has_ffmpeg() -> bool:
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG))
    except Exception:  # very old/odd OpenCV builds
        return False


class PiCameraSource(RawSource):
    """Raspberry Pi camera via picamera2 (imported only when this source is used)."""

    live = True

    def __init__(self, width: int | None = None, height: int | None = None) -> None:
        self.width, self.height = width or 640, height or 480
        self.description = "picamera"
        self._cam: Any = None  # a picamera2.Picamera2 once open (the package is untyped)

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError("--picamera: the picamera2 package is not installed "
                              "(on Raspberry Pi OS: sudo apt install python3-picamera2)") from None
        try:
            cam = Picamera2()
            # "RGB888" in libcamera is B,G,R byte order, i.e. what OpenCV calls BGR.
            cam.configure(cam.create_video_configuration(main={"format": "RGB888",
                                                               "size": (self.width, self.height)}))
            cam.start()
        except Exception as e:  # libcamera raises RuntimeError/IndexError when no camera is attached
            raise SourceOpenError(f"picamera: cannot open ({e})") from None
        self._cam = cam

    def read(self) -> tuple[np.ndarray | None, str | None]:
        try:
            return self._cam.capture_array("main"), None
        except Exception as e:
            raise SourceFailure(f"picamera: capture failed ({e})") from None

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None


class ImageFilesSource(RawSource):
    """A sorted list of image files (directory or glob); each frame carries its path. With the model's ``spec``
    each file is decoded as the model's training images were (edge.preprocess.decode_frame: a large JPEG at
    reduced size when ``spec.decode`` says so)."""

    live = False

    def __init__(self, paths: list[Path], description: str, spec: PreprocessSpec | None = None) -> None:
        self.paths, self.description, self.spec = paths, description, spec
        self._i = 0

    def open(self) -> None:
        self._i = 0

    def read(self) -> tuple[np.ndarray | None, str | None]:
        if self._i >= len(self.paths):
            raise EndOfInput()
        path = self.paths[self._i]
        self._i += 1
        try:
            data = np.fromfile(str(path), dtype=np.uint8)
        except OSError:
            return None, str(path)
        return _decode(data, path, self.spec), str(path)


def _decode(data: np.ndarray, path: Path, spec: PreprocessSpec | None) -> np.ndarray | None:
    """Decoded image, or None (→ counted as corrupt) for any file the decoder refuses."""
    try:
        return decode_frame(data, spec)[0]
    except Exception as e:  # cv2.error (e.g. a header claiming 40000×30000 px), MemoryError: one bad file, not the run
        log.debug("%s: cannot decode (%s: %s)", path, type(e).__name__, e)
        return None


def list_images(spec: str) -> list[Path]:
    """Sorted image files of a directory, or the sorted matches of a glob pattern."""
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [Path(f) for f in globmod.glob(spec, recursive=True) if Path(f).is_file()]
    return sorted(files)


def make_raw_source(camera: int | None = None, picamera: bool = False, source: str | None = None,
                    width: int | None = None, height: int | None = None, fps: float | None = None,
                    stall_timeout: float | None = None, spec: PreprocessSpec | None = None) -> RawSource:
    """The RawSource for exactly one of ``--camera`` / ``--picamera`` / ``--source``.

    ``stall_timeout`` (seconds, None/0 = off) sets a stream URL's FFmpeg read timeout to twice it; ``spec`` (the
    model's preprocessing) tells image files how to decode (ImageFilesSource).
    """
    given = [n for n, v in (("--camera", camera is not None), ("--picamera", picamera), ("--source", source))
             if v]
    if len(given) != 1:
        raise SourceError(f"give exactly one of --camera N, --picamera, --source PATH|URL (got {given or 'none'})")
    if camera is not None:
        if camera < 0:
            raise SourceError(f"--camera {camera}: expected a device index >= 0")
        return OpenCvSource(int(camera), live=True, width=width, height=height, fps=fps)
    if picamera:
        return PiCameraSource(width, height)
    assert source is not None
    return _source_for(source, stall_timeout, spec)


def _source_for(source: str, stall_timeout: float | None, spec: PreprocessSpec | None) -> RawSource:
    """``--source``: a stream URL, an image directory or glob, one image, or a video file."""
    if source.lower().startswith(STREAM_SCHEMES):
        return OpenCvSource(source, live=True, read_timeout=2 * stall_timeout if stall_timeout else None)
    p = Path(source)
    if p.is_dir():
        files = list_images(source)
        if not files:
            raise SourceError(f"--source {source}: directory holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return ImageFilesSource(files, source, spec)
    if any(c in source for c in "*?["):
        files = list_images(source)
        if not files:
            raise SourceError(f"--source {source}: glob matches no files")
        return ImageFilesSource(files, source, spec)
    if not p.is_file():
        raise SourceError(f"--source {source}: no such file, directory, glob match or stream URL")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFilesSource([p], source, spec)
    return OpenCvSource(source, live=False)


def _valid_frame(frame: object) -> TypeGuard[np.ndarray]:
    return (isinstance(frame, np.ndarray) and frame.size > 0 and frame.dtype == np.uint8
            and (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4))))


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


class _ReadTimeout(Exception):
    """A read on the helper thread did not return within the stall timeout."""


class _TimedReader:
    """Runs ``raw.read()`` on a helper thread so that a read which hangs can be given up.

    ``read(timeout)`` returns the read's result, re-raises its exception, or raises _ReadTimeout.
    After a timeout the reader is ``abandon()``-ed: its thread finishes the hung read (if it
    ever returns), drops the result, optionally closes the raw source, and exits.
    """

    def __init__(self, raw: RawSource) -> None:
        self.raw = raw
        self._lock = threading.Lock()
        self._want = threading.Event()
        self._done = threading.Event()
        # The last read's (frame, path), or the exception it raised; None until it returns.
        self._result: tuple[np.ndarray | None, str | None] | BaseException | None = None
        self._abandoned = False
        self._close_when_done = False
        self._thread = threading.Thread(target=self._loop, name="edge-reader", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._want.wait()
            self._want.clear()
            with self._lock:
                if self._abandoned:
                    break
            result: tuple[np.ndarray | None, str | None] | BaseException
            try:
                result = self.raw.read()
            except BaseException as e:  # handed to the caller's thread
                result = e
            with self._lock:
                if self._abandoned:
                    break
                self._result = result
                self._done.set()
        if self._close_when_done:
            try:
                self.raw.close()
            except Exception as e:
                log.debug("%s: closing after an abandoned read failed: %s", self.raw.description, e)

    def read(self, timeout: float) -> tuple[np.ndarray | None, str | None]:
        self._done.clear()
        self._want.set()
        if not self._done.wait(timeout):
            raise _ReadTimeout()
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise result
        assert result is not None  # _done is set only together with a result
        return result

    def abandon(self, close_raw: bool = False) -> None:
        """Stop using this reader; ``close_raw``: close the raw source once a hung read returns."""
        with self._lock:
            self._abandoned = True
            self._close_when_done = close_raw
        self._want.set()  # an idle thread wakes up and exits

    @property
    def busy(self) -> bool:
        """The thread is still alive (after abandon(): still inside a read that has not returned)."""
        return self._thread.is_alive()


class ResilientSource:
    """Iterate frames from a RawSource with bounded open retries, reconnects and corrupt-frame skipping.

    ``stall_timeout`` (seconds; None/0 = off; live sources only): a read that delivers nothing for
    that long is abandoned and the source reconnected (see the module docstring).  At most
    ``max_stuck_reads`` abandoned reads may hang at once; beyond that the source waits for one
    of them to return and ``loop_alive()`` turns False (a wedged driver: let the watchdog restart).
    ``sleep`` and ``clock`` are injectable so tests run without real waiting.
    """

    def __init__(self, raw: RawSource, *, metrics: RuntimeCounters | None = None, roi: Roi | None = None,
                 open_timeout: float = 10.0, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 max_consecutive_corrupt: int = 50, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 on_corrupt: Callable[[str | None], None] | None = None, stall_timeout: float | None = None,
                 max_stuck_reads: int = 3) -> None:
        self.raw, self.metrics, self.roi = raw, metrics or RuntimeCounters(), roi
        self.stall_timeout = stall_timeout if stall_timeout and stall_timeout > 0 and raw.live else None
        self.max_stuck_reads = max(1, int(max_stuck_reads))
        self._reader: _TimedReader | None = None
        self._stuck: list[_TimedReader] = []  # abandoned readers whose read has not returned yet
        self.wedged = False
        # Called with the path (None for live frames) of every skipped frame; may run on the grabber thread.
        self.on_corrupt = on_corrupt
        self.open_timeout, self.backoff_initial, self.backoff_max = open_timeout, backoff_initial, backoff_max
        self.max_consecutive_corrupt = max_consecutive_corrupt
        self.stop_event = stop_event or threading.Event()
        # Private stop flag: ends this source without signalling the caller's stop_event.
        self._halt = threading.Event()
        # Default sleep wakes early on stop so SIGTERM is not delayed by a long backoff.
        self._sleep = sleep or (lambda s: self.stop_event.wait(s))
        self._clock = clock
        self.opened_once = False
        self._index = 0
        self._corrupt_run = 0  # corrupt frames in a row (a live source reconnects after max_consecutive_corrupt)
        # Liveness of the reading loop: last sign of progress, and until when a deliberate wait
        # (backoff sleep, open attempt, waiting at a yield for the consumer) counts as progress.
        self._last_beat = clock()
        self._alive_until = 0.0

    @property
    def live(self) -> bool:
        return self.raw.live

    def _beat(self, grace: float = 0.0) -> None:
        now = self._clock()
        self._last_beat, self._alive_until = now, now + grace

    def loop_alive(self, limit: float | None = None, now: float | None = None) -> bool:
        """False when the reading loop made no progress for ``limit`` seconds (default: 3 × stall_timeout)
        outside a deliberate wait — a read/open/close hanging in a driver, or too many hung reads.
        Always True without a stall timeout (nothing bounds a read then)."""
        if limit is None:
            if self.stall_timeout is None:
                return True
            limit = 3 * self.stall_timeout
        now = self._clock() if now is None else now
        return not self.wedged and (now - self._last_beat <= limit or now <= self._alive_until)
    def halt(self) -> None:
        """Ask the iteration to end after the current read (thread-safe)."""
        self._halt.set()

    def _stopped(self) -> bool:
        return self.stop_event.is_set() or self._halt.is_set()

    def _open_with_retry(self, deadline: float | None) -> bool:
        """Open the raw source, backing off exponentially; False if stopped; raise past the deadline."""
        delay, attempt = self.backoff_initial, 0
        while not self._stopped():
            attempt += 1
            self._beat(grace=OPEN_GRACE_S)  # an open may take a while (FFmpeg: STREAM_OPEN_TIMEOUT_S)
            try:
                self.raw.open()
                self._beat()
                return True
            except SourceOpenError as e:
                if not self.raw.live:
                    raise  # a garbage video file stays garbage: no retries
                if deadline is not None and self._clock() + delay > deadline:
                    raise SourceOpenError(f"{self.raw.description}: could not be opened after {attempt} attempt(s) "
                                          f"within --open-timeout {self.open_timeout:g} s ({e})") from None
                log.warning("%s; retrying in %.1f s (attempt %d)", e, delay, attempt)
                self._beat(grace=delay + 1.0)  # waiting for a camera on purpose: still alive
                self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)
        return False

    def _reconnect(self, reason: str) -> bool:
        log.warning("%s: %s; reconnecting", self.raw.description, reason)
        self.raw.close()
        self.metrics.record_reconnect()
        # Once a source has worked, keep trying forever: a line camera may be unplugged for minutes.
        return self._open_with_retry(deadline=None)

    def _read(self) -> tuple[np.ndarray | None, str | None]:
        if self.stall_timeout is None:
            return self.raw.read()
        if self._reader is None or self._reader.raw is not self.raw:
            self._reader = _TimedReader(self.raw)
        return self._reader.read(self.stall_timeout)

    def _recover_from_stall(self) -> bool:
        """Give up the hung read, reconnect (a replica if the raw source offers one); False if stopped."""
        assert self._reader is not None and self.stall_timeout is not None
        self.metrics.record_stall()
        log.warning("%s: no frame for %.1f s (stalled: frozen stream or hung driver); reconnecting",
                    self.raw.description, self.stall_timeout)
        reader, self._reader = self._reader, None
        fresh = self.raw.replica()
        reader.abandon(close_raw=fresh is not None)
        self._stuck.append(reader)
        if fresh is None:
            try:
                self.raw.close()  # should make the hung read return
            except Exception as e:
                log.warning("%s: close after a stall failed: %s", self.raw.description, e)
        else:
            self.raw = fresh  # the hung read keeps (and later closes) the old object
        self._stuck = [r for r in self._stuck if r.busy]
        while len(self._stuck) >= self.max_stuck_reads and not self._stopped():
            if not self.wedged:
                log.error("%s: %d reads still hang after reconnecting; waiting for one to return "
                          "(no watchdog pings meanwhile: systemd restarts a process stuck like this)",
                          self.raw.description, len(self._stuck))
                self.wedged = True
            self._sleep(min(1.0, self.stall_timeout))  # deliberately no _beat(): the loop is stuck
            self._stuck = [r for r in self._stuck if r.busy]
        self.wedged = False
        self.metrics.record_reconnect()
        return self._open_with_retry(deadline=None)

    def __iter__(self) -> Iterator[Frame]:
        if not self._open_with_retry(self._clock() + self.open_timeout):
            return
        self.opened_once = True
        self._corrupt_run = 0
        try:
            while not self._stopped():
                self._beat()
                try:
                    frame, path = self._read()
                except Exception as e:  # stall, end, failure or driver error: _after_read_error sorts them out
                    if not self._after_read_error(e):
                        return
                    continue
                t = time.monotonic()
                if not _valid_frame(frame):
                    if not self._skip_corrupt(path):
                        return
                    continue
                self._corrupt_run = 0
                yield self._frame_for_consumer(frame, path, t)
                self._index += 1
        finally:
            self._release()

    def _after_read_error(self, error: Exception) -> bool:
        """A failed read: True to read on (recovered), False to end the iteration; a finite source
        re-raises driver/decoder errors (cv2.error, OSError), a live one reconnects after them."""
        if isinstance(error, _ReadTimeout):
            return self._recover_from_stall()
        if isinstance(error, EndOfInput):
            return self.raw.live and self._reconnect("stream ended")
        if isinstance(error, SourceFailure):
            if not self.raw.live:
                log.warning("%s", error)
                return False
            return self._reconnect(str(error))
        if not self.raw.live:
            raise error
        return self._reconnect(f"{type(error).__name__}: {error}")

    def _skip_corrupt(self, path: str | None) -> bool:
        """Count and report a corrupt frame; a live source reconnects after too many in a row (False: stopped)."""
        self.metrics.record_corrupt()
        self._corrupt_run += 1
        log.warning("%s: empty/corrupt frame skipped%s", self.raw.description, f" ({path})" if path else "")
        if self.on_corrupt is not None:
            self.on_corrupt(path)
        if self.raw.live and self._corrupt_run >= self.max_consecutive_corrupt:
            self._corrupt_run = 0
            return self._reconnect(f"{self.max_consecutive_corrupt} corrupt frames in a row")
        return True

    def _frame_for_consumer(self, frame: np.ndarray, path: str | None, t_capture: float) -> Frame:
        frame = _to_bgr(frame)
        if self.roi is not None:
            frame = self.roi.apply(frame)
        self._beat(grace=math.inf)  # waiting for the consumer is not a hang of this loop
        return Frame(index=self._index, bgr=frame, t_capture=t_capture, path=path)

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.abandon()  # idle: its thread exits
            self._reader = None
        self.raw.close()


class LatestFrame:
    """Run a frame iterator in a thread and hand out only the newest frame (counting drops).

    Iterating yields ``Frame`` objects, or ``None`` every ``tick`` seconds without a new frame
    so the consumer can check for stop requests and feed the watchdog while a camera reconnects.
    """

    def __init__(self, frames: ResilientSource, metrics: RuntimeCounters, tick: float = 0.5) -> None:
        self.frames, self.metrics, self.tick = frames, metrics, tick
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._grab, name="edge-grabber", daemon=True)

    def _grab(self) -> None:
        try:
            for frame in self.frames:
                with self._cond:
                    if self._latest is not None:
                        self.metrics.record_dropped()
                    self._latest = frame
                    self._cond.notify()
        except BaseException as e:  # surfaced in the consumer thread
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def __iter__(self) -> Iterator[Frame | None]:
        self._thread.start()
        while True:
            with self._cond:
                if self._latest is None and not self._done:
                    self._cond.wait(self.tick)
                frame, self._latest = self._latest, None
                done = self._done
            if frame is not None:
                yield frame
            elif done:
                if self._error is not None:
                    raise self._error
                return
            else:
                yield None

    def stop(self, timeout: float = 2.0) -> None:
        self.frames.halt()
        if self._thread.is_alive():
            self._thread.join(timeout)

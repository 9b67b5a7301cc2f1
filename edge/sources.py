"""Frame sources: USB/V4L2 camera, Raspberry Pi camera, video file, RTSP/HTTP stream, image files.

Every source yields ``Frame`` objects (BGR uint8, as OpenCV delivers them).  Robustness lives
in ``ResilientSource``:
  * opening retries with exponential backoff up to ``open_timeout`` seconds, then
    ``SourceOpenError`` (a camera that never opens is a configuration error);
  * a live source (camera/stream) that fails or ends is reopened with exponential backoff
    (logged, counted as a reconnect) — a video FILE or image list ending is end of input;
  * empty/undecodable frames are skipped and counted (``RuntimeMetrics.corrupt``); too many in
    a row on a live source is treated as a failure and reconnects.
``LatestFrame`` decouples a live source from a slower model: a grabber thread keeps only the
newest frame (older unconsumed ones are counted as dropped), so decisions are made on fresh
frames instead of a growing buffer.
"""
from __future__ import annotations

import glob as globmod
import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from edge.metrics_runtime import RuntimeMetrics

log = logging.getLogger("edge.sources")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
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
    def parse(cls, text: "str | list[int] | tuple[int, ...] | Roi | None") -> "Roi | None":
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

    def close(self) -> None:
        """Release the device (idempotent)."""


class OpenCvSource(RawSource):
    """cv2.VideoCapture over a camera index (V4L2 on Linux), a video file or a stream URL."""

    def __init__(self, target: int | str, live: bool, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> None:
        self.target, self.live = target, live
        self.width, self.height, self.fps = width, height, fps
        self.description = f"camera {target}" if isinstance(target, int) else str(target)
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if isinstance(self.target, int) and sys.platform.startswith("linux"):
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"{self.description}: cannot open")
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


class PiCameraSource(RawSource):
    """Raspberry Pi camera via picamera2 (imported only when this source is used)."""

    live = True

    def __init__(self, width: int | None = None, height: int | None = None) -> None:
        self.width, self.height = width or 640, height or 480
        self.description = "picamera"
        self._cam = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
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
    """A sorted list of image files (directory or glob); each frame carries its path."""

    live = False

    def __init__(self, paths: list[Path], description: str) -> None:
        self.paths, self.description = paths, description
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
        frame = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        return frame, str(path)


def list_images(spec: str) -> list[Path]:
    """Sorted image files of a directory, or the sorted matches of a glob pattern."""
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    else:
        files = [Path(f) for f in globmod.glob(spec, recursive=True) if Path(f).is_file()]
    return sorted(files)


def make_raw_source(camera: int | None = None, picamera: bool = False, source: str | None = None,
                    width: int | None = None, height: int | None = None, fps: float | None = None) -> RawSource:
    """The RawSource for exactly one of ``--camera`` / ``--picamera`` / ``--source``."""
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
    if source.lower().startswith(STREAM_SCHEMES):
        return OpenCvSource(source, live=True)
    p = Path(source)
    if p.is_dir():
        files = list_images(source)
        if not files:
            raise SourceError(f"--source {source}: directory holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return ImageFilesSource(files, source)
    if any(c in source for c in "*?["):
        files = list_images(source)
        if not files:
            raise SourceError(f"--source {source}: glob matches no files")
        return ImageFilesSource(files, source)
    if not p.is_file():
        raise SourceError(f"--source {source}: no such file, directory, glob match or stream URL")
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFilesSource([p], source)
    return OpenCvSource(source, live=False)


def _valid_frame(frame: object) -> bool:
    return (isinstance(frame, np.ndarray) and frame.size > 0 and frame.dtype == np.uint8
            and (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4))))


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


class ResilientSource:
    """Iterate frames from a RawSource with bounded open retries, reconnects and corrupt-frame skipping.

    ``sleep`` and ``clock`` are injectable so tests run without real waiting.
    """

    def __init__(self, raw: RawSource, *, metrics: RuntimeMetrics | None = None, roi: Roi | None = None,
                 open_timeout: float = 10.0, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 max_consecutive_corrupt: int = 50, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.raw, self.metrics, self.roi = raw, metrics or RuntimeMetrics(), roi
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

    @property
    def live(self) -> bool:
        return self.raw.live

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
            try:
                self.raw.open()
                return True
            except SourceOpenError as e:
                if deadline is not None and self._clock() + delay > deadline:
                    raise SourceOpenError(f"{self.raw.description}: could not be opened after {attempt} attempt(s) "
                                          f"within --open-timeout {self.open_timeout:g} s ({e})") from None
                log.warning("%s; retrying in %.1f s (attempt %d)", e, delay, attempt)
                self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)
        return False

    def _reconnect(self, reason: str) -> bool:
        log.warning("%s: %s; reconnecting", self.raw.description, reason)
        self.raw.close()
        self.metrics.record_reconnect()
        # Once a source has worked, keep trying forever: a line camera may be unplugged for minutes.
        return self._open_with_retry(deadline=None)

    def __iter__(self) -> Iterator[Frame]:
        if not self._open_with_retry(self._clock() + self.open_timeout):
            return
        self.opened_once = True
        corrupt_run = 0
        try:
            while not self._stopped():
                try:
                    frame, path = self.raw.read()
                except EndOfInput:
                    if not self.raw.live:
                        return
                    if not self._reconnect("stream ended"):
                        return
                    continue
                except SourceFailure as e:
                    if not self.raw.live:
                        log.warning("%s", e)
                        return
                    if not self._reconnect(str(e)):
                        return
                    continue
                except Exception as e:  # driver/decoder errors (cv2.error, OSError) on a live source
                    if not self.raw.live:
                        raise
                    if not self._reconnect(f"{type(e).__name__}: {e}"):
                        return
                    continue
                t = time.monotonic()
                if not _valid_frame(frame):
                    self.metrics.record_corrupt()
                    corrupt_run += 1
                    log.warning("%s: empty/corrupt frame skipped%s", self.raw.description, f" ({path})" if path else "")
                    if self.raw.live and corrupt_run >= self.max_consecutive_corrupt:
                        corrupt_run = 0
                        if not self._reconnect(f"{self.max_consecutive_corrupt} corrupt frames in a row"):
                            return
                    continue
                corrupt_run = 0
                frame = _to_bgr(frame)
                if self.roi is not None:
                    frame = self.roi.apply(frame)
                yield Frame(index=self._index, bgr=frame, t_capture=t, path=path)
                self._index += 1
        finally:
            self.raw.close()


class LatestFrame:
    """Run a frame iterator in a thread and hand out only the newest frame (counting drops).

    Iterating yields ``Frame`` objects, or ``None`` every ``tick`` seconds without a new frame
    so the consumer can check for stop requests and feed the watchdog while a camera reconnects.
    """

    def __init__(self, frames: ResilientSource, metrics: RuntimeMetrics, tick: float = 0.5) -> None:
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

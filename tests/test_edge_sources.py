"""edge.sources: image lists, video files, ROI, corrupt frames, reconnects, open timeout, latest-frame drops."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.counters import RuntimeCounters
from edge.sources import (
    EndOfInput,
    LatestFrame,
    OpenCvSource,
    RawSource,
    ResilientSource,
    Roi,
    SourceError,
    SourceFailure,
    SourceOpenError,
    make_raw_source,
)


class FakeLive(RawSource):
    """A live source scripted per read: an int frame value, "corrupt", "fail" or "end"."""

    live = True
    description = "fake camera"

    def __init__(self, script: list, open_failures: int = 0, reopen_failures: int = 0) -> None:
        self.script, self.pos = list(script), 0
        self.open_failures, self.reopen_failures = open_failures, reopen_failures
        self.opens = self.closes = 0

    def open(self) -> None:
        if self.open_failures > 0:
            self.open_failures -= 1
            raise SourceOpenError("fake camera: cannot open")
        if self.opens and self.reopen_failures > 0:
            self.reopen_failures -= 1
            raise SourceOpenError("fake camera: still unplugged")
        self.opens += 1

    def read(self):
        if self.pos >= len(self.script):
            raise EndOfInput()
        item = self.script[self.pos]
        self.pos += 1
        if item == "fail":
            raise SourceFailure("fake camera: read failed")
        if item == "oserror":
            raise OSError("device disappeared")
        if item == "end":
            raise EndOfInput()
        if item == "corrupt":
            return np.zeros((0, 0, 3), np.uint8), None
        return np.full((4, 6, 3), item, np.uint8), None

    def close(self) -> None:
        self.closes += 1


class FakeClock:
    def __init__(self) -> None:
        self.t, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def _values(frames) -> list[int]:
    return [int(f.bgr[0, 0, 0]) for f in frames]


def test_stream_dies_and_comes_back() -> None:
    # Fails twice (a read error and an OS error), ends unexpectedly once, is unplugged for 3 reopen attempts.
    raw = FakeLive([1, 2, "fail", 3, "oserror", 4, "end", 5, 6], reopen_failures=3)
    # Exhausting the script raises EndOfInput → a live source keeps reconnecting; stop it after frame 6.
    metrics, clock = RuntimeCounters(), FakeClock()
    src = ResilientSource(raw, metrics=metrics, sleep=clock.sleep, clock=clock, backoff_initial=0.5, backoff_max=2.0)
    got = []
    for f in src:
        got.append(f)
        if len(got) == 6:
            src.halt()
    assert _values(got) == [1, 2, 3, 4, 5, 6]
    assert [f.index for f in got] == list(range(6))
    assert metrics.reconnects == 3
    # Backoff after the first failed reopen doubles and is capped: 0.5, 1, 2 (one reconnect needed 3 tries).
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert raw.closes == raw.opens == 4


def test_corrupt_frames_are_counted_not_fatal_and_too_many_reconnect() -> None:
    metrics = RuntimeCounters()
    raw = FakeLive([1, "corrupt", 2, "corrupt", "corrupt", "corrupt", 3])
    src = ResilientSource(raw, metrics=metrics, max_consecutive_corrupt=3, sleep=lambda s: None)
    got = []
    for f in src:
        got.append(f)
        if len(got) == 3:
            src.halt()
    assert _values(got) == [1, 2, 3]
    assert metrics.corrupt == 4 and metrics.reconnects == 1


def test_camera_that_never_opens_gives_a_clear_error() -> None:
    clock = FakeClock()
    raw = FakeLive([1], open_failures=100)
    src = ResilientSource(raw, open_timeout=5.0, backoff_initial=0.5, sleep=clock.sleep, clock=clock)
    with pytest.raises(SourceOpenError, match=r"fake camera: could not be opened after \d+ attempt.*--open-timeout 5"):
        list(src)
    assert sum(clock.sleeps) <= 5.0 and len(clock.sleeps) >= 3


def test_real_missing_camera_fails_within_timeout() -> None:
    # VideoCapture of a device index that cannot exist; bounded by --open-timeout.
    src = ResilientSource(OpenCvSource(97, live=True), open_timeout=0.3, backoff_initial=0.1)
    t = time.monotonic()
    with pytest.raises(SourceOpenError, match="camera 97"):
        next(iter(src))
    assert time.monotonic() - t < 5


def _write_images(d: Path, names: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        cv2.imwrite(str(d / n), np.full((8, 10, 3), 10 * (i + 1), np.uint8))


def test_image_directory_and_glob_sorted_with_paths(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", ["b.png", "a.png", "c.jpg"])
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG garbage")
    metrics = RuntimeCounters()
    frames = list(ResilientSource(make_raw_source(source=str(tmp_path / "imgs")), metrics=metrics))
    assert [Path(f.path).name for f in frames] == ["a.png", "b.png", "c.jpg"]
    assert metrics.corrupt == 1 and metrics.reconnects == 0
    frames = list(ResilientSource(make_raw_source(source=str(tmp_path / "imgs" / "*.png"))))
    assert [Path(f.path).name for f in frames] == ["a.png", "b.png"]


def test_video_file_end_is_end_of_input_and_roi_crops(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(7):
        w.write(np.full((24, 32, 3), 30 * i, np.uint8))
    w.release()
    metrics = RuntimeCounters()
    raw = make_raw_source(source=str(path))
    assert not raw.live
    frames = list(ResilientSource(raw, metrics=metrics, roi=Roi.parse("2,4,16,8")))
    assert len(frames) == 7 and metrics.reconnects == 0
    assert frames[0].bgr.shape == (8, 16, 3)


def test_roi_and_source_option_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="--roi"):
        Roi.parse("1,2,3")
    with pytest.raises(SourceError, match="outside"):
        Roi.parse("0,0,100,100").apply(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(SourceError, match="exactly one"):
        make_raw_source(camera=0, source="x")
    with pytest.raises(SourceError, match="no such file"):
        make_raw_source(source=str(tmp_path / "missing.avi"))
    with pytest.raises(SourceError, match="glob matches no files"):
        make_raw_source(source=str(tmp_path / "*.png"))
    assert make_raw_source(source="rtsp://127.0.0.1:1/x").live


def test_latest_frame_drops_stale_frames() -> None:
    """A fast producer with a slow consumer: only the newest frame is handed out, drops are counted."""
    metrics = RuntimeCounters()
    n = 50

    class Burst(RawSource):
        live = False
        description = "burst"

        def __init__(self) -> None:
            self.i = 0

        def open(self) -> None:
            pass

        def read(self):
            if self.i >= n:
                raise EndOfInput()
            self.i += 1
            return np.full((2, 2, 3), self.i % 256, np.uint8), None

    gate = threading.Event()
    src = ResilientSource(Burst(), metrics=metrics)
    grab = LatestFrame(src, metrics, tick=0.05)
    got = []
    for f in grab:
        if f is None:
            continue
        got.append(f.index)
        if len(got) == 1:
            gate.wait(0.3)  # consumer stalls: the producer runs ahead
    assert got[-1] == n - 1  # the newest frame is always delivered
    assert metrics.dropped == n - len(got) > 0
    assert got == sorted(got)

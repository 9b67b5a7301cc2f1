"""edge.counters (bounded, thread-safe counters), edge.overlay and edge.sdnotify."""
from __future__ import annotations

import threading

import cv2
import numpy as np

from edge.counters import RuntimeCounters
from edge.overlay import encode_jpeg, overlay_heatmap
from edge.sdnotify import SystemdNotifier


def test_latency_window_is_bounded_and_percentiles_match_numpy() -> None:
    m = RuntimeCounters(latency_window=100)
    lat = np.random.default_rng(0).exponential(10.0, size=1000)
    for v in lat:
        m.record_frame(float(v), score=0.1, alarm_active=False)
    snap = m.snapshot()
    assert snap["frames"] == 1000
    assert len(m._latencies_ms) == 100 and len(m._frame_times) == 100  # memory stays flat
    tail = lat[-100:]
    assert snap["latency_ms"]["p50"] == np.percentile(tail, 50)
    assert snap["latency_ms"]["p99"] == np.percentile(tail, 99)
    assert snap["latency_ms"]["max"] == tail.max()
    assert snap["fps"] is not None and snap["fps"] > 0


def test_counters_are_thread_safe() -> None:
    m = RuntimeCounters()

    def work() -> None:
        for _ in range(2000):
            m.record_corrupt()
            m.record_dropped()
            m.record_frame(1.0, 0.0, False)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = m.snapshot()
    assert snap["corrupt"] == snap["dropped"] == snap["frames"] == 8000


def test_latest_jpeg_keeps_only_the_newest() -> None:
    m = RuntimeCounters()
    assert m.latest_jpeg() is None
    m.set_latest_jpeg(b"a")
    m.set_latest_jpeg(b"b")
    assert m.latest_jpeg() == b"b" and m.snapshot()["latest_jpeg_time"] is not None


def test_overlay_marks_the_anomalous_region() -> None:
    frame = np.full((60, 80, 3), 128, np.uint8)
    amap = np.zeros((16, 16), np.float32)
    amap[8:12, 8:12] = 2.0  # right-centre block, far above the threshold
    out = overlay_heatmap(frame, amap[None, None], threshold=0.5, score=2.0)
    assert out.shape == frame.shape and out.dtype == np.uint8
    hot = out[38:42, 42:58].astype(int)   # inside the block after resizing 16→60×80
    cold = out[50:58, 5:15].astype(int)  # bottom-left: away from the block and the score label
    # JET: high values are red (BGR channel 2), low values blue (channel 0).
    assert hot[..., 2].mean() > hot[..., 0].mean() + 50
    assert cold[..., 0].mean() > cold[..., 2].mean() + 20
    jpg = encode_jpeg(out)
    assert cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR).shape == frame.shape


def test_sdnotify_is_a_noop_without_socket_and_parses_watchdog() -> None:
    n = SystemdNotifier({})
    assert not n.enabled and n.notify("READY=1") is False
    n = SystemdNotifier({"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert n.address == "\0abstract" and n.watchdog_interval is None  # the watchdog is for another pid
    n = SystemdNotifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000"})
    assert n.watchdog_interval == 2.0

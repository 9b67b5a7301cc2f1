"""Serve the edge-run live view (GET / of the status endpoint) with synthetic data, for UI work.

    python tests/manual/liveview_demo.py                       # http://127.0.0.1:9811/ until Ctrl-C
    python tests/manual/liveview_demo.py --screenshot /tmp/liveview.png   # + headless Chromium, then exit

The real StatusServer with a RuntimeCounters fed like the frame loop would: a synthetic part with a
heat-map overlay, five minutes of score history with two alarms, sink counters.  Not a pytest test.
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.counters import RuntimeCounters  # noqa: E402
from edge.overlay import encode_jpeg, overlay_heatmap  # noqa: E402
from edge.status import StatusServer  # noqa: E402

THRESHOLD = 0.42


class DemoSink:
    def __init__(self, name: str, stats: dict) -> None:
        self.name, self._stats = name, stats

    def stats(self) -> dict:
        return dict(self._stats)


def part_image(defect: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A grey bottle-cap-like part on a belt (BGR 640x480) and its 32x32 anomaly map."""
    img = np.full((480, 640, 3), 60, np.uint8)
    img[:] = (img + rng.integers(0, 12, img.shape)).astype(np.uint8)
    cv2.circle(img, (320, 240), 170, (150, 150, 155), -1)
    cv2.circle(img, (320, 240), 120, (175, 175, 180), 6)
    amap = rng.uniform(0.0, 0.15, (32, 32)).astype(np.float32)
    if defect:
        cv2.line(img, (380, 170), (430, 250), (40, 40, 45), 7)
        amap[10:17, 19:23] = 0.9
    return img, cv2.GaussianBlur(amap, (5, 5), 0)


def feed(server: StatusServer, metrics: RuntimeCounters) -> None:
    rng = np.random.default_rng(0)
    now = time.time()
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    for i in range(300 * 10):  # 5 min at 10 fps
        t = now - 300 + i / 10
        base = 0.12 + 0.03 * math.sin(i / 40) + rng.normal(0, 0.015)
        spike = 0.35 * math.exp(-((i - 1400) / 12) ** 2) + 0.5 * math.exp(-((i - 2700) / 8) ** 2)
        server.live.add_score(max(0.0, base + spike), now=t)
    for i, frame in ((1392, 1392), (2694, 2694)):
        img, amap = part_image(True, rng)
        jpeg = encode_jpeg(overlay_heatmap(img, amap[None, None], THRESHOLD, 0.61))
        t = now - 300 + i / 10
        server.live.add_alarm({"event": "raise", "time": iso(t), "frame": frame, "score": 0.61,
                               "threshold": THRESHOLD, "path": None}, jpeg)
        if i == 1392:
            server.live.add_alarm({"event": "clear", "time": iso(t + 2.1), "frame": frame + 21, "score": 0.13,
                                   "threshold": THRESHOLD, "path": None})
    for _ in range(60):
        metrics.record_frame(float(rng.uniform(18, 31)), 0.58, alarm_active=True)
        time.sleep(0.002)
    for _ in range(2):
        metrics.record_alarm()
    metrics.record_dropped(37)
    metrics.record_reconnect()
    metrics.record_stall()
    metrics.record_frame(22.0, 0.58, alarm_active=True)
    metrics.set_info(source="rtsp://***@10.0.0.64:554/stream1", model="/var/lib/dcam-edge/models/dcam.int8.onnx",
                     engine="onnxruntime", threshold=THRESHOLD)
    img, amap = part_image(True, rng)
    metrics.set_latest_jpeg(encode_jpeg(overlay_heatmap(img, amap[None, None], THRESHOLD, 0.58)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=9811)
    ap.add_argument("--screenshot", metavar="PNG", help="take a headless Chromium screenshot and exit")
    ap.add_argument("--window-size", default="1200,900")
    ap.add_argument("--empty", action="store_true", help="no data yet (the page right after start-up)")
    args = ap.parse_args()
    metrics = RuntimeCounters()
    sinks = [DemoSink("log", {"handled": 2, "dropped": 0, "failed": 0, "backlog": 0}),
             DemoSink("snapshot", {"handled": 2, "dropped": 0, "failed": 0, "backlog": 0}),
             DemoSink("webhook", {"handled": 1, "dropped": 0, "failed": 4, "backlog": 1, "queued": 2, "delivered": 1})]
    server = StatusServer(metrics, port=args.port, sinks=sinks)
    if not args.empty:
        feed(server, metrics)
    with server:
        url = server.url + "/"
        if not args.screenshot:
            print(f"live view: {url} (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                return 0
        browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
        if browser is None:
            print("no chromium found (apt-get install chromium)", file=sys.stderr)
            return 2
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size={args.window_size}", "--virtual-time-budget=4000",
               f"--screenshot={args.screenshot}", url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or not Path(args.screenshot).is_file():
            print(r.stderr[-2000:], file=sys.stderr)
            return 1
        print(f"screenshot: {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

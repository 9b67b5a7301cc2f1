"""Live view of the status endpoint: GET / is one self-contained HTML page; /live.json and
/trace.json are bounded; alarm snapshots are served from memory; the runner feeds it.  127.0.0.1 only."""
from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_edge_runtime import _images, make_tiny_onnx, write_tiny_manifest

import edge.publisher as publisher
import edge.runner as runner
from edge.config import DecisionConfig, RunConfig, SourceConfig
from edge.counters import RuntimeCounters
from edge.liveview import MAX_ALARMS, LiveView
from edge.status import StatusServer


def request(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def _jpeg(value: int = 200) -> bytes:
    return cv2.imencode(".jpg", np.full((30, 40, 3), value, np.uint8))[1].tobytes()


class FakeSink:
    """Counters with keys the page does not know in advance (rendered generically)."""

    name = "webhook"

    def stats(self):
        return {"queued": 5, "delivered": 3, "failed": 1, "backlog": 2, "rejected": 0}


def test_root_is_a_self_contained_html_page() -> None:
    with StatusServer(RuntimeCounters()) as server:
        code, headers, body = request(server.url + "/")
        head = request(server.url + "/", "HEAD")
        post = request(server.url + "/", "POST")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    assert html.lstrip().startswith("<!DOCTYPE html>") and "</html>" in html
    assert not re.search(r"https?://", html, re.I)  # no external assets: works without internet
    assert not re.search(r"<(link|iframe)\b|\bsrc=\"(?!/)|@import|url\(", html, re.I)
    assert "/live.json" in html and "/latest.jpg" in html
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    assert len(body) < 64 * 1024
    assert head[0] == 200 and head[2] == b""
    assert post[0] == 501  # read-only: no other methods


def test_trace_json_shape_max_per_bucket_and_bounded() -> None:
    live = LiveView(horizon_s=300.0, bucket_s=0.5)
    t0 = 1_000_000.0
    for i in range(20 * 60 * 30):  # 20 minutes at 30 fps
        live.add_score(0.1 if i % 900 else 5.0, now=t0 + i / 30)  # a one-frame spike every 30 s
    live.add_score(float("nan"), now=t0 + 1200)  # skipped, not a NaN in the JSON
    now = t0 + 1200
    trace = live.trace(now=now)
    assert set(trace) == {"now", "horizon_s", "bucket_s", "points"} and trace["horizon_s"] == 300.0
    pts = trace["points"]
    assert 590 <= len(pts) <= 601  # 5 min of 0.5 s buckets, the older 15 minutes are gone
    assert all(len(p) == 3 for p in pts) and [p[0] for p in pts] == sorted(p[0] for p in pts)
    assert pts[0][0] >= now - 300 and pts[-1][0] <= now
    assert sum(p[1] == 5.0 for p in pts) == 10  # every spike survives the downsampling (bucket maximum)
    assert all(p[2] == 15 for p in pts[1:-1])  # frames per bucket
    assert len(json.dumps(trace, allow_nan=False)) < 32 * 1024


def test_live_json_and_alarm_snapshots(tmp_path: Path) -> None:
    m = RuntimeCounters()
    for i in range(5):
        m.record_frame(12.0, 0.2 * i, alarm_active=i == 4)
    m.record_alarm()
    m.set_info(source="rtsp://admin:s3cret@10.0.0.5/stream", model="dcam.int8.onnx", engine="onnxruntime",
               threshold=0.5)
    m.set_latest_jpeg(_jpeg())
    server = StatusServer(m, sinks=[FakeSink()])
    for i in range(MAX_ALARMS + 3):
        server.live.add_alarm({"event": "raise", "time": f"2026-01-01T00:00:{i:02d}.000Z", "frame": i,
                               "score": 0.9, "threshold": 0.5, "path": None}, _jpeg(10 * i))
    server.live.add_alarm({"event": "clear", "frame": 99, "score": 0.1, "threshold": 0.5})
    server.live.add_score(0.3)
    with server:
        code, headers, body = request(server.url + "/live.json")
        state = json.loads(body)
        alarms = state["recent_alarms"]
        snap = request(server.url + alarms[1]["snapshot"])
        gone = request(server.url + "/alarms/1.jpg")
        trace = json.loads(request(server.url + "/trace.json")[2])
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert "s3cret" not in body.decode() and state["source"] == "rtsp://***@10.0.0.5/stream"
    assert state["frames"] == 5 and state["threshold"] == 0.5 and state["fps"] > 0 and state["alarm_active"]
    assert state["health"]["status"] == "ok" and state["sinks"] == {"webhook": FakeSink().stats()}
    assert len(alarms) == MAX_ALARMS and alarms[0]["event"] == "clear" and alarms[0]["snapshot"] is None
    assert [a["frame"] for a in alarms[1:]] == list(range(MAX_ALARMS + 2, 3, -1))  # newest first
    assert snap[0] == 200 and snap[1]["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(snap[2], np.uint8), cv2.IMREAD_COLOR).shape == (30, 40, 3)
    assert gone[0] == 404  # only the last few snapshots are kept
    assert len(server.live._jpegs) <= MAX_ALARMS
    assert trace["points"] and trace["points"][-1][1] == 0.3


def test_run_feeds_the_live_view(tmp_path: Path, monkeypatch) -> None:
    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    write_tiny_manifest(model, threshold=0.5)
    servers: list[StatusServer] = []

    def start_status(config, metrics, sinks):
        servers.append(StatusServer(metrics, sinks=sinks).start())
        return servers[-1]

    monkeypatch.setattr(publisher, "start_status", start_status)
    d = _images(tmp_path / "imgs", [127, 255, 255, 255, 127, 127, 127, 127, 127, 127])
    cfg = RunConfig(model=str(model), source=SourceConfig(source=str(d)), decision=DecisionConfig(threshold=0.5))
    runner.run(cfg, out=io.StringIO())
    live = servers[0].live
    assert sum(p[2] for p in live.trace()["points"]) == 10
    alarms = live.alarms()
    assert [a["event"] for a in alarms] == ["clear", "raise"]
    raised = live.alarm_jpeg(alarms[1]["id"])
    assert alarms[1]["snapshot"] == f"/alarms/{alarms[1]['id']}.jpg" and raised[:2] == b"\xff\xd8"


def test_liveview_validates_its_bounds() -> None:
    with pytest.raises(ValueError):
        LiveView(horizon_s=0)

"""Alarm sinks: config merging, JSONL, snapshot bounds, the webhook's durable outbox (at least once across
restarts, a late answer → the same id twice, non-blocking handle, old file spool imported), command argv
without a shell, MQTT with a fake client (real-broker tests: test_edge_delivery.py), GPIO with MockFactory.

Only 127.0.0.1 is used; every wait is bounded in time (wait_until) and loops are bounded in count.
"""
from __future__ import annotations

import json
import socket
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import RunConfig, parse_config
from edge.counters import RuntimeCounters
from edge.sinks import DeliveryOptions, SinkConfig, SinkConfigError, build_sinks, close_sinks
from edge.sinks.base import Sink, alarm_id, event_payload
from edge.sinks.command import CommandSink, render_argv
from edge.sinks.mqtt import MqttSink
from edge.sinks.snapshot import SnapshotSink
from edge.status import StatusServer, render_metrics
from tests.conftest import wait_until


def make_event(frame: int, event: str | None = "raise", score: float = 0.9, **extra) -> dict:
    return {"frame": frame, "time": 1_700_000_000.0 + frame, "score": np.float32(score), "threshold": 0.5,
            "alarm": event == "raise", "event": event, "latency_ms": 12.5, "path": f"cam0/{frame}",
            "category": "bottle", "model": "dcam.int8.onnx", **extra}


def parse(argv: list[str], section: dict | None = None) -> SinkConfig:
    return parse_config(RunConfig, argv, data={"sinks": section or {}}).sinks


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment must not intercept the 127.0.0.1 test servers.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# ---- config ----------------------------------------------------------------------------------------

def test_flags_override_file_and_file_overrides_defaults():
    cfg = parse(["--snapshot-max-count", "7", "--no-on-clear", "--command", "notify --score {score:.3f} 'a b'"],
                {"snapshot_dir": "/tmp/x", "snapshot_max_count": 3, "on_clear": True, "mqtt_port": 1884,
                 "webhook_headers": ["X-Token: abc"]})
    assert cfg.snapshot_dir == "/tmp/x"          # from the file
    assert cfg.snapshot_max_count == 7           # flag beats file
    assert cfg.on_clear is False                 # --no-flag beats file's true
    assert cfg.mqtt_port == 1884
    assert cfg.webhook_headers == ("X-Token: abc",)
    assert cfg.command == ("notify", "--score", "{score:.3f}", "a b")
    assert cfg.log_max_mb == SinkConfig().log_max_mb  # untouched default
    assert cfg.enabled() == ["snapshot", "command"]


@pytest.mark.parametrize("section, needle", [
    ({"snapshot_dirr": "x"}, "[sinks] snapshot_dirr: unknown key"),
    ({"mqtt_port": "1883"}, "[sinks] mqtt_port: expected an integer"),
    ({"on_clear": 1}, "[sinks] on_clear: expected true or false"),
    ({"snapshot_max_mb": 0}, "--snapshot-max-mb / [sinks] snapshot_max_mb: expected a size in MB > 0"),
    ({"webhook_url": "ftp://host/x", "webhook_spool_dir": "/tmp/s"}, "--webhook-url"),
    ({"webhook_url": "http://127.0.0.1:9/x"}, "webhook_spool_dir: required"),
    ({"command": ["prog", "{scor}"]}, "unknown placeholder {scor}"),
    ({"webhook_headers": ["no colon"]}, "--webhook-header / [sinks] webhook_headers"),
    ({"mqtt_topic": "a/#"}, "mqtt_topic"),
    ({"mqtt_host": "broker"}, "--mqtt-spool-dir / [sinks] mqtt_spool_dir: required"),
    ({"mqtt_keyfile": "k.pem"}, "--mqtt-keyfile / [sinks] mqtt_keyfile: needs --mqtt-certfile"),
    ({"mqtt_backoff": 100.0}, "--mqtt-backoff-max / [sinks] mqtt_backoff_max"),
])
def test_bad_config_names_the_option(section, needle):
    with pytest.raises(SinkConfigError) as err:
        parse([], section)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_event_payload_is_plain_json_with_stable_id():
    ev = make_event(3, score=0.75)
    ev["latency_ms"] = float("nan")
    payload = event_payload(ev)
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload
    assert payload["score"] == pytest.approx(0.75) and type(payload["score"]) is float
    assert payload["latency_ms"] is None
    assert payload["id"] == alarm_id(make_event(3, score=0.75))       # same event → same id
    assert payload["id"] != alarm_id(make_event(4, score=0.75))


def test_camera_credentials_never_reach_payloads():
    payload = event_payload(make_event(1, source="rtsp://admin:s3cret@10.0.0.5:554/stream1",
                                       path="rtsp://admin:s3cret@10.0.0.5:554/stream1"))
    assert "s3cret" not in json.dumps(payload) and payload["source"] == "rtsp://***@10.0.0.5:554/stream1"
    assert event_payload(make_event(1, source="/dev/video0"))["source"] == "/dev/video0"


# ---- base: never blocks, bounded queue ---------------------------------------------------------------

class _BlockingSink(Sink):
    kind = "blocking"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[int] = []

    def process(self, event, frame_bgr, overlay_bgr):
        self.entered.set()
        self.release.wait(10)
        self.seen.append(event["frame"])


def test_full_queue_drops_and_counts_instead_of_blocking():
    metrics = RuntimeCounters()
    sink = _BlockingSink(queue_size=2, metrics=metrics).start()
    sink.handle(make_event(0))
    assert wait_until(sink.entered.is_set, 5)
    for i in range(1, 5):          # worker is stuck on event 0: two fit in the queue, two are dropped
        sink.handle(make_event(i))
    sink.handle(make_event(9, event=None))   # not an alarm: ignored, not counted
    assert sink.stats()["dropped"] == 2 and metrics.snapshot()["sink_errors"] == 2
    sink.release.set()
    sink.close(5)
    assert sink.seen == [0, 1, 2]


# ---- log / JSONL -------------------------------------------------------------------------------------

def test_jsonl_logs_alarms_or_every_frame(tmp_path):
    events = [make_event(0, None), make_event(1), make_event(2, None), make_event(3, "clear")]
    for all_frames, on_clear, expected in ((False, False, [1]), (False, True, [1, 3]), (True, False, [0, 1, 2, 3])):
        path = tmp_path / f"log-{all_frames}-{on_clear}" / "alarms.jsonl"
        sinks = build_sinks(SinkConfig(log_path=str(path), log_all_frames=all_frames, on_clear=on_clear))
        for ev in events:
            sinks[0].handle(ev, None, None)
        close_sinks(sinks, 5)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [line["frame"] for line in lines] == expected
        assert all(line["id"] == alarm_id(events[line["frame"]]) for line in lines)


def test_jsonl_rotates_at_size_limit(tmp_path):
    path = tmp_path / "a.jsonl"
    sinks = build_sinks(SinkConfig(log_path=str(path), log_all_frames=True, log_max_mb=2000 / 2 ** 20))
    for i in range(40):
        sinks[0].handle(make_event(i, None))
    close_sinks(sinks, 5)
    rotated = Path(str(path) + ".1")
    assert rotated.exists() and rotated.stat().st_size >= 2000
    frames = [json.loads(x)["frame"] for x in rotated.read_text().splitlines() + path.read_text().splitlines()]
    assert frames == sorted(frames) and frames[-1] == 39 and len(frames) < 40  # older rotations are gone


# ---- snapshots ---------------------------------------------------------------------------------------

def _noise(seed: int) -> np.ndarray:
    # Random pixels do not compress: every PNG has (almost) the same size.
    return np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)


def _snapshot_groups(directory: Path) -> dict[str, int]:
    """Alarm key → total bytes, computed from the directory listing (independent of the sink)."""
    groups: dict[str, int] = {}
    for p in directory.iterdir():
        if p.is_file() and not p.name.startswith(".") and p.name != "keep.txt":
            groups[p.name.split(".")[0]] = groups.get(p.name.split(".")[0], 0) + p.stat().st_size
    return groups


def test_snapshot_count_bound_deletes_oldest_and_survives_restart(tmp_path):
    d = tmp_path / "snaps"
    d.mkdir()
    (d / "keep.txt").write_text("not ours")
    sinks = build_sinks(SinkConfig(snapshot_dir=str(d), snapshot_max_count=3, snapshot_format="png"))
    for i in range(5):
        sinks[0].handle(make_event(i), _noise(i), _noise(100 + i))
    sinks[0].handle(make_event(99, None), _noise(99), _noise(99))  # not an alarm
    close_sinks(sinks, 10)
    groups = sorted(_snapshot_groups(d))
    assert [int(k.split("_f")[1].split("_")[0]) for k in groups] == [2, 3, 4]
    newest = groups[-1]
    assert np.array_equal(cv2.imread(str(d / f"{newest}.orig.png")), _noise(4))
    assert np.array_equal(cv2.imread(str(d / f"{newest}.overlay.png")), _noise(104))
    assert json.loads((d / f"{newest}.json").read_text())["frame"] == 4
    # A new process counts what is already there: one more alarm evicts frame 2.
    sink = SnapshotSink(str(d), max_count=3, fmt="png").start()
    sink.handle(make_event(5), _noise(5), _noise(105))
    sink.close(10)
    assert [int(k.split("_f")[1].split("_")[0]) for k in sorted(_snapshot_groups(d))] == [3, 4, 5]
    assert (d / "keep.txt").read_text() == "not ours"
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_snapshot_size_bound_deletes_oldest(tmp_path):
    probe = tmp_path / "probe"
    sink = SnapshotSink(str(probe), fmt="png").start()
    sink.handle(make_event(0), _noise(0), _noise(1))
    sink.close(10)
    one = sum(_snapshot_groups(probe).values())
    limit_mb = 2.5 * one / 2 ** 20   # room for two alarms, not three
    d = tmp_path / "snaps"
    sinks = build_sinks(SinkConfig(snapshot_dir=str(d), snapshot_max_mb=limit_mb, snapshot_max_count=100,
                                   snapshot_format="png"))
    for i in range(6):
        sinks[0].handle(make_event(i), _noise(10 + i), _noise(20 + i))
    close_sinks(sinks, 10)
    groups = _snapshot_groups(d)
    assert sum(groups.values()) <= limit_mb * 2 ** 20
    assert [int(k.split("_f")[1].split("_")[0]) for k in sorted(groups)] == [4, 5]


# ---- webhook -----------------------------------------------------------------------------------------

class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POST; mode 'ok' | 'hang' | 'reject-frame-N' | 'late-first'
    ('late-first': takes the first request of each id, answers it only after `late_s`, too late for the client)."""

    def __init__(self, port: int = 0, mode: str = "ok") -> None:
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.mode = mode
        self.entered = threading.Event()
        self.release = threading.Event()
        self.late_s = 1.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.mode == "hang":
                    receiver.entered.set()
                    receiver.release.wait(10)
                if receiver.mode.startswith("reject-frame-") and body["frame"] == int(receiver.mode.split("-")[-1]):
                    self.send_response(400)
                    self.end_headers()
                    return
                if receiver.mode == "late-first" and body["id"] not in [b["id"] for b in receiver.received]:
                    receiver.received.append(body)  # accepted (e.g. written to the MES database) ...
                    receiver.headers.append(dict(self.headers))
                    receiver.release.wait(receiver.late_s)  # ... but the answer comes after the client's timeout
                    try:
                        self.send_response(200)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    except OSError:
                        pass
                    return
                receiver.received.append(body)
                receiver.headers.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alarm"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _webhook_config(url: str, spool: Path, **kw) -> SinkConfig:
    return SinkConfig(webhook_url=url, webhook=DeliveryOptions(spool_dir=str(spool), timeout=kw.pop("timeout", 2.0),
                                                               backoff=0.02, backoff_max=0.1), **kw)


def outbox(spool: Path, sink: str = "webhook", state: str = "pending") -> list[dict]:
    """Payloads of one sink's rows in the outbox database, oldest first (read with sqlite3, not the sink)."""
    db = spool / "outbox.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT payload FROM outbox WHERE sink = ? AND state = ? ORDER BY seq",
                           (sink, state)).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def spooled(spool: Path) -> list[int]:
    """Frames of the webhook alarms still waiting in the outbox."""
    return [p["frame"] for p in outbox(spool)]


def test_webhook_down_then_up_delivers_every_alarm_across_restart(tmp_path):
    port = free_port()  # nothing listens here yet: connection refused
    spool = tmp_path / "spool"
    url = f"http://127.0.0.1:{port}/alarm"
    first = build_sinks(_webhook_config(url, spool))
    for i in range(3):
        first[0].handle(make_event(i))
        first[0].handle(make_event(100 + i, None))      # plain frames are not sent
    first[0].handle(make_event(50, "clear"))            # on_clear is off
    assert wait_until(lambda: len(spooled(spool)) == 3, 10)
    close_sinks(first, 2)                               # "process stops" with 3 undelivered alarms
    assert len(spooled(spool)) == 3

    second = build_sinks(_webhook_config(url, spool))   # "restart" on the same spool
    for i in range(3, 5):
        second[0].handle(make_event(i))
    assert wait_until(lambda: len(spooled(spool)) == 5, 10)
    receiver = Receiver(port)                           # endpoint comes back
    try:
        assert wait_until(lambda: len(receiver.received) >= 5 and not spooled(spool), 15)
        close_sinks(second, 5)
        time.sleep(0.05)
    finally:
        receiver.stop()
    frames = [body["frame"] for body in receiver.received]
    assert frames == [0, 1, 2, 3, 4]                    # each once, in order
    ids = [body["id"] for body in receiver.received]
    assert ids == [alarm_id(make_event(i)) for i in range(5)] and len(set(ids)) == 5
    assert [h["Idempotency-Key"] for h in receiver.headers] == ids
    assert all(body["host"] == socket.gethostname() and body["event"] == "raise" for body in receiver.received)
    stats = second[0].stats()
    assert spooled(spool) == [] and stats["delivered"] == stats["handled"] == 5
    assert (stats["queued"], stats["backlog"]) == (2, 0)
    assert first[0].stats()["queued"] == 3 and first[0].stats()["delivered"] == 0
    assert first[0].stats()["failed"] >= 1  # refused connections are failed attempts, not "handled"
    text = render_metrics(RuntimeCounters().snapshot(), {"webhook": stats})
    assert 'dcam_edge_sink_delivered_total{sink="webhook"} 5' in text
    assert 'dcam_edge_sink_queued_total{sink="webhook"} 2' in text
    assert 'dcam_edge_sink_handled_total{sink="webhook"} 5' in text
    with StatusServer(RuntimeCounters(), sinks=second) as server:
        import urllib.request
        with urllib.request.urlopen(server.url + "/status", timeout=5) as response:
            status = json.loads(response.read())
    assert status["sinks"]["webhook"]["delivered"] == 5 and status["sinks"]["webhook"]["backlog"] == 0


def test_webhook_late_answer_is_retried_and_arrives_twice_with_the_same_id(tmp_path):
    """At least once, not exactly once: the receiver must deduplicate on `id` / Idempotency-Key."""
    receiver = Receiver(mode="late-first")
    spool = tmp_path / "spool"
    receiver.late_s = 1.5
    sinks = build_sinks(_webhook_config(receiver.url, spool, timeout=0.4))
    try:
        sinks[0].handle(make_event(1))
        sinks[0].handle(make_event(2))
        assert wait_until(lambda: sinks[0].stats()["delivered"] == 2, 10)
        close_sinks(sinks, 5)
    finally:
        receiver.stop()
    ids = [b["id"] for b in receiver.received]
    first, second = alarm_id(make_event(1)), alarm_id(make_event(2))
    # Each accepted once too late, then again on the retry (normally exactly [first, first, second, second]).
    assert ids.count(first) >= 2 and ids.count(second) >= 2 and ids[:2] == [first, first]
    assert [h["Idempotency-Key"] for h in receiver.headers] == ids
    assert all(b == receiver.received[0] for b in receiver.received if b["id"] == first)  # the very same alarm
    assert list(dict.fromkeys(ids)) == [first, second]  # deduplicated on id: every alarm once, in order
    stats = sinks[0].stats()
    assert (stats["delivered"], stats["backlog"]) == (2, 0)
    assert stats["failed"] == len(ids) - 2  # every duplicate is a timed-out attempt the sink counted
    assert spooled(spool) == []


def test_webhook_imports_the_old_file_spool(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    for seq, frame in ((7, 0), (8, 1)):  # what dcam-edge <= 0.1 left behind: <seq:012d>.json per alarm
        (spool / f"{seq:012d}.json").write_text(json.dumps({**event_payload(make_event(frame)), "host": "old"}))
    receiver = Receiver()
    sinks = build_sinks(_webhook_config(receiver.url, spool))
    try:
        sinks[0].handle(make_event(2))
        assert wait_until(lambda: len(receiver.received) == 3, 10)
        close_sinks(sinks, 5)
    finally:
        receiver.stop()
    assert [b["frame"] for b in receiver.received] == [0, 1, 2]  # old ones first, in their order
    assert [h["Idempotency-Key"] for h in receiver.headers] == [alarm_id(make_event(i)) for i in range(3)]
    assert not list(spool.glob("*.json")) and spooled(spool) == []


def test_webhook_and_mqtt_share_one_outbox(tmp_path):
    pytest.importorskip("paho.mqtt.client")
    spool = tmp_path / "spool"
    cfg = SinkConfig(webhook_url=f"http://127.0.0.1:{free_port()}/x",
                     webhook=DeliveryOptions(spool_dir=str(spool), backoff=0.05, backoff_max=0.1),
                     mqtt_host="127.0.0.1", mqtt_port=free_port(),
                     mqtt=DeliveryOptions(backoff=0.05, backoff_max=0.1, timeout=1.0))  # nothing listens on either
    sinks = build_sinks(cfg)
    for s in sinks:
        s.handle(make_event(1))
    assert wait_until(lambda: len(outbox(spool, "webhook")) == 1 and len(outbox(spool, "mqtt")) == 1, 10)
    close_sinks(sinks, 2)
    assert [p.name for p in spool.glob("*.sqlite3")] == ["outbox.sqlite3"]  # one database for both
    assert {s.name: s.stats()["backlog"] for s in sinks} == {"webhook": 1, "mqtt": 1}
    assert outbox(spool, "mqtt")[0]["id"] == outbox(spool, "webhook")[0]["id"] == alarm_id(make_event(1))


def test_webhook_handle_never_blocks_while_endpoint_hangs(tmp_path):
    receiver = Receiver(mode="hang")
    spool = tmp_path / "spool"
    sinks = build_sinks(_webhook_config(receiver.url, spool, timeout=8.0))
    try:
        sinks[0].handle(make_event(0))
        assert wait_until(receiver.entered.is_set, 10)   # sender is now stuck in the HTTP request
        durations = []
        for i in range(1, 20):
            t0 = time.perf_counter()
            sinks[0].handle(make_event(i), np.zeros((480, 640, 3), np.uint8), None)
            durations.append(time.perf_counter() - t0)
        # We got here while the request is still hanging: handle() did not wait for the network.
        assert not receiver.release.is_set() and receiver.received == []
        assert max(durations) < 0.5  # generous: a queue put, not an HTTP round trip
        assert wait_until(lambda: len(spooled(spool)) == 20, 10)  # persisted meanwhile
        receiver.release.set()
        assert wait_until(lambda: len(receiver.received) == 20, 15)
        close_sinks(sinks, 5)
    finally:
        receiver.stop()
    assert [b["frame"] for b in receiver.received] == list(range(20))


def test_webhook_permanent_rejection_is_quarantined_not_retried(tmp_path):
    receiver = Receiver(mode="reject-frame-1")
    spool = tmp_path / "spool"
    sinks = build_sinks(_webhook_config(receiver.url, spool))
    try:
        for i in range(3):
            sinks[0].handle(make_event(i))
        assert wait_until(lambda: len(receiver.received) == 2, 10)
        close_sinks(sinks, 5)
    finally:
        receiver.stop()
    assert [b["frame"] for b in receiver.received] == [0, 2]
    assert [p["frame"] for p in outbox(spool, state="rejected")] == [1]  # kept for inspection, not resent
    stats = sinks[0].stats()
    assert (stats["delivered"], stats["rejected"], stats["failed"], stats["backlog"]) == (2, 1, 1, 0)
    assert spooled(spool) == []


def test_webhook_spool_is_locked_to_one_sender(tmp_path):
    cfg = _webhook_config(f"http://127.0.0.1:{free_port()}/x", tmp_path / "spool")
    sinks = build_sinks(cfg)
    try:
        with pytest.raises(SinkConfigError, match="in use by another sender"):
            build_sinks(cfg)
    finally:
        close_sinks(sinks, 2)
    close_sinks(build_sinks(cfg), 2)  # free again once closed


# ---- command -----------------------------------------------------------------------------------------

_ARGV_WRITER = "import json, sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n')"


def test_command_runs_argv_without_shell(tmp_path):
    out = tmp_path / "argv.jsonl"
    canary = tmp_path / "canary"
    canary.mkdir()
    template = [sys.executable, "-c", _ARGV_WRITER, str(out), "{score:.3f}", "{frame}", "{event}",
                f"x; rm -rf {canary}", "{path}", "$(touch {frame}.pwned)", "{{literal}}"]
    cfg = parse([], {"command": template, "command_timeout": 20.0})
    sinks = build_sinks(cfg)
    evil_path = f"img.png; rm -rf {canary} && echo `id`"
    sinks[0].handle(make_event(7, score=0.123456, path=evil_path))
    sinks[0].handle(make_event(8, None))   # not an alarm
    close_sinks(sinks, 20)
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert calls == [["0.123", "7", "raise", f"x; rm -rf {canary}", evil_path, "$(touch 7.pwned)", "{literal}"]]
    assert canary.is_dir() and not list(Path.cwd().glob("*.pwned")) and not list(tmp_path.glob("*.pwned"))


def test_command_failure_and_timeout_are_counted(tmp_path):
    metrics = RuntimeCounters()
    failing = CommandSink((sys.executable, "-c", "import sys; sys.exit(3)"), metrics=metrics).start()
    failing.handle(make_event(1))
    failing.close(20)
    slow = CommandSink((sys.executable, "-c", "import time; time.sleep(30)"), timeout=0.5).start()
    slow.handle(make_event(2))
    slow.close(20)
    assert failing.stats()["failed"] == 1 and metrics.snapshot()["sink_errors"] == 1
    assert slow.stats()["failed"] == 1 and slow.stats()["handled"] == 0


def test_command_config_errors():
    with pytest.raises(SinkConfigError, match="not found"):
        build_sinks(SinkConfig(command=("/nonexistent/notify-alarm", "{score}")))
    assert render_argv(["{score:.2f}", "{category}"], {"event": "raise"}) == ["", ""]  # missing fields → empty


# ---- MQTT (fake paho client, no broker) ----------------------------------------------------------------

class FakeMqttClient:
    def __init__(self):
        self.calls: list[tuple] = []
        self.published: list[tuple] = []

    def __getattr__(self, name):
        if name.startswith("on_") or name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: self.calls.append((name, a, k))

    def connect(self, host, port, keepalive):
        self.calls.append(("connect", (host, port, keepalive), {}))
        self.on_connect(self, None, {}, 0, None)  # CONNACK accepted

    def loop(self, timeout=1.0):
        return 0

    def publish(self, topic, payload, qos=0, retain=False):
        self.published.append((topic, json.loads(payload), qos, retain))
        return type("Info", (), {"rc": 0, "is_published": lambda self: True})()  # PUBACK at once


def test_mqtt_publishes_alarm_json_with_injected_client(monkeypatch, tmp_path):
    monkeypatch.setenv("DCAM_MQTT_PASSWORD", "s3cret")
    client = FakeMqttClient()
    cfg = parse(["--mqtt-host", "broker.local", "--mqtt-topic", "line3/cam1/alarm", "--mqtt-qos", "2",
                 "--mqtt-retain", "--mqtt-username", "edge", "--mqtt-spool-dir", str(tmp_path / "outbox")])
    sink = MqttSink.from_config(cfg, client_factory=lambda: client).start()
    sink.handle(make_event(1, score=0.8))
    sink.handle(make_event(2, None))
    sink.handle(make_event(3, "clear"))
    assert wait_until(lambda: sink.stats()["delivered"] == 1, 5)
    sink.close(5)
    assert len(client.published) == 1 and sink.stats()["backlog"] == 0
    topic, payload, qos, retain = client.published[0]
    assert (topic, qos, retain) == ("line3/cam1/alarm", 2, True)
    assert payload["frame"] == 1 and payload["score"] == pytest.approx(0.8)
    assert payload["id"] == alarm_id(make_event(1, score=0.8))
    names = [c[0] for c in client.calls]
    assert ("username_pw_set", ("edge", "s3cret"), {}) in client.calls
    assert ("connect", ("broker.local", 1883, 60), {}) in client.calls
    assert names.index("username_pw_set") < names.index("connect") < names.index("disconnect")


def test_mqtt_without_paho_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)   # import now raises ImportError
    with pytest.raises(SinkConfigError, match=r"pip install 'dcam-edge\[mqtt\]'"):
        build_sinks(SinkConfig(mqtt_host="127.0.0.1", mqtt=DeliveryOptions(spool_dir="/nonexistent/never-created")))


def test_mqtt_real_client_without_broker_does_not_block_and_keeps_the_alarm(tmp_path):
    pytest.importorskip("paho.mqtt.client")
    sinks = build_sinks(SinkConfig(mqtt_host="127.0.0.1", mqtt_port=free_port(),  # nothing listens
                                   mqtt=DeliveryOptions(spool_dir=str(tmp_path / "outbox"), backoff=0.05,
                                                        backoff_max=0.1, timeout=10.0)))
    t0 = time.perf_counter()
    sinks[0].handle(make_event(1))
    assert time.perf_counter() - t0 < 0.5
    assert wait_until(lambda: sinks[0].stats()["failed"] >= 1, 10)
    close_sinks(sinks, 2)
    stats = sinks[0].stats()
    assert (stats["queued"], stats["delivered"], stats["handled"], stats["backlog"]) == (1, 0, 0, 1)
    assert [p["frame"] for p in outbox(tmp_path / "outbox", "mqtt")] == [1]  # in the outbox, not in memory


# ---- GPIO (gpiozero MockFactory) ------------------------------------------------------------------------

def test_gpio_pulse_and_hold_with_mock_pins():
    pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    from edge.sinks.gpio import GpioSink

    factory = MockFactory()
    pulse = GpioSink.from_config(SinkConfig(gpio_pin=17, gpio_pulse_s=0.05), pin_factory=factory).start()
    pulse.handle(make_event(1))
    pin = pulse.device.pin
    assert wait_until(lambda: [s.state for s in pin.states] == [False, True, False], 5)
    pulse.close(2)

    hold = GpioSink.from_config(SinkConfig(gpio_pin=27, gpio_mode="hold", gpio_active_high=False),
                                pin_factory=factory).start()
    pin = hold.device.pin
    assert pin.state is True                      # active-low: off = high
    hold.handle(make_event(1))
    assert wait_until(lambda: hold.device.value == 1 and pin.state is False, 5)
    hold.handle(make_event(2, "clear"))           # consumed in hold mode although on_clear is off
    assert wait_until(lambda: hold.device.value == 0 and pin.state is True, 5)
    hold.handle(make_event(3))
    assert wait_until(lambda: hold.device.value == 1, 5)
    hold.close(2)                                 # stopping releases the output
    assert pin.state is True
    hold.close(2)                                 # closing twice is harmless


def test_gpio_off_pi_gives_clear_error(monkeypatch):
    pytest.importorskip("gpiozero")
    if "raspberry" in Path("/proc/device-tree/model").read_text(errors="ignore").lower() \
            if Path("/proc/device-tree/model").exists() else False:
        pytest.skip("real Raspberry Pi")
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    with pytest.raises(SinkConfigError, match="needs a Raspberry Pi"):
        build_sinks(SinkConfig(gpio_pin=17))


# ---- several sinks at once ----------------------------------------------------------------------------

def test_all_sinks_see_the_same_alarm_id(tmp_path):
    receiver = Receiver()
    cfg = parse(["--log-path", str(tmp_path / "alarms.jsonl"), "--snapshot-dir", str(tmp_path / "snaps"),
                 "--webhook-url", receiver.url, "--webhook-spool-dir", str(tmp_path / "spool"),
                 "--command", f"{sys.executable} -c \"{_ARGV_WRITER}\" {tmp_path / 'argv.jsonl'} {{id}}"])
    sinks = build_sinks(cfg)
    try:
        assert [s.name for s in sinks] == ["log", "snapshot", "webhook", "command"]
        frame = np.full((32, 32, 3), 127, np.uint8)
        for s in sinks:
            s.handle(make_event(5), frame, frame)
        assert wait_until(lambda: len(receiver.received) == 1, 10)
        close_sinks(sinks, 20)
    finally:
        receiver.stop()
    expected = alarm_id(make_event(5))
    assert json.loads((tmp_path / "alarms.jsonl").read_text())["id"] == expected
    assert json.loads(next((tmp_path / "snaps").glob("*.json")).read_text())["id"] == expected
    assert receiver.received[0]["id"] == expected
    assert json.loads((tmp_path / "argv.jsonl").read_text()) == [expected]

"""Status endpoint: /metrics parsed as Prometheus text and checked against RuntimeCounters inputs,
/healthz 200/503, /latest.jpg decodes; config merging.  Only 127.0.0.1, every request has a timeout."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import RunConfig, parse_config
from edge.counters import RuntimeCounters
from edge.status import PROMETHEUS_CONTENT_TYPE, StatusConfig, StatusError, StatusServer, health, render_metrics

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def parse_prometheus(text: str) -> tuple[dict[tuple[str, frozenset], float], dict[str, str]]:
    """Strict-enough parser of text format 0.0.4: samples by (name, labels) and family types.

    Checks: every line is HELP, TYPE or a sample; one HELP and one TYPE per family, both before its
    samples; every sample belongs to a declared family; counters end in _total.
    """
    samples: dict[tuple[str, frozenset], float] = {}
    types: dict[str, str] = {}
    helps: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helps, f"duplicate HELP for {name}"
            assert len(line.split(" ", 3)) == 4 and line.split(" ", 3)[3].strip()
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types and name in helps, f"TYPE for {name} duplicated or before its HELP"
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped")
            if kind == "counter":
                assert name.endswith("_total")
            types[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.groups()
            assert name in types, f"sample {name} without a # TYPE line"
            label_set = frozenset(_LABEL.findall(labels or ""))
            assert (name, label_set) not in samples
            samples[(name, label_set)] = float(value)
    return samples, types


def value(samples, name, **labels) -> float:
    return samples[("dcam_edge_" + name, frozenset(labels.items()))]


@pytest.fixture
def fed_metrics() -> tuple[RuntimeCounters, list[float], np.ndarray]:
    m = RuntimeCounters(latency_window=50)
    latencies = [float(x) for x in np.random.default_rng(0).uniform(5, 80, 70)]  # more than the window
    for i, lat in enumerate(latencies):
        m.record_frame(lat, score=0.01 * i, alarm_active=i == len(latencies) - 1)
    m.record_dropped(3)
    m.record_corrupt(2)
    for _ in range(4):
        m.record_reconnect()
    for _ in range(5):
        m.record_alarm()
    m.set_info(source='rtsp://cam "1"', model="dcam.int8.onnx", engine="onnxruntime", threshold=0.42,
               device="tensorrt", engine_info={"engine": "onnxruntime", "device": "tensorrt",
                                               "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                             "CPUExecutionProvider"], "precision": "int8"})
    overlay = np.zeros((60, 80, 3), np.uint8)
    overlay[:, 40:] = (0, 0, 255)
    m.set_latest_jpeg(cv2.imencode(".jpg", overlay)[1].tobytes())
    return m, latencies, overlay


def test_metrics_endpoint_matches_fed_runtime_metrics(fed_metrics):
    m, latencies, _ = fed_metrics

    class FakeSink:
        name = "webhook"

        def stats(self):
            return {"handled": 7, "dropped": 1, "failed": 2, "backlog": 3}

    with StatusServer(m, sinks=[FakeSink()]) as server:
        assert server.url.startswith("http://127.0.0.1:")
        code, headers, body = get(server.url + "/metrics")
    assert code == 200 and headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
    samples, types = parse_prometheus(body.decode())
    assert value(samples, "frames_total") == 70
    assert value(samples, "dropped_frames_total") == 3
    assert value(samples, "corrupt_frames_total") == 2
    assert value(samples, "reconnects_total") == 4
    assert value(samples, "alarms_total") == 5
    assert types["dcam_edge_frames_total"] == "counter" and types["dcam_edge_latency_seconds"] == "gauge"
    window = np.asarray(latencies[-50:])  # only the last latency_window frames count
    for q in (0.5, 0.9, 0.99):
        # Independent reference: linear-interpolated percentile of the window, ms → s.
        srt = np.sort(window)
        pos = q * (len(srt) - 1)
        lo, hi = srt[int(math.floor(pos))], srt[int(math.ceil(pos))]
        ref = lo + (hi - lo) * (pos - math.floor(pos))
        assert value(samples, "latency_seconds", quantile=str(q)) == pytest.approx(ref / 1000, rel=1e-9)
    assert value(samples, "latency_max_seconds") == pytest.approx(window.max() / 1000)
    # fps is measured up to "now" (it decays while no frames come), so a later reading is never higher.
    assert value(samples, "fps") > 0 and value(samples, "fps") >= m.fps()
    assert value(samples, "alarm_active") == 1
    assert value(samples, "last_score") == pytest.approx(0.69)
    assert value(samples, "threshold") == pytest.approx(0.42)
    assert 0 <= value(samples, "last_frame_age_seconds") < 60
    assert value(samples, "info", source='rtsp://cam \\"1\\"', model="dcam.int8.onnx", engine="onnxruntime",
                 device="tensorrt") == 1
    assert value(samples, "sink_handled_total", sink="webhook") == 7
    assert value(samples, "sink_failed_total", sink="webhook") == 2
    assert value(samples, "sink_backlog", sink="webhook") == 3


def test_metrics_before_any_frame_are_nan_not_errors():
    samples, _ = parse_prometheus(render_metrics(RuntimeCounters().snapshot()))
    assert value(samples, "frames_total") == 0
    assert math.isnan(value(samples, "fps")) and math.isnan(value(samples, "latency_seconds", quantile="0.99"))


def test_healthz_ok_stalled_and_starting(fed_metrics):
    m, _, _ = fed_metrics
    with StatusServer(m, stall_s=30.0) as server:
        code, headers, body = get(server.url + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok" and json.loads(body)["frames"] == 70
        m.last_frame_time = time.time() - 31.0           # frames stopped 31 s ago
        code, _, body = get(server.url + "/healthz")
        assert code == 503 and json.loads(body)["status"] == "stalled"
        assert json.loads(body)["last_frame_age_s"] >= 31.0
        code, _, body = get(server.url + "/nope")
        assert code == 404
    with StatusServer(RuntimeCounters()) as server:
        code, _, body = get(server.url + "/healthz")
        assert code == 503 and json.loads(body)["status"] == "starting"


def test_health_boundary_is_stall_seconds():
    snap = {"last_frame_time": 1000.0}
    assert health(snap, 10.0, now=1010.0)[0] == 200
    assert health(snap, 10.0, now=1010.5)[0] == 503
    assert health(snap, 10.0, now=990.0)[0] == 200  # clock stepped back: not a stall


def test_latest_jpg_404_then_decodes(fed_metrics):
    m, _, overlay = fed_metrics
    empty = RuntimeCounters()
    with StatusServer(empty) as server:
        assert get(server.url + "/latest.jpg")[0] == 404
        empty.set_latest_jpeg(m.latest_jpeg())
        code, headers, body = get(server.url + "/latest.jpg")
    assert code == 200 and headers["Content-Type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == overlay.shape
    assert np.abs(img.astype(int) - overlay).mean() < 5  # JPEG is lossy, but the red half is red


def test_status_json_and_no_camera_password(fed_metrics):
    m, _, _ = fed_metrics
    m.set_info(source="rtsp://admin:s3cret@10.0.0.5/stream")
    with StatusServer(m) as server:
        code, _, body = get(server.url + "/status")
        metrics_text = get(server.url + "/metrics")[2].decode()
    assert code == 200 and json.loads(body)["reconnects"] == 4
    # The engine info: which device and providers the model really runs on.
    assert json.loads(body)["device"] == "tensorrt"
    assert json.loads(body)["engine_info"]["providers"][0] == "TensorrtExecutionProvider"
    assert json.loads(body)["source"] == "rtsp://***@10.0.0.5/stream"
    assert "s3cret" not in body.decode() and "s3cret" not in metrics_text


def parse_status(argv: list[str], file_section: dict | None) -> StatusConfig:
    return parse_config(RunConfig, argv, data={"status": file_section or {}}).status


def test_status_config_flags_override_file_and_errors():
    cfg = parse_status(["--status-port", "9811"], {"port": 1, "host": "0.0.0.0", "stall_s": 30})
    assert cfg == StatusConfig(port=9811, host="0.0.0.0", stall_s=30.0)
    assert parse_status([], None) == StatusConfig()
    assert StatusServer.from_config(StatusConfig(), RuntimeCounters()) is None  # disabled by default
    with pytest.raises(StatusError, match=r"\[status\] prot: unknown key"):
        parse_status([], {"prot": 1})
    with pytest.raises(StatusError, match="--status-stall-s"):
        StatusConfig(stall_s=0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StatusError, match="cannot listen"):
            StatusServer(RuntimeCounters(), port=busy.getsockname()[1])


# ---- service files (edge/service) ---------------------------------------------------------------------

SERVICE_DIR = Path(__file__).resolve().parents[1] / "edge" / "service"


def _example_toml(uncomment_sinks: bool = False) -> dict:
    tomllib = pytest.importorskip("tomllib")
    text = (SERVICE_DIR / "edge.toml").read_text()
    if uncomment_sinks:  # every documented (commented-out) sink key must be valid too
        head, sinks = text.split("\n[sinks]\n")
        sinks = re.sub(r"^# ([a-z_]+ = )", r"\1", sinks, flags=re.M)
        text = head + "\n[sinks]\n" + sinks
    return tomllib.loads(text)


def test_example_config_is_valid_for_sinks_and_status():
    data = _example_toml()
    sinks = parse_config(RunConfig, [], data={"sinks": data["sinks"]}).sinks
    assert sinks.enabled() == ["log", "snapshot"]
    assert parse_status([], data["status"]) == StatusConfig(9811, "127.0.0.1", 10.0)
    full = parse_config(RunConfig, [], data={"sinks": _example_toml(uncomment_sinks=True)["sinks"]}).sinks
    assert full.enabled() == ["log", "snapshot", "webhook", "mqtt", "gpio", "command"]


def test_example_config_parses_as_edge_run_config():
    config = pytest.importorskip("edge.config")
    cfg = config.parse_config(config.RunConfig, ["--config", str(SERVICE_DIR / "edge.toml"), "--status-port", "9900"],
                              "edge-run", "")
    assert cfg.model.endswith(".onnx") and cfg.status.port == 9900 and cfg.sinks.snapshot_dir


def test_unit_has_watchdog_hardening_and_writable_sink_paths():
    unit = (SERVICE_DIR / "dcam-edge.service").read_text()
    directives: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, val = line.partition("=")
            directives.setdefault(key.strip(), []).append(val.strip())
    for key, expected in {"Type": "notify", "Restart": "on-failure", "User": "dcam", "NoNewPrivileges": "yes",
                          "ProtectSystem": "strict", "SupplementaryGroups": "video gpio"}.items():
        assert directives[key] == [expected], key
    assert int(directives["WatchdogSec"][0]) > 0
    assert directives["ExecStart"][0].endswith("edge-run --config /etc/dcam-edge/edge.toml")
    writable = directives["ReadWritePaths"][0].split()
    data = _example_toml(uncomment_sinks=True)["sinks"]
    for key in ("log_path", "snapshot_dir", "webhook_spool_dir"):  # ProtectSystem=strict: must be writable
        assert any(data[key].startswith(w.rstrip("/") + "/") for w in writable), key


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = (SERVICE_DIR / "dcam-edge.service").read_text()
    unit = re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", unit, flags=re.M)  # the venv is not installed here
    (tmp_path / "dcam-edge.service").write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "dcam-edge.service")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "dcam-edge.service" not in result.stderr, result.stderr


def test_install_script_dry_run(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "PREFIX": str(tmp_path / "opt")}
    result = subprocess.run(["bash", str(SERVICE_DIR / "install.sh"), "dcam-edge[tflite]"], capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"-m venv {tmp_path / 'opt'}/venv" in out and "pip install --upgrade dcam-edge[tflite]" in out
    assert "systemctl daemon-reload" in out and "systemctl enable" in out
    assert "/var/lib/dcam-edge/spool" in out
    assert not (tmp_path / "opt").exists()  # dry run changes nothing

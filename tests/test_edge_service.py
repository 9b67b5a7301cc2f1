"""edge-run as a service: systemd READY=1/STATUS=/WATCHDOG=1, stalls of a
read that hangs (reconnect, /healthz 503, fps decay, watchdog only while the reading loop lives),
engine error messages, install.sh into a temporary root.  Tiny ONNX models, fake sources, short timeouts."""
from __future__ import annotations

import io
import logging
import os
import platform
import re
import stat
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from test_edge_runtime import make_tiny_onnx, write_tiny_manifest

from edge.config import ConfigError, DecisionConfig, RunConfig, SourceConfig, parse_config
from edge.counters import RuntimeCounters
from edge.engines import ARM_INT8_IR_HINT, EngineError, _first_line, load_engine
from edge.runner import run
from edge.sdnotify import SystemdNotifier
from edge.sources import RawSource, ResilientSource, SourceFailure, SourceOpenError
from edge.status import health, render_metrics

SERVICE_DIR = Path(__file__).resolve().parents[1] / "edge" / "service"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = make_tiny_onnx(tmp_path / "tiny.onnx")
    write_tiny_manifest(path, threshold=1.0)
    return path


class FakeNotifier(SystemdNotifier):
    """Records every message with its time; pings the watchdog on every call (no rate limit)."""

    def __init__(self, metrics: RuntimeCounters | None = None) -> None:
        super().__init__({})
        self.metrics = metrics
        self.calls: list[tuple[float, str]] = []
        self.frames_at_ready: int | None = None

    def notify(self, message: str) -> bool:
        if message.startswith("READY=1") and self.metrics is not None:
            self.frames_at_ready = self.metrics.frames
        self.calls.append((time.monotonic(), message))
        return True

    def watchdog(self, now: float | None = None) -> None:
        self.notify("WATCHDOG=1")

    def messages(self) -> list[str]:
        return [m for _, m in self.calls]

    def pings(self) -> list[float]:
        return [t for t, m in self.calls if m == "WATCHDOG=1"]


class FreezingCamera(RawSource):
    """Live camera; the reads numbered in ``freeze_at`` hang like a frozen RTSP stream.

    A hung read returns (raising SourceFailure) when ``release`` is set — by close() if
    ``close_unblocks`` (a driver whose close interrupts a read), else only by the test.
    ``open_failures`` reopen attempts fail after the first open; ``on_open`` runs at every open.
    """

    live = True

    def __init__(self, freeze_at=(), close_unblocks: bool = True, open_failures: int = 0,
                 first_delay: float = 0.0, description: str = "freezing camera") -> None:
        self.freeze_at, self.close_unblocks = set(freeze_at), close_unblocks
        self.open_failures, self.first_delay = open_failures, first_delay
        self.description = description
        self.reads = self.opens = self.closes = 0
        self.release = threading.Event()
        self.on_open = None

    def open(self) -> None:
        if self.on_open is not None:
            self.on_open(self)
        if self.opens and self.open_failures > 0:
            self.open_failures -= 1
            raise SourceOpenError(f"{self.description}: not back yet")
        self.opens += 1

    def read(self):
        self.reads += 1
        if self.reads in self.freeze_at:
            self.release.wait(10)  # bounded: a broken test must not hang the suite
            raise SourceFailure(f"{self.description}: read returned after the freeze")
        time.sleep(self.first_delay if self.reads == 1 else 0.005)
        return np.full((12, 12, 3), 127, np.uint8), None

    def close(self) -> None:
        self.closes += 1
        if self.close_unblocks:
            self.release.set()


class ReplicatingCamera(FreezingCamera):
    """Like a cv2 capture: close() never interrupts a read, so a stall opens a replica instead."""

    def __init__(self, family: list, freeze_at=(), good: threading.Event | None = None) -> None:
        super().__init__(freeze_at, close_unblocks=False, description="replicating camera")
        self.family, self.good = family, good
        family.append(self)

    def replica(self) -> ReplicatingCamera:
        healthy = self.good is not None and self.good.is_set()
        return ReplicatingCamera(self.family, () if healthy else self.freeze_at, self.good)


def _cfg(model: Path, **source) -> RunConfig:
    return RunConfig(model=str(model), decision=DecisionConfig(threshold=0.5),
                     source=SourceConfig(open_timeout=2, **source))


# ---- 8. READY=1 once the first frame is scored ------------------------------------------------------
def test_ready_only_after_the_first_scored_frame_with_status_lines(model: Path) -> None:
    metrics = RuntimeCounters()
    notifier = FakeNotifier(metrics)
    cam = FreezingCamera(first_delay=1.2, description="slow camera")  # opens at once, first frame after 1.2 s
    cfg = _cfg(model, stall_timeout=5.0)
    cfg.max_frames = 3
    run(cfg, raw_source=cam, out=io.StringIO(), metrics=metrics, notifier=notifier)
    msgs = notifier.messages()
    ready = [i for i, m in enumerate(msgs) if m.startswith("READY=1")]
    assert len(ready) == 1 and msgs[ready[0]] == "READY=1\nSTATUS=scoring slow camera"
    assert notifier.frames_at_ready == 1  # sent after the first frame was scored, not when the camera opened
    statuses = [m for m in msgs[:ready[0]] if m.startswith("STATUS=")]
    assert statuses == ["STATUS=opening slow camera", "STATUS=waiting for frames from slow camera"]
    assert "WATCHDOG=1" in msgs[:ready[0]]  # the loop is alive while it waits
    assert msgs[-1] == "STOPPING=1"


# ---- 9. stalls ---------------------------------------------------------------------------------------
def test_hung_read_is_a_stall_healthz_503_and_reconnect() -> None:
    metrics = RuntimeCounters()
    cam = FreezingCamera(freeze_at={3})
    health_at_open = []
    cam.on_open = lambda c: health_at_open.append(health(metrics.snapshot(), 10.0))
    src = ResilientSource(cam, metrics=metrics, stall_timeout=0.2, sleep=lambda s: None)
    t0, got = time.monotonic(), []
    for frame in src:
        got.append(frame)
        if len(got) == 5:
            src.halt()
    assert len(got) == 5 and time.monotonic() - t0 < 3
    assert metrics.stalls == 1 and metrics.reconnects == 1 and cam.opens == 2
    code, body = health_at_open[1]  # during the reconnect
    assert code == 503 and body["status"] == "stalled" and body["stalls"] == 1
    assert metrics.stalled  # until the runner scores the next frame
    metrics.record_frame(1.0, 0.1, False)
    assert not metrics.stalled
    # close() interrupted the hung read: no reader thread is left behind.
    time.sleep(0.05)
    assert not any(r.busy for r in src._stuck)


def test_stall_opens_a_replica_and_never_closes_a_capture_inside_read() -> None:
    family: list[ReplicatingCamera] = []
    first = ReplicatingCamera(family, freeze_at={2}, good=threading.Event())
    first.good.set()  # replicas are healthy
    src = ResilientSource(first, metrics=RuntimeCounters(), stall_timeout=0.15, sleep=lambda s: None)
    got = []
    for frame in src:
        got.append(frame)
        if len(got) == 4:
            src.halt()
    assert len(family) == 2 and src.metrics.stalls == 1
    assert first.closes == 0  # still inside its hung read: releasing it now could crash the driver
    first.release.set()  # the frozen read finally returns → its reader thread closes the old capture
    deadline = time.monotonic() + 2
    while first.closes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.closes == 1 and family[1].closes == 1  # the replica was closed at the end of iteration


def test_too_many_hung_reads_mark_the_loop_dead_until_one_returns() -> None:
    family: list[ReplicatingCamera] = []
    good = threading.Event()
    first = ReplicatingCamera(family, freeze_at={1}, good=good)  # every read of every replica hangs
    src = ResilientSource(first, metrics=RuntimeCounters(), stall_timeout=0.1, max_stuck_reads=2,
                          sleep=lambda s: time.sleep(s))
    got: list = []
    thread = threading.Thread(target=lambda: [got.append(f) or src.halt() for f in src], daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 3
        while not src.wedged and time.monotonic() < deadline:
            time.sleep(0.02)
        # Two hung reads at most: the next replica is not opened (and gets no reader) while they hang.
        assert src.wedged and sum(r.busy for r in src._stuck) == 2
        assert len(family) == 3 and family[2].opens == 0
        time.sleep(0.4)
        assert not src.loop_alive()  # stuck > 3 × stall_timeout: the runner stops the watchdog pings
        good.set()
        for cam in family:
            cam.release.set()  # the driver comes back
        thread.join(3)
        assert not thread.is_alive() and len(got) == 1 and src.loop_alive()
    finally:
        for cam in family:
            cam.release.set()


def test_waiting_for_a_camera_is_not_a_hang() -> None:
    cam = FreezingCamera(freeze_at={2}, open_failures=1)  # stall, then one failed reopen → 1 s backoff
    src = ResilientSource(cam, metrics=RuntimeCounters(), stall_timeout=0.1, backoff_initial=1.0)
    got: list = []
    thread = threading.Thread(target=lambda: [got.append(f) or src.halt() for f in src if cam.opens > 1],
                              daemon=True)
    thread.start()
    samples = []
    while thread.is_alive():
        samples.append(src.loop_alive())  # limit 3 × 0.1 s, far shorter than the backoff
        time.sleep(0.05)
    assert len(got) == 1 and src.metrics.stalls == 1 and len(samples) > 15 and all(samples)


def test_run_stall_reconnects_and_keeps_feeding_the_watchdog_while_waiting(model: Path) -> None:
    metrics = RuntimeCounters()
    notifier = FakeNotifier(metrics)
    cam = FreezingCamera(freeze_at={4}, open_failures=2)  # frozen read, then unplugged for 0.5 + 1 s backoff
    fps_at_reopen = []
    cam.on_open = lambda c: fps_at_reopen.append(metrics.fps()) if c.opens else None
    cfg = _cfg(model, stall_timeout=0.2)
    cfg.max_frames = 8
    t0 = time.monotonic()
    summary = run(cfg, raw_source=cam, out=io.StringIO(), metrics=metrics, notifier=notifier)
    assert time.monotonic() - t0 < 5
    assert summary["frames"] == 8 and summary["stalls"] == 1 and summary["reconnects"] == 1
    msgs = notifier.messages()
    stalled = "STATUS=stalled: no frame from freezing camera for 0.2 s; reconnecting"
    assert stalled in msgs and msgs.index(stalled) < msgs.index("STATUS=scoring freezing camera")
    pings = notifier.pings()
    # Waiting for the camera with a running loop is not a hang: pings never pause (grabber tick 0.5 s).
    assert max(np.diff(pings)) < 1.0 and pings[-1] - pings[0] > 1.2
    assert fps_at_reopen[-1] < fps_at_reopen[0]  # the fps gauge decays while no frames come


def test_run_stops_feeding_the_watchdog_when_reads_hang_for_good(model: Path, caplog) -> None:
    metrics = RuntimeCounters()
    notifier = FakeNotifier(metrics)
    family: list[ReplicatingCamera] = []
    cam = ReplicatingCamera(family, freeze_at={1})
    cfg = _cfg(model, stall_timeout=0.1)
    cfg.duration = 2.5
    try:
        with caplog.at_level(logging.ERROR, logger="edge.runner"):
            summary = run(cfg, raw_source=cam, out=io.StringIO(), metrics=metrics, notifier=notifier)
        t_end = time.monotonic()
    finally:
        for c in family:
            c.release.set()
    # Three hung reads (max_stuck_reads), then no further replica is opened: the loop waits, unfed watchdog.
    assert summary["frames"] == 0 and summary["stalls"] == 3 and sum(c.opens for c in family) == 3
    pings = notifier.pings()
    assert pings and t_end - pings[-1] > 1.2  # no WATCHDOG=1 for > 1 s: systemd restarts the process
    assert "READY=1" not in "".join(notifier.messages())
    assert "no longer feeding the systemd watchdog" in caplog.text


def test_fps_decays_to_zero_without_frames_and_metrics_expose_stalls() -> None:
    m = RuntimeCounters(fps_window_s=10.0)
    for _ in range(11):
        m.record_frame(1.0, 0.0, False)
        time.sleep(0.01)
    t_last = m._frame_times[-1]
    span = t_last - m._frame_times[0]
    assert m.fps(now=t_last) == pytest.approx(10 / span)
    assert 0 < m.fps(now=t_last + 5) < m.fps(now=t_last + 1) < m.fps(now=t_last)
    assert m.fps(now=t_last + 10.5) == 0.0
    m.record_stall()
    text = render_metrics(m.snapshot())
    assert "dcam_edge_stalls_total 1\n" in text and "dcam_edge_stalled 1\n" in text


def test_stall_timeout_option_flag_toml_and_negative() -> None:
    assert SourceConfig().stall_timeout == 5.0
    cfg = parse_config(RunConfig, ["--camera", "0", "--stall-timeout", "2.5"], "edge-run", "")
    assert cfg.source.stall_timeout == 2.5
    with pytest.raises(ConfigError, match="--stall-timeout -1.0: expected >= 0"):
        SourceConfig(stall_timeout=-1.0)
    assert ResilientSource(FreezingCamera(), stall_timeout=0).stall_timeout is None  # 0 = off


def test_example_config_sets_stall_timeout(tmp_path: Path) -> None:
    cfg = parse_config(RunConfig, ["--config", str(SERVICE_DIR / "edge.toml")], "edge-run", "")
    assert cfg.source.stall_timeout > 0


# ---- 10. engine errors keep their cause ------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Exception from src/inference/src/cpp/core.cpp:84:\n"
     "Exception from src/inference/src/dev/plugin.cpp:53:\n"
     "Exception from src/plugins/intel_cpu/src/node.cpp:1631:\n"
     "[CPU] Convolution node with name 'conv1' object is not initialized\n",
     "[CPU] Convolution node with name 'conv1' object is not initialized"),
    ("Exception from src/inference/src/core.cpp:99:\n"
     "[ GENERAL_ERROR ] Check '_impl != nullptr' failed at src/core/src/any.cpp:96:\n"
     "Any was not initialized.", "Any was not initialized."),
    ("Exception from src/inference/src/cpp/core.cpp:84:", "Exception from src/inference/src/cpp/core.cpp:84:"),
    ("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model failed\nmore", "[ONNXRuntimeError] : 10 : INVALID_GRAPH : "
                                                                        "Load model failed"),
    ("", "RuntimeError"),
])
def test_engine_error_keeps_the_first_informative_line(text: str, expected: str) -> None:
    assert _first_line(RuntimeError(text)) == expected


@pytest.mark.parametrize("machine, name, hinted", [("aarch64", "dcam.int8.xml", True),
                                                   ("x86_64", "dcam.int8.xml", False),
                                                   ("aarch64", "dcam.fp32.xml", False)])
def test_int8_ir_on_arm_gets_a_hint(tmp_path: Path, monkeypatch, machine: str, name: str, hinted: bool) -> None:
    xml = tmp_path / name
    xml.write_text("<net/>")
    xml.with_suffix(".bin").write_bytes(b"\0")

    class FakeCore:
        def read_model(self, path):
            return object()

        def compile_model(self, model, device, config):
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\n"
                               "Exception from src/plugins/intel_cpu/src/node.cpp:1631:\n"
                               "object is not initialized\n")

    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(Core=FakeCore))
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with pytest.raises(EngineError) as err:
        load_engine(xml)
    message = str(err.value)
    assert f"{xml}: cannot load OpenVINO model (object is not initialized)" in message
    assert "Exception from" not in message
    assert (ARM_INT8_IR_HINT in message) is hinted
    if hinted:
        assert "dcam.int8.tflite" in message and "dcam.int8.onnx" in message


def test_service_readme_mentions_the_arm_int8_ir_limit() -> None:
    text = (SERVICE_DIR / "README.md").read_text()
    assert ARM_INT8_IR_HINT.split(";")[0] in text and "dcam.int8.xml" in text


# ---- 13. install.sh: drop-in, unit backup, directory modes ------------------------------------------
def _unit_value(key: str) -> str:
    return re.findall(rf"^{key}=(\S+)", (SERVICE_DIR / "dcam-edge.service").read_text(), flags=re.M)[-1]


def _install(root: Path, **env: str) -> subprocess.CompletedProcess:
    args = ["bash", str(SERVICE_DIR / "install.sh")]
    if "DESTDIR" not in env:
        args += ["--root", str(root)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30, env={**os.environ, **env})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_install_script_parses() -> None:
    r = subprocess.run(["bash", "-n", str(SERVICE_DIR / "install.sh")], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr


def test_install_twice_keeps_local_dropin_backs_up_changed_unit_and_matches_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    etc = root / "etc" / "dcam-edge"
    unit = root / "etc" / "systemd" / "system" / "dcam-edge.service"
    dropin = unit.parent / "dcam-edge.service.d" / "local.conf"
    shipped = (SERVICE_DIR / "dcam-edge.service").read_text()
    conf_mode = int(_unit_value("ConfigurationDirectoryMode"), 8)
    state_mode = int(_unit_value("StateDirectoryMode"), 8)

    _install(root)
    assert unit.read_text() == shipped and "[Service]" in dropin.read_text()
    assert (etc / "edge.toml").read_text() == (SERVICE_DIR / "edge.toml").read_text()
    assert stat.S_IMODE(etc.stat().st_mode) == conf_mode == 0o750
    assert stat.S_IMODE((root / "var" / "lib" / "dcam-edge").stat().st_mode) == state_mode
    assert not list(unit.parent.glob("*.bak-*"))

    # Local edits: drop-in, config, the unit itself; the config directory re-created with another mode.
    dropin.write_text(dropin.read_text() + "MemoryMax=512M\n")
    (etc / "edge.toml").write_text('model = "/var/lib/dcam-edge/models/mine.onnx"\n')
    unit.write_text(shipped + "CPUQuota=50%\n")
    etc.chmod(0o755)
    r = _install(root, DESTDIR=str(root))
    assert "MemoryMax=512M" in dropin.read_text()  # never overwritten
    assert "mine.onnx" in (etc / "edge.toml").read_text()
    backups = list(unit.parent.glob("dcam-edge.service.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == shipped + "CPUQuota=50%\n" and "kept it as" in r.stdout
    assert unit.read_text() == shipped
    assert stat.S_IMODE(etc.stat().st_mode) == conf_mode

    r = _install(root)  # nothing changed: no new backup
    assert "unchanged" in r.stdout and len(list(unit.parent.glob("dcam-edge.service.bak-*"))) == 1


def test_install_prefix_lands_in_the_unit(tmp_path: Path) -> None:
    _install(tmp_path, PREFIX="/srv/dcam")
    unit = (tmp_path / "etc" / "systemd" / "system" / "dcam-edge.service").read_text()
    assert "ExecStart=/srv/dcam/venv/bin/edge-run " in unit and "/opt/dcam-edge/venv" not in unit

"""edge.engines on tiny generated graphs, the frame loop (edge.runner) and the CLIs (edge.cli).

The tiny model stands in for an exported one until the export fixtures exist:
anomaly_map = mean over channels of x², score = max of the map — computed again in numpy to
check every engine.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import CalibrateConfig, DecisionConfig, RunConfig, SourceConfig
from edge.counters import RuntimeCounters
from edge.engines import EngineError, load_engine
from edge.manifest import load_manifest, write_manifest
from edge.preprocess import PreprocessSpec
from edge.runner import calibrate, run
from edge.sdnotify import SystemdNotifier
from edge.sources import EndOfInput, RawSource, SourceFailure

ROOT = Path(__file__).resolve().parents[1]
S = 16


def make_tiny_onnx(path: Path, size: int = S, batch: int | str = 1,
                   names: tuple[str, str] = ("anomaly_map", "score")) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])
    m = helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [batch, 1, size, size])
    s = helper.make_tensor_value_info(names[1], TensorProto.FLOAT, [batch])
    nodes = [helper.make_node("Mul", ["image", "image"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], [names[0]], axes=[1], keepdims=1),
             helper.make_node("ReduceMax", [names[0]], [names[1]], axes=[1, 2, 3], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [m, s]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    amap = (x.astype(np.float64) ** 2).mean(axis=1, keepdims=True)
    return amap, amap.reshape(len(x), -1).max(axis=1)


def write_tiny_manifest(model: Path, threshold: float = 1.0, per_category: dict | None = None,
                        hint: str = "f32") -> None:
    spec = PreprocessSpec.for_normalization("half", S)
    write_manifest(model, {"precision": "fp32", "runtime": {"inference_precision_hint": hint},
                           "input": {"name": "image", "shape": [1, 3, S, S], **spec.to_dict()},
                           "model": {"method": "tiny", "backbone": "none", "categories": ["a"]},
                           "threshold": {"global": threshold, "per_category": per_category or {}}})


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny_models")
    onnx_path = make_tiny_onnx(d / "tiny.onnx")
    write_tiny_manifest(onnx_path, threshold=1.0, per_category={"a": 0.5})
    out = {"onnx": onnx_path}
    try:
        import openvino as ov
    except ImportError:
        return out
    ov.save_model(ov.convert_model(str(onnx_path)), str(d / "tiny.xml"), compress_to_fp16=False)
    write_tiny_manifest(d / "tiny.xml")
    out["xml"] = d / "tiny.xml"
    return out


# ---- engines ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["onnx", "xml"])
def test_engine_outputs_equal_numpy(kind: str, tiny_models: dict[str, Path]) -> None:
    if kind not in tiny_models:
        pytest.skip("openvino not installed")
    eng = load_engine(tiny_models[kind], threads=1)
    x = np.random.default_rng(0).normal(size=(3, 3, S, S)).astype(np.float32)  # batch 3 on a batch-1 graph
    amap, score = eng.run(x)
    ref_map, ref_score = reference(x)
    assert amap.shape == (3, 1, S, S) and amap.dtype == np.float32 and score.shape == (3,)
    np.testing.assert_allclose(amap, ref_map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score, ref_score, rtol=1e-5)
    assert eng.image_size == S and eng.precision == "fp32"
    if kind == "xml":
        # The manifest hint is applied: never a silent bf16 on AMX CPUs.
        assert eng.info["inference_precision_hint"] == "f32" and eng.info["compiled_precision"] == "f32"
        assert eng.info["threads"] == 1


def test_engine_finds_outputs_by_shape_and_handles_dynamic_batch(tmp_path: Path) -> None:
    # Unnamed outputs (as converters produce) and a dynamic batch dimension.
    path = make_tiny_onnx(tmp_path / "renamed.onnx", batch="N", names=("out_b", "out_a"))
    eng = load_engine(path)
    x = np.random.default_rng(1).normal(size=(2, 3, S, S)).astype(np.float32)
    amap, score = eng.run(x)
    np.testing.assert_allclose(score, reference(x)[1], rtol=1e-5)
    assert amap.shape == (2, 1, S, S)


def test_tflite_engine(tmp_path: Path) -> None:
    """Converted with litert-torch in a subprocess (keeps torch out of this process); skipped without it."""
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        pytest.skip("ai-edge-litert not installed")
    path = tmp_path / "tiny.tflite"
    code = textwrap.dedent(f"""
        import torch, litert_torch
        class M(torch.nn.Module):
            def forward(self, x):
                m = (x * x).mean(1, keepdim=True)
                return m, m.amax(dim=(1, 2, 3))
        litert_torch.convert(M().eval(), (torch.zeros(1, 3, {S}, {S}),)).export({str(path)!r})
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"no TFLite converter available here (litert-torch): {r.stderr.strip()[-200:]}")
    eng = load_engine(path, threads=1)
    assert eng.name in ("litert", "tflite_runtime")
    x = np.random.default_rng(2).normal(size=(2, 3, S, S)).astype(np.float32)
    amap, score = eng.run(x)
    np.testing.assert_allclose(amap, reference(x)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(score, reference(x)[1], rtol=1e-4)


def test_engine_errors_name_the_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    with pytest.raises(EngineError, match="missing.onnx: model file not found"):
        load_engine(tmp_path / "missing.onnx")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(EngineError, match="unknown model extension '.pt'"):
        load_engine(tmp_path / "m.pt")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01garbage that is not a protobuf graph")
    with pytest.raises(EngineError, match="bad.onnx: cannot load ONNX model"):
        load_engine(tmp_path / "bad.onnx")
    (tmp_path / "lonely.xml").write_text("<net/>")
    with pytest.raises(EngineError, match="lonely.bin: OpenVINO weights file not found"):
        load_engine(tmp_path / "lonely.xml")
    with pytest.raises(EngineError, match="does not match the model input"):
        load_engine(tiny_models["onnx"]).run(np.zeros((1, 3, S + 1, S + 1), np.float32))


# ---- runner ----------------------------------------------------------------------------------------
def _images(d: Path, values: list[int]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        cv2.imwrite(str(d / f"img_{i:03d}.png"), np.full((20, 30, 3), v, np.uint8))
    return d


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_image_directory_run_one_line_per_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    # Pixel 127 normalises to ≈0 (score≈0); 255 → 1 (score 1.0); threshold 0.5 from category "a".
    values = [127, 127, 255, 255, 255, 127, 127, 127, 127, 127, 127, 255]
    d = _images(tmp_path / "imgs", values)
    (d / "img_004b.png").write_bytes(b"corrupt")
    cfg = RunConfig(model=str(tiny_models["onnx"]), jsonl=str(tmp_path / "out.jsonl"),
                    source=SourceConfig(source=str(d)), decision=DecisionConfig(category="a"))
    summary = run(cfg)
    recs = _lines((tmp_path / "out.jsonl").read_text())
    # The skipped file has its own line (the log accounts for every input), in input order.
    assert [(Path(r["path"]).name, r["score"]) for r in recs if r["event"] == "corrupt"] == [("img_004b.png", None)]
    assert Path(recs[5]["path"]).name == "img_004b.png"
    recs = [r for r in recs if r["event"] != "corrupt"]
    assert [Path(r["path"]).name for r in recs] == sorted(p.name for p in d.glob("img_???.png"))
    assert set(recs[0]) == {"frame", "time", "score", "threshold", "alarm", "event", "latency_ms", "path"}
    expected_scores = [((v / 255 - 0.5) / 0.5) ** 2 for v in values]
    np.testing.assert_allclose([r["score"] for r in recs], expected_scores, rtol=1e-5, atol=1e-6)
    assert all(r["threshold"] == 0.5 for r in recs)
    # k=2 of n=3 → raise on the 2nd bad frame (index 3); m=5 clean frames → clear at index 9.
    assert [r["event"] for r in recs] == [None] * 3 + ["raise"] + [None] * 5 + ["clear", None, None]
    assert summary["frames"] == 12 and summary["corrupt"] == 1 and summary["alarms"] == 1
    assert summary["stopped_by"] == "end-of-input" and summary["events"][0]["event"] == "raise"


class FlakyCamera(RawSource):
    """Live source that dies after 3 frames, refuses one reopen, then comes back; bright frames 5-7."""

    live = True
    description = "flaky camera"

    def __init__(self) -> None:
        self.reads, self.opens, self.dead = 0, 0, False

    def open(self) -> None:
        from edge.sources import SourceOpenError
        self.opens += 1
        if self.opens == 2:
            raise SourceOpenError("flaky camera: not yet")

    def read(self):
        self.reads += 1
        if self.reads == 4:
            raise SourceFailure("flaky camera: USB reset")
        if self.reads == 7:
            return None, None  # empty frame
        if self.reads > 14:
            raise EndOfInput()  # the stream "ends" → reconnect, until the runner stops at max_frames
        v = 255 if self.reads in (8, 9, 10) else 127
        return np.full((12, 12, 3), v, np.uint8), None


def test_run_reconnects_and_continues_with_sinks(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    class Recorder:
        name = "recorder"

        def __init__(self) -> None:
            self.events, self.closed = [], None

        def handle(self, event, frame_bgr, overlay_bgr):
            self.events.append((event["event"], frame_bgr.shape, None if overlay_bgr is None else overlay_bgr.shape))

        def close(self, timeout):
            self.closed = timeout

    class Broken:
        name = "broken"

        def handle(self, *a):
            raise RuntimeError("sink bug")

        def close(self, timeout):
            pass

    rec = Recorder()
    cfg = RunConfig(model=str(tiny_models["onnx"]), max_frames=10, decision=DecisionConfig(threshold=0.5),
                    source=SourceConfig(open_timeout=5, latest_only=False), sink_close_timeout=1.5)
    cam = FlakyCamera()
    import io
    buf = io.StringIO()
    metrics = RuntimeCounters()
    summary = run(cfg, raw_source=cam, sinks=[rec, Broken()], out=buf, metrics=metrics)
    recs = _lines(buf.getvalue())
    assert len(recs) == 10 and summary["stopped_by"] == "max-frames"
    assert summary["reconnects"] == 1 and summary["corrupt"] == 1 and cam.opens == 3
    assert [r["frame"] for r in recs] == list(range(10))
    assert [r["event"] for r in recs].count("raise") == 1
    assert len(rec.events) == 10 and rec.closed == 1.5  # every frame reaches the sinks; closed once
    raise_ev = [e for e in rec.events if e[0] == "raise"][0]
    assert raise_ev[1] == (12, 12, 3) and raise_ev[2] == (12, 12, 3)  # overlay comes with the event
    assert summary["sink_errors"] == 10  # the broken sink never stopped the loop
    assert metrics.latest_jpeg()[:2] == b"\xff\xd8"  # the event overlay became /latest.jpg


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(2)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000"})
        cfg = RunConfig(model=str(tiny_models["onnx"]), jsonl=str(tmp_path / "o.jsonl"),
                        source=SourceConfig(source=str(_images(tmp_path / "i", [127] * 3))))
        run(cfg, notifier=notifier)
        msgs = []
        server.settimeout(0.2)
        try:
            while True:
                msgs.append(server.recv(4096).decode())
        except TimeoutError:
            pass
    finally:
        server.close()
    # STATUS= while the source opens; READY=1 only once a frame is scored; STOPPING=1 last.
    ready = [i for i, m in enumerate(msgs) if m.startswith("READY=1")]
    assert msgs[0].startswith("STATUS=opening") and len(ready) == 1 and 0 < ready[0]
    assert "WATCHDOG=1" in msgs and msgs[-1] == "STOPPING=1"


def test_edge_calibrate_rewrites_threshold_with_backup(tmp_path: Path) -> None:
    model = make_tiny_onnx(tmp_path / "cal.onnx")
    write_tiny_manifest(model, threshold=123.0)
    rng = np.random.default_rng(0)
    d = tmp_path / "good"
    d.mkdir()
    for i in range(40):
        cv2.imwrite(str(d / f"{i:03d}.png"), rng.integers(100, 156, (8, 8, 3)).astype(np.uint8))
    from edge.cli import calibrate_main
    rc = calibrate_main(["--model", str(model), "--source", str(d), "--frames", "30", "--target-fpr", "0.001",
                         "--log-level", "WARNING"])
    assert rc == 0
    m = load_manifest(model)  # sha still verifies
    assert m.threshold() != 123.0 and m.data["threshold"]["source"] == "edge-calibrate"
    assert m.data["threshold"]["fit"].startswith("pot-")
    assert m.data["threshold"]["statistics"]["global"]["normal"]["n"] == 30
    backups = list(tmp_path.glob("cal.json.bak-*"))
    assert len(backups) == 1 and json.loads(backups[0].read_text())["files"]["cal.onnx"]["threshold"]["global"] == 123.0
    # Independent check: the new threshold is above every calibration score (target 0.001 < 1/30).
    scores = [reference(((cv2.imread(str(p))[..., ::-1] / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None])[1][0]
              for p in sorted(d.glob("*.png"))[:30]]
    assert m.threshold() > max(scores)
    # Per-category calibration leaves the global threshold alone.
    summary = calibrate(CalibrateConfig(model=str(model), frames=10, category="a",
                                        source=SourceConfig(source=str(d))), progress=False)
    m2 = load_manifest(model)
    assert m2.threshold() == m.threshold() and m2.threshold("a") == summary["threshold"]


# ---- CLI -------------------------------------------------------------------------------------------
def _cli(args: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, **kw)


def test_bad_input_one_clear_line_exit_2(tmp_path: Path, tiny_models: dict[str, Path], capsys) -> None:
    from edge.cli import run_main
    imgs = str(_images(tmp_path / "i", [127]))
    tampered = make_tiny_onnx(tmp_path / "t.onnx")
    write_tiny_manifest(tampered)
    with open(tampered, "ab") as f:
        f.write(b"\0")
    (tmp_path / "m.pt").write_bytes(b"x")
    no_manifest = make_tiny_onnx(tmp_path / "nm.onnx")
    cases = [
        (["--model", str(tmp_path / "missing.onnx"), "--source", imgs], "missing.onnx: model file not found"),
        (["--model", str(tampered), "--source", imgs], "model_sha256 mismatch"),
        (["--model", str(tmp_path / "m.pt"), "--source", imgs], "unknown model extension"),
        (["--model", str(no_manifest), "--source", imgs], "nm.json: manifest not found"),
        (["--model", str(tiny_models["onnx"]), "--camera", "97", "--open-timeout", "0.2"],
         "camera 97: could not be opened"),
        (["--model", str(tiny_models["onnx"]), "--source", imgs, "--category", "zzz"], "no threshold for category"),
        (["--model", str(tiny_models["onnx"]), "--source", imgs, "--raise-k", "5"], "--raise-k 5"),
        (["--model", str(tiny_models["onnx"]), "--source", str(tmp_path / "nope")], "--source"),
        (["--model", str(tiny_models["onnx"]), "--picamera", "--open-timeout", "0.2"], "picamera"),
        (["--model", str(tiny_models["onnx"]), "--source", imgs, "--roi", "1,2"], "--roi"),
        (["--model", str(tiny_models["onnx"]), "--source", imgs, "--config", str(tmp_path / "x.toml")],
         "x.toml: file not found"),
    ]
    for argv, expected in cases:
        assert run_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("error: ")]
        assert len(errors) == 1 and expected in errors[0], (argv, err)
        assert not any("Traceback" in line for line in err)


def test_config_file_and_flag_precedence(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from edge.config import ConfigError, parse_config
    toml = tmp_path / "edge.toml"
    toml.write_text(textwrap.dedent(f"""
        model = "{tiny_models['onnx']}"
        threads = 1
        [source]
        camera = 0
        roi = "0,0,8,8"
        [decision]
        raise-k = 3
        raise_n = 4
    """))
    cfg = parse_config(RunConfig, ["--config", str(toml), "--raise-n", "6", "--source", "x.avi"], "edge-run", "")
    assert cfg.model == str(tiny_models["onnx"]) and cfg.threads == 1
    assert (cfg.decision.raise_k, cfg.decision.raise_n) == (3, 6)
    # A source given as a flag replaces the file's camera instead of conflicting with it.
    assert cfg.source.source == "x.avi" and cfg.source.camera is None and cfg.source.roi == "0,0,8,8"
    # The sink and status groups come from their own [sinks] / [status] tables, flags still win.
    toml.write_text(textwrap.dedent("""
        model = "m.onnx"
        [sinks]
        log_path = "alarms.jsonl"
        [status]
        port = 8080
    """))
    cfg = parse_config(RunConfig, ["--config", str(toml), "--status-port", "9090"], "edge-run", "")
    assert cfg.sinks.log_path == "alarms.jsonl" and cfg.status.port == 9090 and cfg.status.host == "127.0.0.1"
    toml.write_text('modle = "typo.onnx"\n')
    with pytest.raises(ConfigError, match="modle: unknown key"):
        parse_config(RunConfig, ["--config", str(toml)], "edge-run", "")
    toml.write_text('threads = "two"\n')
    with pytest.raises(ConfigError, match="threads: expected an integer, got 'two'"):
        parse_config(RunConfig, ["--config", str(toml)], "edge-run", "")


def test_edge_modules_never_import_torch() -> None:
    code = ("import sys, edge, edge.cli, edge.runner, edge.engines, edge.sources, edge.thresholds, "
            "edge.manifest, edge.overlay, edge.decision, edge.config, edge.counters, edge.preprocess, "
            "edge.entrypoints, edge.redact, edge.status, edge.liveview, edge.devices\n"
            "import edge.config as c; c.config_cli(c.RunConfig, 'edge-run').build_parser()\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'train', 'export'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sigterm_stops_cleanly(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """edge-run on an endless live source: SIGTERM → exit 0, complete last line, sinks flushed."""
    sink_log = tmp_path / "alarms.jsonl"
    code = textwrap.dedent("""
        import sys, time, numpy as np
        import edge.runner as runner
        from edge.sources import RawSource
        class Endless(RawSource):
            live, description = True, "endless test camera"
            def open(self): pass
            def read(self):
                time.sleep(0.01)
                return np.full((12, 12, 3), 255, np.uint8), None
        runner.make_raw_source = lambda **kw: Endless()
        from edge.cli import run_main
        sys.exit(run_main(sys.argv[1:]))
    """)
    args = ["--model", str(tiny_models["onnx"]), "--camera", "0", "--threshold", "0.5", "--log-level", "INFO"]
    try:
        import edge.sinks  # noqa: F401
        args += ["--log-path", str(sink_log)]
        have_sinks = True
    except ImportError:
        have_sinks = False
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        first = proc.stdout.readline()  # the loop is running once a line arrives
        assert json.loads(first)["frame"] == 0
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = _lines(out)  # every line is complete JSON (the last one included)
    frames = [json.loads(first)["frame"]] + [r["frame"] for r in lines]
    assert len(lines) >= 1 and frames == sorted(set(frames))  # latest-only may skip frames, never repeat them
    assert '"stopped_by": "signal"' in err
    if have_sinks:
        logged = _lines(sink_log.read_text())
        assert [e["event"] for e in logged] == ["raise"]

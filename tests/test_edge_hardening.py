"""Edge runtime hardening: calibration guards, odd input files, non-finite manifests, option
checks, fast-failing files, torch-free entry points and credential redaction in logs."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_edge_runtime import make_tiny_onnx, write_tiny_manifest

from edge.cli import calibrate_main, run_main
from edge.config import RunConfig, SourceConfig
from edge.counters import RuntimeCounters
from edge.manifest import ManifestError, load_manifest, manifest_path_for
from edge.runner import run
from edge.sources import OpenCvSource, ResilientSource, SourceOpenError, make_raw_source

ROOT = Path(__file__).resolve().parents[1]
SECRET_URL = "rtsp://user:secret@127.0.0.1:1/stream"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A fresh tiny model (categories ["a"], global threshold 123, per-category a = 0.5) per test."""
    path = make_tiny_onnx(tmp_path / "tiny.onnx")
    write_tiny_manifest(path, threshold=123.0, per_category={"a": 0.5})
    return path


def _good_images(d: Path, n: int, seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(d / f"{i:03d}.png"), rng.integers(100, 156, (8, 8, 3)).astype(np.uint8))
    return d


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error: ")]


def _strict_lines(text: str) -> list[dict]:
    def no_constants(token: str) -> None:
        raise AssertionError(f"non-JSON token {token} in the frame log")
    return [json.loads(line, parse_constant=no_constants) for line in text.splitlines() if line.strip()]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _decompression_bomb_png(path: Path) -> Path:
    """A valid PNG signature + IHDR (correct CRC) declaring 40000×30000 px, an empty IDAT, IEND: ~60 bytes."""
    ihdr = struct.pack(">IIBBBBB", 40000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"")
                     + _png_chunk(b"IEND", b""))
    return path


# ---- 1. edge-calibrate: too few frames, unknown category, old → new ----------------------------------
@pytest.mark.parametrize("n_images", [1, 5])
def test_calibrate_refuses_fewer_frames_than_requested(model: Path, tmp_path: Path, capsys, n_images: int) -> None:
    d = _good_images(tmp_path / "good", n_images)
    manifest = manifest_path_for(model)
    before = manifest.read_bytes()
    for extra in ([], ["--allow-fewer-frames", str(n_images + 1)]):
        rc = calibrate_main(["--model", str(model), "--source", str(d), "--frames", "300", "--log-level", "WARNING",
                             *extra])
        errors = _error_lines(capsys.readouterr().err)
        assert rc == 2 and len(errors) == 1, (extra, errors)
        assert f"delivered {n_images} of --frames 300" in errors[0] and "manifest unchanged" in errors[0]
        assert manifest.read_bytes() == before  # byte for byte, and no backup written
        assert not list(tmp_path.glob("tiny.json.bak-*"))
    # At least N frames with --allow-fewer-frames N: accepted, and the change is printed with its fit.
    rc = calibrate_main(["--model", str(model), "--source", str(d), "--frames", "300", "--log-level", "WARNING",
                         "--allow-fewer-frames", str(n_images)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["frames"] == n_images and summary["mode"] == "fpr" and summary["old_threshold"] == 123.0
    assert f"threshold: 123 → {summary['threshold']:.6g} (mode fpr, fit {summary['fit']}," in err
    assert load_manifest(model).threshold() == summary["threshold"]


def test_calibrate_allow_fewer_frames_must_fit_frames(model: Path, tmp_path: Path, capsys) -> None:
    d = _good_images(tmp_path / "good", 3)
    for bad in ("0", "11"):
        assert calibrate_main(["--model", str(model), "--source", str(d), "--frames", "10",
                               "--allow-fewer-frames", bad]) == 2
        assert "--allow-fewer-frames" in _error_lines(capsys.readouterr().err)[0]


def test_calibrate_refuses_unknown_category_unless_new(model: Path, tmp_path: Path, capsys) -> None:
    d = _good_images(tmp_path / "good", 12)
    manifest = manifest_path_for(model)
    before = manifest.read_bytes()
    args = ["--model", str(model), "--source", str(d), "--frames", "10", "--log-level", "WARNING"]
    assert calibrate_main([*args, "--category", "aa"]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "--category 'aa': not in" in errors[0] and "tiny.json" in errors[0]
    assert "--new-category" in errors[0] and manifest.read_bytes() == before
    # A known category and a declared new one are calibrated.
    assert calibrate_main([*args, "--category", "a"]) == 0
    assert calibrate_main([*args, "--category", "b", "--new-category"]) == 0
    err = capsys.readouterr().err
    assert "threshold [a]: 0.5 → " in err and "threshold [b]: none → " in err
    m = load_manifest(model)
    assert m.threshold() == 123.0 and m.threshold("b") > 0


# ---- 2. undecodable image files are skipped, counted, logged and get a frame-log line ----------------
def test_decompression_bomb_png_is_skipped_and_logged(model: Path, tmp_path: Path, caplog) -> None:
    d = _good_images(tmp_path / "imgs", 4)
    bomb = _decompression_bomb_png(d / "001b.png")
    with pytest.raises(cv2.error):  # the file really makes the decoder raise (not just return None)
        cv2.imdecode(np.fromfile(str(bomb), np.uint8), cv2.IMREAD_COLOR)
    metrics = RuntimeCounters()
    with caplog.at_level("WARNING", logger="edge.sources"):
        frames = list(ResilientSource(make_raw_source(source=str(d)), metrics=metrics))
    assert [Path(f.path).name for f in frames] == ["000.png", "001.png", "002.png", "003.png"]
    assert metrics.corrupt == 1 and str(bomb) in caplog.text
    # edge-run: every input accounted for in the frame log, the corrupt one in its place.
    (d / "002b.png").write_bytes(b"")  # zero-byte file: same path
    log = tmp_path / "frames.jsonl"
    summary = run(RunConfig(model=str(model), jsonl=str(log), source=SourceConfig(source=str(d))))
    recs = _strict_lines(log.read_text())
    assert [Path(r["path"]).name for r in recs] == sorted(p.name for p in d.iterdir())
    assert [Path(r["path"]).name for r in recs if r["event"] == "corrupt"] == ["001b.png", "002b.png"]
    assert summary["frames"] == 4 and summary["corrupt"] == 2
    assert set(recs[2]) == set(recs[0]) and recs[2]["frame"] is None and recs[2]["score"] is None


def test_calibrate_skips_undecodable_file(model: Path, tmp_path: Path, capsys) -> None:
    d = _good_images(tmp_path / "imgs", 6)
    _decompression_bomb_png(d / "003b.png")
    rc = calibrate_main(["--model", str(model), "--source", str(d), "--frames", "6", "--log-level", "WARNING"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["corrupt"] == 1 and "003b.png" in err


# ---- 3. non-finite thresholds / statistics in a manifest, strict frame log ---------------------------
@pytest.mark.parametrize("key,value", [("global", float("inf")), ("global", float("nan")),
                                       ("per_category.a", float("-inf")),
                                       ("statistics.global.normal.max", float("nan"))])
def test_non_finite_manifest_threshold_is_rejected(model: Path, tmp_path: Path, capsys, key: str,
                                                   value: float) -> None:
    path = manifest_path_for(model)
    doc = json.loads(path.read_text())
    node = doc["files"]["tiny.onnx"]["threshold"]
    *parents, last = key.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[last] = value
    path.write_text(json.dumps(doc))  # Python writes the NaN / Infinity tokens json.loads accepts
    with pytest.raises(ManifestError, match=rf"tiny.json: threshold.{key} is not a finite number"):
        load_manifest(model)
    assert run_main(["--model", str(model), "--source", str(_good_images(tmp_path / "i", 2))]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "tiny.json" in errors[0] and f"threshold.{key}" in errors[0]


def test_frame_log_never_holds_nan(model: Path, tmp_path: Path, monkeypatch) -> None:
    import edge.runner
    monkeypatch.setattr(edge.runner, "resolve_threshold", lambda *a: float("nan"))  # however it got there
    log = tmp_path / "frames.jsonl"
    run(RunConfig(model=str(model), jsonl=str(log), source=SourceConfig(source=str(_good_images(tmp_path / "i", 3)))))
    recs = _strict_lines(log.read_text())
    assert len(recs) == 3 and all(r["threshold"] is None for r in recs)


# ---- 4. --jsonl that cannot be opened, negative durations/counts -------------------------------------
def test_unwritable_jsonl_is_one_line_error(model: Path, tmp_path: Path, capsys) -> None:
    imgs = str(_good_images(tmp_path / "i", 2))
    for target in (tmp_path / "missing" / "frames.jsonl", tmp_path):
        assert run_main(["--model", str(model), "--source", imgs, "--jsonl", str(target)]) == 2
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and errors[0].startswith(f"error: --jsonl {target}: cannot append"), errors


@pytest.mark.parametrize("flag,value", [("--max-frames", "-1"), ("--duration", "-1"), ("--open-timeout", "-0.5"),
                                        ("--sink-close-timeout", "-1"), ("--overlay-interval", "-1"),
                                        ("--duration", "nan")])
def test_negative_options_are_rejected(model: Path, tmp_path: Path, capsys, flag: str, value: str) -> None:
    imgs = str(_good_images(tmp_path / "i", 1))
    assert run_main(["--model", str(model), "--source", imgs, f"{flag}={value}"]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {flag} ") and "expected >= 0" in errors[0], errors


# ---- 5. a garbage video file fails at once; live sources still retry ---------------------------------
def test_garbage_video_file_fails_fast(model: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    sleeps: list[float] = []
    src = ResilientSource(make_raw_source(source=str(bad)), open_timeout=10.0, sleep=sleeps.append)
    with pytest.raises(SourceOpenError, match="x.mp4: cannot open as a video"):
        next(iter(src))
    assert sleeps == []
    t = time.monotonic()
    assert run_main(["--model", str(model), "--source", str(bad)]) == 2
    assert time.monotonic() - t < 3
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and "x.mp4: cannot open" in errors[0] and "retrying" not in err


# ---- 6. torch-side commands on an edge-only install --------------------------------------------------
TORCH_COMMANDS = {"dcam-train": "train", "dcam-eval": "train", "dcam-export": "export", "dcam-demo": "export"}


def _scripts() -> dict[str, str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("prog", sorted(TORCH_COMMANDS))
def test_torch_commands_without_torch_print_one_line(prog: str, monkeypatch, capsys) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "torch" else real_find_spec(name, *a))
    module, func = _scripts()[prog].split(":")
    assert getattr(importlib.import_module(module), func)() == 2
    err = capsys.readouterr().err
    assert err == (f"error: {prog} needs PyTorch: pip install torch==2.13.0 && "
                   f"pip install 'dcam-edge[{TORCH_COMMANDS[prog]}]'\n")


def test_torch_command_in_a_process_without_torch() -> None:
    module, func = _scripts()["dcam-train"].split(":")
    code = f"import sys; sys.modules['torch'] = None; from {module} import {func}; sys.exit({func}())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: dcam-train needs PyTorch") and \
        len(r.stderr.splitlines()) == 1, r.stderr


# ---- 7. camera credentials never reach logs, errors or the summary -----------------------------------
def test_stream_credentials_never_logged(model: Path, capfd) -> None:
    assert SECRET_URL not in make_raw_source(source=SECRET_URL).description
    rc = run_main(["--model", str(model), "--source", SECRET_URL, "--open-timeout", "1", "--log-level", "DEBUG"])
    out, err = capfd.readouterr()
    assert rc == 2
    errors = _error_lines(err)
    assert len(errors) == 1 and "rtsp://***@127.0.0.1:1/stream: could not be opened" in errors[0]
    assert "retrying" in err and "source rtsp://***@127.0.0.1:1/stream" in err  # retry warning, startup line
    assert "secret" not in err + out


def test_stream_credentials_not_in_summary(model: Path, monkeypatch, capfd) -> None:
    frame = np.full((12, 12, 3), 127, np.uint8)
    monkeypatch.setattr(OpenCvSource, "open", lambda self: None)
    monkeypatch.setattr(OpenCvSource, "read", lambda self: (frame, None))
    monkeypatch.setattr(OpenCvSource, "close", lambda self: None)
    rc = run_main(["--model", str(model), "--source", SECRET_URL, "--max-frames", "3", "--no-latest-only",
                   "--log-level", "INFO"])
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert '"source": "rtsp://***@127.0.0.1:1/stream"' in err and "secret" not in err + out

"""bench.soak: a short run with the generated model (JSON shape, positive RSS/latency, alarms, sinks) and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")  # the generated model is built with it

ROOT = Path(__file__).resolve().parents[1]


def test_soak_200_frames_generated_model(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "bench.soak", "--frames", "200", "--image-size", "64", "--frame-size", "160x120",
           "--defect-every", "50", "--defect-len", "8", "--rss-every", "50", "--threads", "1", "--no-progress",
           "--snapshot-dir", str(tmp_path / "snaps"), "--with-webhook", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "bench.soak: 200 frames" in proc.stdout and "latency ms" in proc.stdout

    r = json.loads(out.read_text())
    assert r["frames"] == 200 and r["stopped_by"] == "max-frames" and r["latency_frames"] == 200
    assert r["model"]["generated"] and r["model"]["engine"]["input_shape"] == [1, 3, 64, 64]
    rss = r["rss_mb"]
    for key in ("before_run", "start", "mid", "end", "after_close", "peak"):
        assert rss[key] > 0, key
    assert [s["frame"] for s in r["rss_series"]] == [1, 50, 100, 150, 200]
    assert all(s["rss_mb"] > 0 for s in r["rss_series"])
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["fps"] > 0 and r["runner_latency_ms"]["p50"] > 0
    # 4 defect episodes (frames 42-49, 92-99, ...): each raises once and clears before the next.
    assert r["defect_episodes"] == 4 and r["alarms"] == 4 and r["clears"] >= 3
    assert r["dropped"] == 0 and r["sink_errors"] == 0 and r["frame_log"]["lines"] == 200
    assert r["sinks"]["snapshot"]["handled"] >= 7  # raise + clear events (on_clear), no failures
    assert r["sinks"]["webhook"]["delivered"] == r["webhook_receiver"]["unique_ids"] >= 7


@pytest.mark.parametrize("args, message", [
    (["--frames", "0"], "error: --frames 0: expected >= 1"),
    (["--frame-size", "abc"], "error: --frame-size 'abc': expected WxH or N (pixels)"),
    (["--model", "missing.onnx"], "error: --model missing.onnx: file not found"),
])
def test_soak_bad_input_one_error_line_exit_2(args: list[str], message: str, capsys) -> None:
    from bench.soak import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == message

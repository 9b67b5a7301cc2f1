"""edge-run on a video file whose defect frames are known: alarms exactly over the defect segments."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from test_edge_runtime import make_tiny_onnx, write_tiny_manifest

from edge.cli import run_main

SEGMENTS = [(10, 14), (30, 37)]  # inclusive frame ranges with a defect in view
N_FRAMES = 50


def write_video(path: Path) -> None:
    """Mid-grey textured frames; inside SEGMENTS a white blob (the tiny model scores it ≈1, others ≈0)."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    for i in range(N_FRAMES):
        frame = rng.integers(110, 146, (64, 64, 3)).astype(np.uint8)
        if any(a <= i <= b for a, b in SEGMENTS):
            cv2.circle(frame, (20 + i % 20, 32), 9, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()


def test_alarms_raised_exactly_over_defect_segments(tmp_path: Path) -> None:
    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    write_tiny_manifest(model, threshold=0.5)
    video = tmp_path / "line.avi"
    write_video(video)
    jsonl = tmp_path / "frames.jsonl"
    rc = run_main(["--model", str(model), "--source", str(video), "--jsonl", str(jsonl), "--raise-k", "2",
                   "--raise-n", "3", "--clear-m", "3", "--snapshot-dir", str(tmp_path / "snaps"),
                   "--log-level", "WARNING"])
    assert rc == 0
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [e["frame"] for e in events] == list(range(N_FRAMES))
    above = [e["frame"] for e in events if e["score"] > e["threshold"]]
    assert above == [i for a, b in SEGMENTS for i in range(a, b + 1)]
    raises = [e["frame"] for e in events if e["event"] == "raise"]
    clears = [e["frame"] for e in events if e["event"] == "clear"]
    # k=2 of n=3 raises on the second defect frame; m=3 clean frames clear it; one raise per defect.
    assert raises == [a + 1 for a, _ in SEGMENTS]
    assert clears == [b + 3 for _, b in SEGMENTS]
    alarm_frames = [e["frame"] for e in events if e["alarm"]]
    assert alarm_frames == [i for a, b in SEGMENTS for i in range(a + 1, b + 3)]
    snapshots = sorted((tmp_path / "snaps").rglob("*.*"))
    assert len([p for p in snapshots if p.suffix in (".jpg", ".png")]) >= 2 * len(SEGMENTS)

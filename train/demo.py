"""`dcam-demo`: the whole product on built-in synthetic data — no camera, dataset or network needed.

synthetic MVTec data → dcam-train → dcam-eval → dcam-export → a conveyor video with known defect
frames → edge-run (alarms, JSON lines, snapshots). Every step is the public command, printed first.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.cliconfig import ConfigCli, option, run_cli
from train.data import list_test_samples


@dataclass
class DemoConfig:
    """dcam-demo options (one field per CLI flag and ``--config`` key)."""

    out: str = option("demo", "directory for everything the demo writes")
    backbone: str = option("efficientnet_lite0", "teacher/student backbone")
    image_size: int = option(128, "image side in pixels")
    train_seconds: float = option(150.0, "training time budget on CPU")
    model: str = option("dcam.int8.xml", "which exported file edge-run uses")
    frames_per_part: int = option(4, "a part stays in view for this many frames")
    seed: int = option(0, "seed of the synthetic data and the conveyor video")


CLI = ConfigCli(DemoConfig, "dcam-demo", __doc__.splitlines()[0])


def run_step(argv: list[str]) -> None:
    """Print the command (as a user would type it) and run it; stop the demo if it fails."""
    print(f"\n$ {shlex.join(argv)}", flush=True)
    tool, *args = argv
    module = {"dcam-train": "train", "dcam-eval": "train.evaluate", "dcam-export": "export.cli",
              "edge-run": "edge.cli"}.get(tool)
    cmd = [sys.executable, "-m", module, *(["run"] if tool == "edge-run" else []), *args] if module else argv
    if subprocess.call(cmd) != 0:
        raise SystemExit(f"error: demo step failed: {shlex.join(argv)}")


def _read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise ValueError(f"{path}: cannot read image")
    return image


def write_conveyor_video(data: Path, category: str, path: Path, frames_per_part: int, seed: int
                         ) -> list[tuple[int, int]]:
    """A video of parts passing the camera (test images, good and defective); returns the defect frame segments.

    Each part is shown for `frames_per_part` frames; a defective part appears after every few good ones.
    """
    samples = list_test_samples(data, [category])
    good = [s for s in samples if s.label == 0]
    bad = [s for s in samples if s.label == 1]
    rng = np.random.default_rng(seed)
    order = []
    for i in range(3):  # good, good, good, defect, ... ends on good parts
        order += [good[(3 * i + j) % len(good)] for j in range(3)] + [bad[int(rng.integers(len(bad)))]]
    order += [good[-1]]
    first = _read_bgr(order[0].path)
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (w, h))
    segments, frame = [], 0
    for sample in order:
        image = cv2.resize(_read_bgr(sample.path), (w, h))
        for _ in range(frames_per_part):
            writer.write(image)
        if sample.label == 1:
            segments.append((frame, frame + frames_per_part - 1))
        frame += frames_per_part
    writer.release()
    return segments


def summarize_alarms(jsonl: Path, segments: list[tuple[int, int]], debounce: int = 3) -> str:
    """Compare edge-run's alarms with the known defect segments (a defective part counts as caught when the
    alarm is on while it is in view, allowing `debounce` frames of delay)."""
    lines = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    alarm_frames = {e["frame"] for e in lines if e.get("alarm")}
    raises = [e["frame"] for e in lines if e.get("event") == "raise"]
    windows = [range(a, b + debounce + 1) for a, b in segments]
    caught = sum(any(f in alarm_frames for f in w) for w in windows)
    false_alarms = [r for r in raises if not any(r in w for w in windows)]
    return (f"{len(lines)} frames scored; defect segments {segments}; alarms raised at frames {raises}; "
            f"caught {caught}/{len(segments)} defective parts, {len(false_alarms)} false alarm(s)")


def main(argv: list[str] | None = None) -> int:
    """``dcam-demo``: bad options → one error line, exit status 2."""
    return run_cli(lambda: _demo(CLI.parse(argv)))


def _demo(cfg: DemoConfig) -> int:
    out = Path(cfg.out)
    data, run, models = out / "data", out / "run", out / "models"
    run_step([sys.executable, "-m", "train.synthetic", "--out", str(data), "--image-size", str(cfg.image_size),
              "--seed", str(cfg.seed), "--overwrite"])
    run_step(["dcam-train", "--data", str(data), "--categories", "all", "--method", "dcam", "--backbone", cfg.backbone,
              "--image-size", str(cfg.image_size), "--time-budget-s", str(cfg.train_seconds), "--no-resume",
              "--out", str(run)])
    run_step(["dcam-eval", "--run", str(run), "--data", str(data), "--json", str(out / "eval.json"),
              "--visualize", str(out / "visualize")])
    # The int8 accuracy guard is judged on this tiny test split (90 images), where one AUROC point is a few
    # image pairs: the demo reports a failed file instead of stopping; edge-run below uses cfg.model.
    # Demo thresholds are F1-optimal on the labelled synthetic test split (the parts the video shows); on a real
    # line use the default --threshold-mode fpr and re-calibrate on site with edge-calibrate.
    run_step(["dcam-export", "--run", str(run), "--formats", "onnx,openvino,tflite", "--precisions", "fp32,int8",
              "--out", str(models), "--allow-accuracy-drop", "--threshold-mode", "f1"])
    category = sorted(p.name for p in data.iterdir() if p.is_dir())[0]
    video = out / "conveyor.avi"
    segments = write_conveyor_video(data, category, video, cfg.frames_per_part, cfg.seed)
    (out / "conveyor.json").write_text(json.dumps({"category": category, "defect_segments": segments}))
    print(f"\nwrote {video}: {category} parts, defective parts at frames {segments}")
    jsonl = out / "frames.jsonl"
    run_step(["edge-run", "--source", str(video), "--model", str(models / cfg.model), "--category", category,
              "--jsonl", str(jsonl), "--snapshot-dir", str(out / "snapshots")])
    print("\n" + summarize_alarms(jsonl, segments))
    print(f"snapshots of every alarm: {out / 'snapshots'}; per-image heatmaps: {out / 'visualize'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

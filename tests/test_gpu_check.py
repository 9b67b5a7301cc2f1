"""bench.gpu_check's plumbing on CPU (the GPU run itself needs a CUDA machine): steps, kill-and-resume, report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_gpu_check_runs_its_steps_resumes_a_killed_run_and_reports(synthetic_root, tmp_path: Path) -> None:
    from bench.gpu_check import main

    out = tmp_path / "gc"
    code = main(["--out", str(out), "--data", str(synthetic_root), "--device", "cpu", "--image-size", "64",
                 "--epochs", "1", "--max-steps", "1", "--batch-size", "8", "--steps", "train,ddp,resume,eval",
                 "--time-limit", "300"])
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 0, report
    steps = report["steps"]
    assert steps["train"]["status"] == "ok" and steps["train"]["epochs"] == 1 and steps["train"]["images_per_s"] > 0
    assert steps["ddp"]["status"].startswith("skipped")  # no second GPU here
    assert steps["resume-killed"]["status"] == "killed as planned"
    assert steps["resume"]["resumed_to_all_epochs"] is True
    assert 0.0 <= report["metrics"]["image_auroc"] <= 1.0
    assert "| resume | ok |" in (out / "gpu_check.md").read_text()


def test_gpu_check_names_an_unknown_step() -> None:
    from bench.gpu_check import GpuCheckConfig
    with pytest.raises(ValueError, match="--steps: unknown warp"):
        GpuCheckConfig(steps="train,warp")

"""``python -m bench.gpu_check``: the GPU training path, proven end to end within a fixed time limit.

    python -m bench.gpu_check --out /tmp/gpu-check                 # on a CUDA machine: ≤ 10 minutes
    python -m bench.gpu_check --device cpu --image-size 64 --epochs 1 --max-steps 2   # the plumbing, on CPU

Steps, each a console script run as a user runs it (so what is proven is the product, not a test harness):
data (the real-photo set, ``bench.photoset``) → unified dcam training with AMP + channels-last, compile off and
on → a 2-process NCCL DDP run when the machine has two GPUs → resume after a kill (the run is killed once its
first epoch's checkpoint exists, then the same command finishes it) → ``dcam-eval`` → ``dcam-export`` of every
file (fp32, fp16 for the GPU, int8) → ``bench-latency --device cuda,tensorrt``. Prints and writes
(``OUT/gpu_check.json``, ``.md``) images/s,
seconds per epoch, peak GPU memory, the metrics and each step's status; a step that fails or runs out of time is
reported with its log and the rest still run. The time limit is shared: each step gets what is left.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.cliconfig import ConfigCli, option, run_cli
from edge.jsonsafe import write_json

STEPS = ("data", "train", "compile", "ddp", "resume", "eval", "export", "latency")


@dataclass
class GpuCheckConfig:
    """bench.gpu_check options."""

    out: str = option("gpu-check", "output directory (data, runs, exports, gpu_check.json/.md)")
    data: str = option("", "MVTec-layout data set (default: build the real-photo set under OUT/data)")
    device: str = option("cuda", "cuda (the check) or cpu (the plumbing only)")
    epochs: int = option(3, "epochs per training run")
    image_size: int = option(256, "image side in pixels")
    batch_size: int = option(32, "global batch size")
    max_steps: int = option(0, "cap optimisation steps per epoch (0 = full epochs)")
    time_limit: float = option(600.0, "seconds for all steps together")
    steps: str = option(",".join(STEPS), "comma-separated subset of " + ",".join(STEPS))

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps.split(",") if s and s not in STEPS]
        if unknown:
            raise ValueError(f"--steps: unknown {', '.join(unknown)}; expected some of {', '.join(STEPS)}")
        if self.epochs < 1 or self.time_limit <= 0:
            raise ValueError("--epochs and --time-limit must be positive")


class Check:
    """Runs the steps against one shared deadline and collects what each measured."""

    def __init__(self, cfg: GpuCheckConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.deadline = time.monotonic() + cfg.time_limit
        self.report: dict[str, Any] = {"device": cfg.device, "steps": {}}

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def run(self, name: str, cmd: list[str], kill_when: Path | None = None) -> bool:
        """One subprocess with the time left (or killed once ``kill_when`` exists); records status and log."""
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            status = "ok"
            while proc.poll() is None:
                if kill_when is not None and kill_when.exists():
                    os.killpg(proc.pid, signal.SIGKILL)
                    status = "killed as planned"
                    break
                if time.monotonic() > self.deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    status = "out of time"
                    break
                time.sleep(0.5)
            proc.wait()
        if status == "ok" and proc.returncode != 0:
            status = f"failed (exit {proc.returncode})"
        self.report["steps"][name] = {"status": status, "seconds": round(time.monotonic() - t0, 1), "log": str(log)}
        return status in ("ok", "killed as planned")

    def train_cmd(self, run: str, *extra: str, epochs: int | None = None) -> list[str]:
        cfg = self.cfg
        return [sys.executable, "-m", "train", "--data", self.data, "--categories", "all", "--method", "dcam",
                "--backbone", "efficientnet_lite0", "--image-size", str(cfg.image_size),
                "--epochs", str(epochs or cfg.epochs), "--batch-size", str(cfg.batch_size), "--device", cfg.device,
                "--cache-images", "--num-workers", "2", "--max-steps-per-epoch", str(cfg.max_steps),
                "--out", str(self.out / "runs" / run), *extra]

    def record_training(self, name: str, run: str) -> None:
        history_path = self.out / "runs" / run / "history.json"
        if not history_path.is_file():
            return
        history = json.loads(history_path.read_text())
        step = self.report["steps"][name]
        step["epochs"] = len(history)
        step["images_per_s"] = round(max(r.get("train_images_per_s", 0.0) for r in history), 1)
        step["epoch_s"] = round(min(r.get("seconds", float("inf")) for r in history), 2)
        step["peak_gpu_mem_mb"] = max((r.get("train_peak_gpu_mem_mb", 0.0) for r in history), default=0.0)

    @property
    def data(self) -> str:
        return self.cfg.data or str(self.out / "data")


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_check(cfg: GpuCheckConfig) -> dict[str, Any]:
    check = Check(cfg)
    steps = [s for s in cfg.steps.split(",") if s]
    amp = ["--amp", "auto", "--channels-last"] if cfg.device.startswith("cuda") else []
    check.report["gpus"] = gpu_count()
    if "data" in steps and not cfg.data:
        check.run("data", [sys.executable, "-m", "bench.photoset", "--out", check.data,
                           "--categories", "brick,coffee,grass"])
    if "train" in steps and check.run("train", check.train_cmd("amp", *amp)):
        check.record_training("train", "amp")
    if "compile" in steps and check.run("compile", check.train_cmd("compile", *amp, "--compile")):
        check.record_training("compile", "compile")
    if "ddp" in steps:
        if check.report["gpus"] >= 2:
            if check.run("ddp", check.train_cmd("ddp", *amp, "--nproc", "2")):
                check.record_training("ddp", "ddp")
        else:
            check.report["steps"]["ddp"] = {"status": f"skipped ({check.report['gpus']} GPU)"}
    if "resume" in steps:
        first_checkpoint = check.out / "runs" / "resume" / "last.pt"
        cmd = check.train_cmd("resume", *amp, epochs=cfg.epochs + 1)
        if check.run("resume-killed", cmd, kill_when=first_checkpoint) and check.run("resume", cmd):
            check.record_training("resume", "resume")
            check.report["steps"]["resume"]["resumed_to_all_epochs"] = \
                check.report["steps"]["resume"].get("epochs") == cfg.epochs + 1
    run_dir = check.out / "runs" / "amp"
    if "eval" in steps and check.run("eval", [sys.executable, "-m", "train.evaluate", "--run", str(run_dir),
                                              "--data", check.data, "--device", cfg.device,
                                              "--json", str(check.out / "eval.json")]):
        check.report["metrics"] = json.loads((check.out / "eval.json").read_text())["mean"]
    export_dir = check.out / "export"
    if "export" in steps:
        check.run("export", [sys.executable, "-m", "export.cli", "--run", str(run_dir), "--out", str(export_dir),
                             "--precisions", "fp32,fp16,int8", "--allow-accuracy-drop"])
    if "latency" in steps:
        devices = "cuda,tensorrt" if cfg.device.startswith("cuda") else "cpu"
        check.run("latency", [sys.executable, "-m", "bench.cli", "--models", str(export_dir), "--device", devices,
                              "--threads", "2", "--runs", "50", "--e2e-runs", "0", "--no-eager",
                              "--markdown", str(check.out / "latency.md")])
    return check.report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU training check ({report['device']}, {report.get('gpus', 0)} GPU)", "",
             "| step | status | s | epochs | images/s | epoch s | peak GPU MB |", "|---|---|---|---|---|---|---|"]
    for name, step in report["steps"].items():
        cells = [step.get(k, "") for k in ("seconds", "epochs", "images_per_s", "epoch_s", "peak_gpu_mem_mb")]
        lines.append(f"| {name} | {step['status']} | " + " | ".join(str(c) for c in cells) + " |")
    if "metrics" in report:
        m = report["metrics"]
        lines += ["", f"metrics: image AUROC {m.get('image_auroc')}, pixel AUROC {m.get('pixel_auroc')}, "
                      f"AUPRO {m.get('aupro')}"]
    return "\n".join(lines) + "\n"


CLI = ConfigCli(GpuCheckConfig, "bench.gpu_check", __doc__.split("\n\n")[0])


def _main(argv: Sequence[str] | None) -> int:
    cfg = CLI.parse(argv)
    report = run_check(cfg)
    out = Path(cfg.out)
    write_json(out / "gpu_check.json", report, indent=1)
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    failed = [n for n, s in report["steps"].items() if not str(s["status"]).startswith(("ok", "killed", "skipped"))]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())

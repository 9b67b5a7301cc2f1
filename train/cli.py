"""`dcam-train`: flags and ``--config FILE.toml`` keys generated 1:1 from TrainConfig / ModelConfig fields.

    dcam-train --data DIR --categories all --method dcam --backbone resnet18 --epochs 400 --out runs/dcam
    dcam-train --config train.toml --epochs 20   # the file's keys are the flags' names; flags override it
    dcam-train --nproc 2 ...            # = torchrun --nproc_per_node=2 -m train ...
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from edge.cliconfig import ConfigCli, group, option, run_cli

from .config import TrainConfig
from .models import METHODS

HELP = {
    "data": "dataset root in MVTec AD layout (<category>/train/good, test/<defect>, ground_truth/<defect>)",
    "categories": "'all' or a comma-separated list; one model is trained for all of them",
    "out": "run directory (checkpoints, config.json, history); an existing run there is resumed",
    "method": f"distillation method: {', '.join(METHODS)}",
    "backbone": "teacher/student backbone: resnet18, resnet50, wide_resnet50_2, efficientnet_lite0/1/2 "
                "(default: the method's paper teacher: resnet18 stfpm/dcam/knn, wide_resnet50_2 rd family)",
    "student_backbone": "stfpm/dcam: the random-init student's architecture (default: the teacher's); its taps need "
                        "the teacher's channels and input normalisation",
    "student_denoise": "stfpm/dcam: fraction of training images the student sees with a synthetic anomaly pasted in, "
                       "held to the teacher's features of the clean image (DeSTSeg's denoising student; 0 = off)",
    "teacher_weights": "local file with the teacher's torchvision/ImageNet weights (else downloaded once and cached)",
    "attention": "DCAM attention during training: none, channel, spatial, both (default: method preset)",
    "attention_at_inference": "keep the DCAM attention in the inference graph (the paper drops it)",
    "attention_placement": "branch: attention refines the tapped maps on the side (the paper); inline: inserted "
                           "into the student after each stage (CBAM's use)",
    "blur_sigma": "Gaussian blur sigma on the anomaly map before the image max "
                  "(0 = off; default: method preset, 6 dcam, 4 stfpm and the rd family)",
    "kl_reduction": "'sum' over positions/channels as in the paper's KL equations, or 'mean'",
    "loss_mse_mode": "the MSE term: normalized (STFPM, unit vectors along channels) or raw (plain feature MSE)",
    "level_fusion": "combine the upsampled level maps by sum (DCAM) or product (STFPM's paper)",
    "level_normalize": "weight each level's map by 1 / its normal spread on the validation images (EfficientAD)",
    "level_scale": "with --level-normalize: a factor on each teacher level's normalised map, three values for "
                   "stride 4, 8 and 16 (default: method preset; dcam 1 0.5 1)",
    "augment": "training normals: none, flip (random flips), dihedral (flips and quarter turns), photometric "
               "(brightness and contrast jittered by ±20 %)",
    "resize": "downscaling: area (OpenCV INTER_AREA), pyramid (2-pixel box halvings, then bilinear: antialiased "
              "like area, several times faster on large camera frames) or linear (plain bilinear)",
    "fit": "non-square images: stretch, letterbox (pad with the mean) or center-crop",
    "decode": "image files: reduced (a JPEG at 1/2, 1/4 or 1/8 size when that still covers the input: several "
              "times faster, about a grey level from a full decode on average) or full",
    "grad_clip_norm": "clip the global gradient L2 norm to this (0 = off)",
    "weight_decay": "L2 regularisation for SGD and Adam (default: method's paper setting: 1e-4 stfpm/dcam, 0 rd)",
    "device": "auto, cpu or cuda[:N]",
    "amp": "mixed precision on GPU: auto (bf16 if supported else fp16), bf16, fp16, off",
    "max_steps_per_epoch": "cap the optimisation steps per epoch (0 = whole epoch)",
    "time_budget_s": "stop after the epoch that exceeds this many seconds (0 = no limit)",
    "channels_last": "NHWC activations (faster convolutions on CPU oneDNN and CUDA; --no-channels-last = NCHW)",
    "cache_images": "keep decoded, preprocessed images in memory",
    "optimizer": "sgd or adam (default: method's paper setting)",
    "lr": "learning rate (default: method's paper setting)",
    "epochs": "epochs (default: method's paper setting: 400 stfpm/dcam, 200 rd family)",
    "batch_size": "global batch size, split over --nproc processes (default: 32 stfpm/dcam, 16 rd family)",
}


@dataclass
class TrainCommand:
    """dcam-train's options: the launcher's ``--nproc``, then every TrainConfig / ModelConfig field (top-level
    flags and keys; ``[model]`` / ``[model.rd]`` tables in the file)."""

    nproc: int = option(1, "processes to launch with torchrun (DDP); 1 = this process")
    train: TrainConfig = group(TrainConfig, title="training")


CLI = ConfigCli(TrainCommand, "dcam-train", "Distil a student on normal images (one model for many categories).",
                help=HELP)


def build_parser() -> argparse.ArgumentParser:
    """dcam-train's argparse parser (``--config FILE.toml`` + one flag per field)."""
    return CLI.build_parser()


def command_from_args(ns: argparse.Namespace) -> TrainCommand:
    """The launcher options and the TrainConfig of parsed flags and their ``--config`` file."""
    command = CLI.config_from_args(ns)
    if not command.train.data:
        raise ValueError("--data is required (a dataset root in MVTec AD layout)")
    return command


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags and their ``--config`` file."""
    return command_from_args(ns).train


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """`dcam-train --nproc N ...` = `torchrun --nproc_per_node=N -m train ...` (PyTorch's own launcher)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "train", *rest]
    return subprocess.call(cmd)


def _train(argv: list[str]) -> int:
    command = command_from_args(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if command.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _launch_torchrun(command.nproc, argv)
    cfg = command.train
    from .trainer import train  # heavy imports after argument errors are reported
    try:
        run_dir = train(cfg)
    except KeyboardInterrupt:
        print(f"interrupted: re-run the same command to resume from {cfg.out}/last.pt", file=sys.stderr)
        return 130
    print(f"run saved to {run_dir}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``dcam-train``: bad options or data (RunError, MVTecLayoutError, ...) and a diverged loss → one error line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: _train(argv), errors=(ValueError, FloatingPointError))


if __name__ == "__main__":
    sys.exit(main())

"""`dcam-train`: command-line flags generated 1:1 from TrainConfig / ModelConfig fields.

    dcam-train --data DIR --categories all --method dcam --backbone resnet18 --epochs 400 --out runs/dcam
    dcam-train --nproc 2 ...            # = torchrun --nproc_per_node=2 -m train ...
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import typing
from typing import Any

from .config import ModelConfig, TrainConfig
from .models import METHODS

HELP = {
    "data": "dataset root in MVTec AD layout (<category>/train/good, test/<defect>, ground_truth/<defect>)",
    "categories": "'all' or a comma-separated list; one model is trained for all of them",
    "out": "run directory (checkpoints, config.json, history); an existing run there is resumed",
    "method": f"distillation method: {', '.join(METHODS)}",
    "backbone": "teacher/student backbone: resnet18, wide_resnet50_2, efficientnet_lite0",
    "teacher_weights": "local file with the teacher's torchvision/ImageNet weights (else downloaded once and cached)",
    "attention": "DCAM attention during training: none, channel, spatial, both (default: method preset)",
    "attention_at_inference": "keep the DCAM attention in the inference graph (the paper drops it)",
    "blur_sigma": "Gaussian blur sigma on the anomaly map before the image max (0 = off; default 0 for stfpm/dcam, 4 for rd/dskd/mrkd)",
    "kl_reduction": "'sum' over positions/channels as in the paper's KL equations, or 'mean'",
    "device": "auto, cpu or cuda[:N]",
    "amp": "mixed precision on GPU: auto (bf16 if supported else fp16), bf16, fp16, off",
    "max_steps_per_epoch": "cap the optimisation steps per epoch (0 = whole epoch)",
    "time_budget_s": "stop after the epoch that exceeds this many seconds (0 = no limit)",
    "cache_images": "keep decoded, preprocessed images in memory",
    "optimizer": "sgd or adam (default: method's paper setting)",
    "lr": "learning rate (default: method's paper setting)",
    "epochs": "epochs (default: method's paper setting: 400 stfpm/dcam, 200 rd family)",
    "batch_size": "global batch size, split over --nproc processes (default: 32 stfpm/dcam, 16 rd family)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fields(parser: argparse.ArgumentParser, cls: type, skip: set[str], dest: str = "", prefix: str = "") -> None:
    """One flag per dataclass field; a method's option group (ModelConfig.rd, ...) becomes --rd-<option>."""
    hints = typing.get_type_hints(cls)
    dest = dest or cls.__name__
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            _add_fields(parser, hint, set(), f"{dest}.{field.name}", f"{prefix}{field.name}_")
            continue
        name = prefix + field.name
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs: dict[str, Any] = {"dest": f"{dest}.{field.name}", "default": argparse.SUPPRESS,
                                  "help": f"{HELP.get(name, name.replace('_', ' '))} (default: {default})"}
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
        if base is not bool:
            kwargs["metavar"] = name.upper()
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            items = typing.get_args(base)
            kwargs.update(nargs="+" if Ellipsis in items else len(items), type=items[0])
        else:
            kwargs["type"] = base
        parser.add_argument(_flag(name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcam-train", description="Distil a student on normal images (one model for many categories).")
    parser.add_argument("--nproc", type=int, default=1, help="processes to launch with torchrun (DDP); 1 = this process")
    _add_fields(parser.add_argument_group("training"), TrainConfig, skip={"model"})
    _add_fields(parser.add_argument_group("model"), ModelConfig, skip=set())
    return parser


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    train_kwargs: dict[str, Any] = {}
    model_kwargs: dict[str, Any] = {}
    for key, value in vars(ns).items():
        owner, _, path = key.partition(".")
        target = {"TrainConfig": train_kwargs, "ModelConfig": model_kwargs}.get(owner)
        if target is None:
            continue
        *groups, name = path.split(".")
        for group in groups:  # a method's option group: ModelConfig.rd.loss_mode → model_kwargs["rd"]["loss_mode"]
            target = target.setdefault(group, {})
        target[name] = value
    if not train_kwargs.get("data"):
        raise ValueError("--data is required (a dataset root in MVTec AD layout)")
    return TrainConfig(model=ModelConfig(**model_kwargs), **train_kwargs)


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """`dcam-train --nproc N ...` = `torchrun --nproc_per_node=N -m train ...` (PyTorch's own launcher)."""
    rest, skip = [], False
    for i, arg in enumerate(argv):
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if ns.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _launch_torchrun(ns.nproc, argv)
    try:
        cfg = config_from_args(ns)
        from .trainer import train  # heavy imports after argument errors are reported
        run_dir = train(cfg)
    except (ValueError, FloatingPointError) as exc:  # includes RunError, MVTecLayoutError, ImageReadError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: re-run the same command to resume from {cfg.out}/last.pt", file=sys.stderr)
        return 130
    print(f"run saved to {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

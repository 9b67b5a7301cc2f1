"""Run directory: config.json, best.pt (lowest validation loss, full model), last.pt (resume), history.

Checkpoints hold only tensors and plain Python values so ``torch.load(weights_only=True)`` reads them.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from edge.preprocess import PreprocessSpec

from .backbones import BACKBONE_NORMALIZATION
from .config import TrainConfig
from .models import DistillationModel, build_model

CONFIG_FILE = "config.json"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used; the message names the file."""


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The input spec a run's model expects (image size + its backbone's normalisation)."""
    return PreprocessSpec.for_normalization(BACKBONE_NORMALIZATION[cfg.model.backbone], cfg.image_size, cfg.resize,
                                            cfg.fit, cfg.decode)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file then rename, so a kill mid-write never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_config(run_dir: Path, cfg: TrainConfig) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2))


def load_config(run_dir: str | Path) -> TrainConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run directory not found (expected the --out directory of dcam-train)")
    path = run_dir / CONFIG_FILE
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise RunError(f"{path}: missing; {run_dir} is not a dcam-train run directory") from None
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise RunError(f"{path}: not a valid run config ({exc})") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True) with a one-line error naming the file when it is missing or corrupt."""
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found (has training saved a best model yet?)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise RunError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise RunError(f"{path}: not a dcam-train checkpoint (no 'model' state)")
    return checkpoint


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             checkpoint: str = BEST_CHECKPOINT) -> tuple[DistillationModel, TrainConfig]:
    """Rebuild the model of a run from its config and best checkpoint, in eval mode on `device`."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    state = load_checkpoint(run_dir / checkpoint)
    # The checkpoint already holds the teacher's weights: don't fetch pretrained files again.
    model = build_model(dataclasses.replace(cfg.model, pretrained=False, teacher_weights=None))
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise RunError(f"{run_dir / checkpoint}: weights do not match the run's config ({first})") from None
    return model.to(device).eval(), cfg

"""The paper-style eager PyTorch pipeline that exported files are compared with (imported only with torch).

STFPM / DCAM inference as the papers' reference code runs it: teacher and student are two separate
eager forwards, then per level the 1 − cosine distance along channels, bilinear upsampling to the
input size and the sum over levels (DCAM §4.3: Ω(I) = Σ_k Upsample(1 − cos(f_t^k, f_s^k))), all in fp32;
the map leaves torch and the image score (max over pixels) is taken in numpy. No fusion, no graph
optimiser, no quantisation: this is what "before export" costs.

Weights: with a run directory (``--run``) the trained teacher and student are loaded; otherwise the
architecture named in the manifest (method, backbone, image size) is built with random weights —
the arithmetic and memory traffic, hence the latency, do not depend on the weight values.
Methods whose model has no ``teacher``/``student`` pair (reverse distillation decodes the teacher's
features) fall back to the model's own ``inference_model()`` in eager mode, labelled "fused".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from train.models.base import DistillationModel


class EagerError(ValueError):
    """The eager baseline cannot be built (unknown method/backbone, run does not match the files)."""


@dataclass
class EagerPipeline:
    """x (N×3×S×S float32 numpy) → (anomaly_map N×1×S×S, score N), paper-style; ``style`` is "paper" or "fused"."""

    teacher: nn.Module | None
    student: nn.Module | None
    fused: nn.Module | None
    image_size: int
    style: str
    source: str

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.fused is not None:
            amap, _ = self.fused(images)
        else:
            assert self.teacher is not None and self.student is not None  # the "paper" style has both
            teacher_features = self.teacher(images)
            student_features = self.student(images)
            amap = None
            for ft, fs in zip(teacher_features, student_features):
                distance = 1.0 - F.cosine_similarity(ft, fs, dim=1).unsqueeze(1)
                up = F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False)
                amap = up if amap is None else amap + up
        anomaly_map = amap.numpy()
        # The score leaves torch: max over pixels in numpy, as the reference evaluation scripts do.
        return anomaly_map, anomaly_map.reshape(anomaly_map.shape[0], -1).max(axis=1)


def _pipeline_from_model(model: DistillationModel, image_size: int, source: str) -> EagerPipeline:
    model.eval()
    teacher, student = getattr(model, "teacher", None), getattr(model, "student", None)
    if isinstance(teacher, nn.Module) and isinstance(student, nn.Module):
        return EagerPipeline(teacher.eval(), student.eval(), None, image_size, "paper", source)
    return EagerPipeline(None, None, model.inference_model().eval(), image_size, "fused", source)


def build_eager(method: str, backbone: str, image_size: int, run_dir: str | None = None) -> EagerPipeline:
    """Eager pipeline for ``method``/``backbone``: the run's trained weights if ``run_dir``, else random ones."""
    if run_dir:
        from train.runs import load_run
        model, cfg = load_run(run_dir)
        if (cfg.model.method, cfg.model.backbone, cfg.image_size) != (method, backbone, image_size):
            raise EagerError(f"--run {run_dir}: the run is {cfg.model.method}/{cfg.model.backbone} at "
                             f"{cfg.image_size}px but the model files are {method}/{backbone} at {image_size}px")
        return _pipeline_from_model(model, image_size, f"trained weights of {run_dir}")
    from train.config import ModelConfig
    from train.models import build_model
    try:
        model = build_model(ModelConfig(method=method, backbone=backbone, pretrained=False))
    except ValueError as e:
        raise EagerError(f"cannot build the eager {method}/{backbone} model ({e})") from None
    return _pipeline_from_model(model, image_size, "random weights, same architecture (latency does not "
                                                   "depend on weight values)")


def set_threads(threads: int) -> None:
    """Pin torch's intra-op pool to ``threads`` (one graph at a time: no inter-op pool)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; harmless if already set
        pass


def describe(pipeline: EagerPipeline) -> dict[str, Any]:
    return {"style": pipeline.style, "weights": pipeline.source, "torch": torch.__version__}

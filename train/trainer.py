"""The training loop: distil the student(s) on normal images, keep the lowest-validation-loss checkpoint,
resume after an interruption (losing at most one epoch), single process or DDP under torchrun."""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .augment import augment_batch, augment_generator
from .config import TrainConfig
from .data import ImageDataset, parse_categories, training_split
from .device import keep_freed_cpu_memory, resolve_device
from .distributed import GlobalBatchSampler, barrier, convert_batchnorm, init_distributed, shutdown
from .models import DistillationModel, build_model
from .runs import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    RunError,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    load_config,
    preprocess_spec,
    save_config,
)

log = logging.getLogger("train")

# Settings that must not change when resuming a run (others, like --epochs, may).
# What a resumed run must keep: its data, split and batches, and the preprocessing its student has learnt on.
RESUME_INVARIANTS = ("data", "categories", "image_size", "batch_size", "seed", "val_fraction", "decode", "resize",
                     "fit")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision: on CUDA "auto" = bf16 where supported, else fp16 (with a GradScaler).

    On CPU only an explicit "bf16" enables autocast (useful on AMX CPUs); "auto" stays fp32 there.
    """
    if setting not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"--amp: expected auto, bf16, fp16 or off, got {setting!r}")
    if setting == "off":
        return None
    if device.type != "cuda":
        if setting == "fp16":
            raise ValueError("--amp fp16 needs a CUDA device (use bf16 or off on CPU)")
        return torch.bfloat16 if setting == "bf16" else None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scheduled_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimisation step `step` (0-based) of `total_steps` under cfg.lr_schedule."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return cfg.lr


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD or Adam; --weight-decay is an L2 term on the loss for both (its gradient wd·w added to each parameter's:
    masked RD §4.2's "L2 regularization" with λ = wd/2)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class DataSplit:
    train: ImageDataset
    val: ImageDataset
    categories: list[str]


def build_datasets(cfg: TrainConfig) -> DataSplit:
    categories = parse_categories(cfg.categories, cfg.data)
    train_samples, val_samples = training_split(cfg.data, categories, cfg.val_fraction, cfg.seed)
    spec = preprocess_spec(cfg)
    split = DataSplit(ImageDataset(train_samples, spec, cache=cfg.cache_images),
                      ImageDataset(val_samples, spec, cache=cfg.cache_images), categories)
    if cfg.cache_images:  # decode once in the parent: forked loader workers share the cache copy-on-write
        split.train.precompute()
        split.val.precompute()
    return split


def make_loader(dataset: ImageDataset, sampler: GlobalBatchSampler, cfg: TrainConfig,
                device: torch.device) -> DataLoader:
    workers = cfg.num_workers
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


class Trainer:
    """Owns one training run; `run()` trains from scratch or resumes from RUN_DIR/last.pt."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.ctx = init_distributed(resolve_device(cfg.device).type)
        self.device = resolve_device(cfg.device, self.ctx.local_rank if self.ctx.enabled else None)
        self.out = Path(cfg.out)
        self.amp = amp_dtype(cfg.amp, self.device)
        if self.device.type == "cpu":
            keep_freed_cpu_memory()

    # ---- setup -------------------------------------------------------------------------------
    def _check_resume_compatible(self) -> None:
        previous = load_config(self.out)
        for key in RESUME_INVARIANTS:
            if getattr(previous, key) != getattr(self.cfg, key):
                flag = f"--{key.replace('_', '-')}"
                raise RunError(f"{self.out}: cannot resume, {flag} was {getattr(previous, key)!r} and is now "
                               f"{getattr(self.cfg, key)!r} (pass {flag} {getattr(previous, key)} to resume it, or "
                               f"use a new --out or --no-resume)")
        if vars(previous.model) != vars(self.cfg.model):
            raise RunError(f"{self.out}: cannot resume, the model settings differ from the saved run "
                           f"(use a new --out or --no-resume)")

    def _setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.data = build_datasets(cfg)
        self.model: DistillationModel = build_model(cfg.model).to(self.device)
        if self.ctx.enabled:
            for name, child in self.model.named_children():
                if name != "teacher":  # the frozen teacher's BatchNorm runs on its ImageNet statistics
                    convert_batchnorm(child, self.device.type)
        if cfg.channels_last:
            # Module.to's stub overloads omit memory_format, which torch accepts.
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = (build_optimizer(cfg, self.model.trainable_parameters())
                          if self.model.needs_gradient_training else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.train_sampler = GlobalBatchSampler(len(self.data.train), cfg.batch_size, cfg.seed, self.ctx.rank,
                                                self.ctx.world_size, shuffle=True)
        self.val_sampler = GlobalBatchSampler(len(self.data.val), cfg.batch_size, cfg.seed, 0, 1, shuffle=False)
        self.train_loader = make_loader(self.data.train, self.train_sampler, cfg, self.device)
        self.val_loader = make_loader(self.data.val, self.val_sampler, cfg, self.device)
        self.step_model: Callable[..., Any] = self.model  # what a training step calls (DDP / compiled wrap)
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.step_model = torch.compile(self.step_model)
        self.start_epoch, self.best_val = 0, math.inf
        self.history: list[dict[str, Any]] = []

    def _maybe_resume(self) -> None:
        last = self.out / LAST_CHECKPOINT
        if not (self.cfg.resume and last.is_file()):
            return
        self._check_resume_compatible()
        state = load_checkpoint(last, map_location=self.device)
        # last.pt holds the trainable state only; the teacher comes from its pretrained weights.
        self.model.load_state_dict(state["model"], strict=False)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_val = float(state["best_val_loss"])
        self.history = json.loads(state["history"])
        if self.ctx.is_main:
            log.info("resuming %s from epoch %d (best validation loss %.5f)", self.out, self.start_epoch, self.best_val)

    # ---- steps -------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"].to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _gradient_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer; None only for methods fitted in one pass, which have no epochs."""
        if self.optimizer is None:
            raise RuntimeError(f"--method {self.cfg.model.method} is fitted, not trained by gradient descent")
        return self.optimizer

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        optimizer = self._gradient_optimizer()
        self.model.train()
        self.train_sampler.set_epoch(epoch)
        totals: dict[str, float] = {}
        n_images, steps = 0, 0
        limit = self.cfg.max_steps_per_epoch or len(self.train_loader)
        bar = tqdm(self.train_loader, total=min(limit, len(self.train_loader)),
                   desc=f"epoch {epoch + 1}/{self.cfg.epochs}", disable=not self.ctx.is_main, leave=False,
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        steps_per_epoch = min(limit, len(self.train_loader))
        spec = self.data.train.spec  # photometric augmentation re-lights in pixel space
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(self.cfg, epoch * steps_per_epoch + steps, self.cfg.epochs * steps_per_epoch)
            images = augment_batch(self._images(batch), self.cfg.augment,
                                   augment_generator(self.cfg.seed, self.ctx.rank, epoch, steps),
                                   (spec.mean, spec.std))
            with self._autocast():
                loss, parts = self.step_model(images)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} at epoch {epoch + 1} "
                                         f"(try a lower --lr; components: {parts})")
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip_norm > 0:
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the AMP-scaled ones
                parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                    [p for group in optimizer.param_groups for p in group["params"]], self.cfg.grad_clip_norm))
            self.scaler.step(optimizer)
            self.scaler.update()
            n = images.shape[0]
            n_images += n
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * n
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value * n
            bar.set_postfix(loss=f"{loss.item():.4f}")
            steps += 1
            if steps >= limit:
                break
        seconds = time.perf_counter() - t0
        stats = self._reduce(totals, n_images)
        stats["images_per_s"] = stats.pop("_images") / max(seconds, 1e-9)
        if self.device.type == "cuda":  # this process's peak (the GPU training check reports it)
            stats["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return stats

    def _reduce(self, totals: dict[str, float], n_images: int) -> dict[str, float]:
        """Sum per-process totals over ranks and turn them into per-image means."""
        keys = sorted(totals)
        values = torch.tensor([totals[k] for k in keys] + [float(n_images)], dtype=torch.float64)
        if self.ctx.enabled:
            torch.distributed.all_reduce(values)
        count = max(values[-1].item(), 1.0)
        stats = {k: values[i].item() / count for i, k in enumerate(keys)}
        stats["_images"] = values[-1].item()
        return stats

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean training loss over the validation normals (same objective, no gradient; paper §4.3)."""
        self.model.eval()
        total, count = 0.0, 0
        for batch in self.val_loader:
            images = self._images(batch)
            with self._autocast():
                loss, _ = self.model.compute_loss(images)
            total += float(loss) * images.shape[0]
            count += images.shape[0]
        return total / max(count, 1)

    def _val_batches(self):
        for batch in self.val_loader:
            yield self._images(batch)

    # ---- checkpoints -------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("teacher.")}

    def _save_best(self, epoch: int, val_loss: float) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model.fit_normal_statistics(self._val_batches())
        atomic_torch_save({"model": self.model.state_dict(), "epoch": epoch, "val_loss": val_loss,
                           "config": json.dumps(self.cfg.to_dict())}, self.out / BEST_CHECKPOINT)

    def _save_last(self, epoch: int) -> None:
        optimizer = self.optimizer.state_dict() if self.optimizer is not None else {}
        atomic_torch_save({"model": self._trainable_state(), "optimizer": optimizer,
                           "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                           "epoch": epoch, "best_val_loss": self.best_val, "history": json.dumps(self.history)},
                          self.out / LAST_CHECKPOINT)

    def _write_history(self) -> None:
        atomic_write_text(self.out / "history.json", json.dumps(self.history, indent=1))
        keys = sorted({k for row in self.history for k in row}, key=lambda k: (k != "epoch", k))
        tmp = self.out / "history.csv.tmp"
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        tmp.replace(self.out / "history.csv")

    @torch.no_grad()
    def _fit_training_statistics(self) -> None:
        """Every process sees all training normals in a fixed order, so the statistics agree across ranks."""
        self.model.eval()
        loader = DataLoader(self.data.train, batch_size=self.cfg.batch_size, shuffle=False, num_workers=0)
        batches = (self._images(batch) for batch in tqdm(loader, desc="training statistics", leave=False,
                                                          disable=not self.ctx.is_main, dynamic_ncols=True))
        self.model.fit_training_statistics(batches)

    def _fit_without_gradients(self) -> None:
        """Methods fitted in one pass (memory bank): one "epoch", validated and checkpointed like the others."""
        t0 = time.perf_counter()
        val_loss = self.validation_loss()
        self.history = [{"epoch": 1, "val_loss": val_loss,
                         "seconds": time.perf_counter() - t0 + self._statistics_seconds}]
        self.best_val = val_loss
        self._save_best(0, val_loss)
        self._save_last(0)
        self._write_history()

    # ---- main --------------------------------------------------------------------------------
    def run(self) -> Path:
        try:
            self._setup()
            if self.ctx.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
            barrier(self.ctx)
            self._maybe_resume()
            if self.ctx.is_main:
                save_config(self.out, self.cfg)
                log.info("training %s/%s on %d train + %d validation images (%s), device %s, %d process(es)",
                         self.cfg.model.method, self.cfg.model.backbone, len(self.data.train), len(self.data.val),
                         ",".join(self.data.categories), self.device, self.ctx.world_size)
            started = time.perf_counter()
            self._fit_training_statistics()
            self._statistics_seconds = time.perf_counter() - started
            if not self.model.needs_gradient_training:
                if self.ctx.is_main:
                    self._fit_without_gradients()
                return self.out
            epochs = tqdm(range(self.start_epoch, self.cfg.epochs), initial=self.start_epoch, total=self.cfg.epochs,
                          desc="epochs", disable=not self.ctx.is_main, dynamic_ncols=True)
            for epoch in epochs:
                t0 = time.perf_counter()
                stats = self._train_epoch(epoch)
                if self.ctx.is_main:
                    val_loss = self.validation_loss()
                    row = {"epoch": epoch + 1, "train_loss": stats.pop("loss"), "val_loss": val_loss,
                           "lr": self._gradient_optimizer().param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                           **{f"train_{k}": v for k, v in stats.items()}}
                    self.history.append(row)
                    if val_loss < self.best_val:
                        self.best_val = val_loss
                        self._save_best(epoch, val_loss)
                    self._save_last(epoch)
                    self._write_history()
                    epochs.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{val_loss:.4f}",
                                       best=f"{self.best_val:.4f}")
                barrier(self.ctx)
                if self.cfg.time_budget_s and time.perf_counter() - started > self.cfg.time_budget_s:
                    if self.ctx.is_main:
                        log.info("time budget of %.0f s reached after epoch %d", self.cfg.time_budget_s, epoch + 1)
                    break
            return self.out
        finally:
            shutdown(self.ctx)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a run; returns the run directory."""
    return Trainer(cfg).run()

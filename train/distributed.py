"""DistributedDataParallel plumbing for torchrun: process group, global-batch sampling, synced BatchNorm.

Everything here is PyTorch's own distributed engine; the two small pieces below make a DDP run
see exactly the batches (and BatchNorm statistics) of a single-process run with the same global batch.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistContext:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1); otherwise single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                       world_size=dist.get_world_size())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each global batch of a seeded per-epoch permutation.

    Single process (world_size 1) and N processes see the same global batches in the same order,
    like DistributedSampler's per-epoch shuffle but partitioned per batch, so results match.
    """

    def __init__(self, dataset_size: int, global_batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        if global_batch_size % world_size:
            raise ValueError(f"--batch-size {global_batch_size} must be divisible by the number of processes "
                             f"{world_size}")
        self.dataset_size, self.global_batch_size = dataset_size, global_batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.dataset_size // self.global_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        for start in range(0, self.dataset_size, self.global_batch_size):
            batch = order[start:start + self.global_batch_size]
            # Split the global batch into world_size near-equal contiguous shares.
            bounds = [len(batch) * r // self.world_size for r in range(self.world_size + 1)]
            yield batch[bounds[self.rank]:bounds[self.rank + 1]]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients (all-reduced again)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose batch statistics are all-reduced over the process group (gloo/CPU too).

    torch.nn.SyncBatchNorm only runs on GPUs; this uses the differentiable all_reduce so forward
    and backward equal BatchNorm over the global batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        # float64 sums: E[x²] − E[x]² cancels badly in float32 when |mean| >> std.
        x64 = x.double()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean64 = stats[:c] / n
        mean, var = mean64.to(x.dtype), (stats[c:2 * c] / n - mean64 * mean64).to(x.dtype)
        with torch.no_grad():
            if self.track_running_stats:
                tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
                # With track_running_stats, BatchNorm registers these buffers.
                assert tracked is not None and running_mean is not None and running_var is not None
                tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                running_mean.mul_(1 - m).add_(m * mean.detach())
                running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Synchronise the BatchNorm layers of the trainable parts across processes (teacher untouched)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, CrossProcessBatchNorm2d):
            new = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats).to(child.weight.device if child.affine else "cpu")
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device_type)
    return module

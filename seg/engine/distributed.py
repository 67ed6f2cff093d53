"""Minimal torchrun support: process-group setup, rank queries, SyncBatchNorm.

Without torchrun's environment variables everything degrades to a single process, so the same
training script runs with ``python`` or ``torchrun --nproc_per_node=N``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed() -> tuple[int, int, int]:
    """Join the process group torchrun describes; returns ``(rank, world_size, local_rank)``.

    Uses NCCL when CUDA is available (and pins this process to GPU ``local_rank``), gloo otherwise.
    Returns ``(0, 1, 0)`` without starting anything when ``WORLD_SIZE`` is unset or 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return 0, 1, 0
    if _initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    if torch.cuda.is_available():
        # Set the device before creating the group so NCCL binds each rank to its own GPU.
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    # MASTER_ADDR / MASTER_PORT come from torchrun through the env:// init method.
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return rank, world_size, local_rank


def get_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): the process that logs and writes files."""
    return get_rank() == 0


def barrier() -> None:
    if _initialized() and get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if _initialized():
        dist.destroy_process_group()


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Swap BatchNorm for SyncBatchNorm when running on several processes; else return ``model``.

    Segmentation batches are small per GPU, so batch statistics are only reliable when pooled.
    """
    if get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model

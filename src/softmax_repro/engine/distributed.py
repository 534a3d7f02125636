"""Data-parallel training across processes launched by ``torchrun``.

``torchrun --nproc_per_node N script.py`` starts N copies of a program with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment. Every
rank runs the whole chapter; :func:`training.fit_classifier` then splits each global
batch across the ranks (:func:`shard_indices`) and averages gradients through
DistributedDataParallel (:func:`wrap_model`), so N processes take the same optimizer steps as one
process would on the same global batch. Only rank 0 shows progress bars, writes checkpoints and
writes results.

:func:`training.resolve_device` calls :func:`init_from_env`, so a chapter joins the
group without code of its own. Without those variables every function here is a no-op (rank 0 of
a world of 1), so a plain ``python`` run is unchanged.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from softmax_repro.config import ConfigError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (or an equivalent launcher) set RANK, WORLD_SIZE and LOCAL_RANK."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def init_from_env(device: torch.device | None = None) -> torch.device | None:
    """Join the process group described by the torchrun environment (idempotent).

    The backend is NCCL when ``device`` is CUDA (or, with no device, when CUDA is available) and
    gloo otherwise. On CUDA the process is pinned to ``cuda:LOCAL_RANK``.

    Args:
        device: the device this process trains on.

    Returns:
        The device to use on this rank: ``cuda:LOCAL_RANK`` for a CUDA device under torchrun,
        otherwise ``device`` unchanged (also when not launched by torchrun).

    Raises:
        ConfigError: a CUDA device was asked for but LOCAL_RANK has no GPU.
    """
    if not launched_by_torchrun():
        return device
    use_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                "CUDA device(s); use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30)
        )
    return device


def is_initialized() -> bool:
    """True when this process belongs to a process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed; falls back to ``$RANK`` before init)."""
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def is_rank0() -> bool:
    """True on the process that logs, checkpoints and writes results."""
    return rank() == 0


def active_for(device: torch.device) -> bool:
    """True when tensors on ``device`` can be data-parallel across the group.

    NCCL only carries CUDA tensors and gloo is used here for CPU ones, so a CPU side computation
    inside a CUDA run (or a world of one) trains replicated on each rank instead.
    """
    if not is_initialized() or world_size() == 1:
        return False
    backend = dist.get_backend()
    return (device.type == "cuda") == (backend == "nccl")


def shard_indices(idx: Tensor, rank: int, world: int) -> Tensor:
    """This rank's contiguous part of a global batch of indices ``idx[B]``.

    The parts of ranks ``0..world-1`` concatenate to ``idx``; their sizes differ by at most one
    (the first ``B % world`` ranks get one more). A rank's part is empty when ``B < world``.

    Raises:
        ValueError: ``world < 1`` or ``rank`` not in ``0..world-1``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..world-1 with world >= 1, got rank={rank}, "
                         f"world={world}")
    return torch.tensor_split(idx, world)[rank]


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when :func:`active_for` ``device``, else itself.

    On CUDA, BatchNorm layers become SyncBatchNorm first (in place in ``model``'s children), so
    batch statistics come from the whole global batch as in a single-process run.
    """
    if not active_for(device):
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise mean of ``values`` over the ranks when :func:`active_for` ``device``.

    Every rank must call it with a list of the same length; otherwise ``values`` is returned.
    """
    if not active_for(device) or not values:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total / world_size()).tolist()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    if is_initialized():
        dist.destroy_process_group()

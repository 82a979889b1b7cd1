"""Data-parallel training across processes started by torchrun: gloo on CPU, nccl on GPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and logs."""
        return self.rank == 0


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Start and end of each step's batch over ``n`` samples: full batches, the remainder joins the last one.

    Every sample is used once per epoch; no batch is smaller than ``batch_size`` (when ``n >= batch_size``).
    """
    steps = max(n // batch_size, 1)
    return [(i * batch_size, (i + 1) * batch_size if i < steps - 1 else n) for i in range(steps)]


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch: near-equal contiguous pieces, together exactly the batch."""
    return torch.tensor_split(batch, world.size)[world.rank] if world.size > 1 else batch


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (in place; the tensor itself when not distributed)."""
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients of parameters that DistributedDataParallel does not manage (the class centers)."""
    if world.size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world.size


def barrier(world: World) -> None:
    """Wait until every rank gets here (so files rank 0 wrote can be read)."""
    if world.size > 1:
        dist.barrier()

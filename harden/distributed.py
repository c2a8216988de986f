"""Processes started by torchrun: which rank this is, which shard of the work is its own, and
the reduction of every rank's result to rank 0.

torchrun sets WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT; without them there is one process
and every method is a no-op, so callers never branch on "distributed or not". The process group
uses gloo, which reduces CPU objects on any machine; the objects exchanged come from this job's
own ranks, never from a file. Training on CUDA asks for NCCL (`backend="nccl"`), which
reduces GPU tensors; verification and CPU training use gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from harden.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # this process's index on its machine: its GPU

    @classmethod
    def from_environment(cls, backend: str = "gloo") -> Distributed:
        """This process's place in a torchrun job (one process when not started by torchrun)."""
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as err:
            raise InputError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them): {err}") from err
        if world_size <= 1:
            return cls()
        if not 0 <= rank < world_size:
            raise InputError(f"RANK {rank} is outside 0..{world_size - 1}")
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=60))
        return cls(rank, world_size, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, count: int) -> range:
        """This rank's contiguous block of range(count); the blocks in rank order tile it, so
        results concatenated in rank order are in the order one process would produce."""
        return range(count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size)

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's `obj` on rank 0, in rank order; None on the other ranks."""
        if not self.active:
            return [obj]
        received: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, received, dst=0)
        return received

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over every rank (in place; returned for chaining)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def __enter__(self) -> Distributed:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        """Leave the process group.

        A rank must not then run Python's interpreter shutdown while gloo's worker threads live
        (DistributedDataParallel keeps the group alive past `destroy_process_group`): a worker
        freeing the tensors of a finished collective needs the GIL, cannot take it during
        shutdown, and the process aborts ("terminate called without an active exception"). The
        command line therefore ends torchrun ranks with `harden.torchrun_exit.leave_rank`; a script
        of your own that trains or verifies under torchrun should end the same way.
        """
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

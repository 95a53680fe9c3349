"""Single process or DistributedDataParallel under ``torchrun``, decided by the environment.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); when WORLD_SIZE
is above 1 the process group starts with gloo on CPU or nccl on GPU.  Every process holds the
whole (small) data set and takes its own slice of each global batch; rank 0 alone writes
checkpoints, logs and figures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Tensor) -> Tensor:
        """This process's contiguous part of a global batch (parts differ by at most one row)."""
        return torch.tensor_split(items, self.world)[self.rank] if self.world > 1 else items

    def all_sum(self, t: Tensor) -> Tensor:
        if self.world > 1:
            t = t.detach().clone()
            dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every process when any process says True (to stop all at the same step)."""
        if self.world == 1:
            return flag
        return bool(self.all_sum(torch.tensor([float(flag)], device=self.device)).item())

    def gather_rows(self, t: Tensor) -> Tensor:
        """Concatenate equally shaped per-process tensors along dim 0, in rank order."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, 0)


def torch_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device a config's ``device`` names ('auto': CUDA when there is one)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name}: CUDA is not available here")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N; got {name!r}")
    return torch.device("cpu")


def init(device: str) -> Dist:
    """Join the process group when launched by torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch_device(device, local_rank)
    if world == 1:
        return Dist(0, 1, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()

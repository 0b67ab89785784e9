"""Several processes with PyTorch's own engine: torchrun + DistributedDataParallel.

nccl on CUDA, gloo on CPU. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them the
stage is a plain single process. Only rank 0 writes files and MLflow records.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Dist:
    """This process's place among the training processes (world 1 = a plain process)."""
    rank: int = 0
    world: int = 1
    reduce: Callable[[Tensor], Tensor] = field(default=lambda t: t)

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(nproc: int, module: str) -> None:
    """Re-run this stage as `torchrun --standalone --nproc_per_node=N -m module ...`."""
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={nproc}", "-m", module, *sys.argv[1:]])


def _all_reduce(t: Tensor) -> Tensor:
    tdist.all_reduce(t)
    return t


def setup(device_type: str) -> tuple[Dist, Callable[[nn.Module], nn.Module]]:
    """This process's Dist and the model wrapper (DDP under torchrun, identity otherwise)."""
    if not launched():
        return Dist(), lambda m: m
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    tdist.init_process_group(backend)
    if tdist.get_rank() == 0:
        print(f"training in {tdist.get_world_size()} processes under torchrun "
              f"(DistributedDataParallel, {backend} on {device_type})", flush=True)
    ids = [local_rank] if device_type == "cuda" else None
    return (Dist(tdist.get_rank(), tdist.get_world_size(), _all_reduce),
            lambda m: DistributedDataParallel(m, device_ids=ids))


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()

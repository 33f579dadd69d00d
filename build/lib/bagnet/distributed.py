"""torchrun support: env-var setup (as torchvision's references), rank-0 helpers, metric reduction."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def export_slurm_env() -> None:
    """In a multi-task SLURM job started by submitit (Hydra's submitit launcher), set torchrun's variables.

    Plain ``srun`` jobs should start ``torchrun`` instead, which sets them itself.
    """
    if ("RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm"
            or int(os.environ.get("SLURM_NTASKS", "1")) < 2):
        return
    from submitit.helpers import TorchDistributedEnvironment  # present: submitit started this process
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the process group when launched by torchrun or SLURM (RANK/WORLD_SIZE set); else one process."""
    export_slurm_env()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum plain numbers over ranks (float64, so counts stay exact)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

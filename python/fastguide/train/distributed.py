"""torch.distributed set-up for torchrun, and the single-process fallback.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the process group is
initialised with NCCL on CUDA and gloo on the CPU; without torchrun everything runs in one
process and no group is created.
"""
import os

import torch
import torch.distributed as dist

__all__ = ["setup", "rank", "world_size", "is_main", "barrier", "cleanup"]


def setup(device=None):
    """Initialise from torchrun's environment if present; return this process's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()

"""Distributed helpers: process-group set-up from torchrun's environment.

Every helper works unchanged in one plain process (no process group): ``world_size()`` is 1, reductions return
their input. Under ``torchrun`` the environment variables RANK, WORLD_SIZE and LOCAL_RANK select the process;
the backend is NCCL for CUDA and gloo for CPU. The reductions (``all_reduce_sum``, ``all_reduce_mean``,
``all_gather_with_grad``) and ``is_enabled`` / ``world_size`` / ``rank`` live in MedDINOv3Core.collectives (so that
the losses need nothing from the trainer) and are re-exported here.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from MedDINOv3Core.collectives import (  # noqa: F401  (re-exported: the collectives live at the bottom layer)
    _GatherWithGrad,
    all_gather_with_grad,
    all_reduce_mean,
    all_reduce_sum,
    is_enabled,
    rank,
    world_size,
)

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that logs and writes checkpoints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1); returns whether it did.

    Args:
        device: the device this process trains on; CUDA selects NCCL (and the LOCAL_RANK GPU), anything else gloo.
        timeout_s: collective timeout.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if dist.is_initialized():
        return True
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """The per-process device: ``cuda:LOCAL_RANK`` under torchrun with CUDA, else ``device``."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def rank_from_env() -> int:
    """This process's rank from torchrun's environment (0 when not launched by torchrun); usable before init."""
    return int(os.environ.get("RANK", 0))

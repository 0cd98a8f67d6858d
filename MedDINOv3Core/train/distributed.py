"""Distributed helpers: process-group set-up from torchrun's environment and reductions that are no-ops alone.

Every helper works unchanged in one plain process (no process group): ``world_size()`` is 1, reductions return
their input. Under ``torchrun`` the environment variables RANK, WORLD_SIZE and LOCAL_RANK select the process;
the backend is NCCL for CUDA and gloo for CPU.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def is_enabled() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no gradient); returns it. A no-op in one process."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all processes in place (no gradient); returns it."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the incoming gradients of every process and keeps this rank's rows.

    Every rank computes the same function of the gathered tensor, so the gradient reaching this rank's rows is the
    sum of the per-rank gradients; after DDP averages gradients over ranks, the update equals the one-process
    update on the full batch. Written with all_reduce only, which every backend (gloo included) supports.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        sizes_i = [int(s.item()) for s in sizes]
        if len(set(sizes_i)) != 1:
            raise ValueError(f"all ranks must hold the same number of rows to gather, got {sizes_i}")
        parts = [torch.empty_like(x) for _ in sizes_i]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) of every rank to (world * B, ...), differentiable; identity in one process."""
    if not is_enabled():
        return x
    return _GatherWithGrad.apply(x)


def rank_from_env() -> int:
    """This process's rank from torchrun's environment (0 when not launched by torchrun); usable before init."""
    return int(os.environ.get("RANK", 0))

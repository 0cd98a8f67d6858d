"""Collective operations that are no-ops in one process: reductions and a differentiable all-gather.

The losses (``MedDINOv3Core.losses``) reduce over the batch of every process through these helpers, so their result
does not depend on how the global batch is split across ranks. Without an initialised process group (one plain
process) ``world_size()`` is 1 and every reduction returns its input. Setting up the process group is the trainer's
job (``MedDINOv3Core.train.distributed``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_enabled() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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


__all__ = ["all_gather_with_grad", "all_reduce_mean", "all_reduce_sum", "is_enabled", "rank", "world_size"]

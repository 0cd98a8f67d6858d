"""Teacher centering, written once for the DINO and iBOT losses: Sinkhorn-Knopp (default) or softmax centering.

Both turn teacher logits into sharpened, centred target distributions. Sinkhorn-Knopp (SwAV, DINOv2) makes the
targets of a batch use every prototype equally: it alternately normalises the rows (prototypes) of
Q = exp(logits / T)^T to mass 1/K and the columns (samples) to mass 1/B. Softmax centering (DINO) subtracts an EMA of
the mean teacher logits before the softmax. Reductions over the batch go over all processes (no-ops in one
process), so the result does not depend on how the global batch is split across ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from MedDINOv3Core.collectives import all_reduce_sum

CENTERINGS = ("sinkhorn_knopp", "softmax")


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    temperature: float,
    n_iterations: int = 3,
    n_samples: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Sinkhorn-Knopp normalisation of teacher logits.

    Args:
        teacher_logits: (B, K) logits of this process's samples.
        temperature: teacher temperature T.
        n_iterations: row/column normalisation rounds (3 in DINOv2/DINOv3).
        n_samples: the number of samples over ALL processes (default: B summed over processes).

    Returns:
        (B, K) targets: every row sums to 1 and, over the global batch, every prototype column sums to B/K.
    """
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher logits must be (B, K), got shape {tuple(teacher_logits.shape)}")
    logits = teacher_logits.float() / temperature
    # Subtracting the global max keeps exp() finite; it cancels in the normalisations.
    shift = logits.max().detach().clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(shift, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp(logits - shift).t()  # (K, B)
    if n_samples is None:
        n_samples = all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
    n_samples = torch.as_tensor(n_samples, dtype=q.dtype, device=q.device)
    k = q.shape[0]
    q /= all_reduce_sum(q.sum())
    for _ in range(n_iterations):
        # each prototype: mass 1/K (a prototype no sample is near may underflow to 0: keep it 0, not NaN)
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(torch.finfo(q.dtype).tiny)
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample: mass 1/B
        q /= n_samples
    return (q * n_samples).t()


class SoftmaxCenter(nn.Module):
    """DINO's softmax centering: softmax((logits - c) / T) with c an EMA of the mean teacher logits.

    Args:
        dim: number of prototypes K.
        momentum: EMA momentum of the centre (0.9 in DINO).
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, K) logits -> (B, K) centred, sharpened probabilities (uses the centre before this batch's update)."""
        return torch.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Move the centre towards the mean of ``teacher_logits`` (B, K) over all processes."""
        total = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        count = all_reduce_sum(torch.tensor(float(teacher_logits.shape[0]), device=teacher_logits.device))
        self.center.mul_(self.momentum).add_(total / count, alpha=1.0 - self.momentum)


class TeacherCentering(nn.Module):
    """Teacher targets by the configured centering ("sinkhorn_knopp" or "softmax").

    Args:
        dim: number of prototypes K.
        method: one of CENTERINGS.
        n_iterations: Sinkhorn-Knopp rounds.
        center_momentum: softmax centering's EMA momentum.
    """

    def __init__(self, dim: int, method: str = "sinkhorn_knopp", n_iterations: int = 3, center_momentum: float = 0.9):
        super().__init__()
        if method not in CENTERINGS:
            raise ValueError(f"unknown teacher centering {method!r}; choose one of {CENTERINGS}")
        self.method = method
        self.n_iterations = n_iterations
        self.softmax_center = SoftmaxCenter(dim, center_momentum) if method == "softmax" else None

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, K) teacher logits -> (B, K) target probabilities. Softmax centering also updates its centre."""
        if self.softmax_center is None:
            return sinkhorn_knopp(teacher_logits, temperature, self.n_iterations)
        probs = self.softmax_center(teacher_logits, temperature)
        self.softmax_center.update(teacher_logits)
        return probs

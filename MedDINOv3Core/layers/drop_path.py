"""Stochastic depth on residual branches.

Choice (the MedDINOv3 paper, arXiv:2509.02379, does not say): Bernoulli per-sample drop path. Each sample's residual
branch is kept with probability 1 - p and scaled by 1 / (1 - p), so the expectation is unchanged. DINOv3 instead
evaluates the branch on a random subset of max(int(B (1 - p)), 1) samples and rescales by B / subset; that saves compute
but changes the effective rate for small batches (B = 1 never drops). Bernoulli works identically for any batch size,
which matters for the small CPU batches this project also trains with."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"

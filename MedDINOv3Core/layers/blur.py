"""Separable Gaussian blur of image batches, shared by the data augmentation and the few-shot head's image channels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with ``sigma`` pixels (edge-replicating padding); sigma <= 0 is
    the identity."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma).to(x)
    r = k.numel() // 2
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


__all__ = ["gaussian_blur"]

"""Patch embedding: a strided convolution that turns an image into a grid of patch tokens."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Conv2d(in_chans, embed_dim, kernel=patch, stride=patch), flattened to tokens.

    There is no absolute position embedding in DINOv3: positions enter through RoPE in attention.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Number of patches (rows, cols) for an input of (height, width); raises if not a multiple of the patch."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {p}: pad or resample the image "
                f"to a multiple of {p} (for example {-(-height // p) * p}x{-(-width // p) * p})"
            )
        return height // p, width // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> tokens (B, H/p * W/p, D) in row-major (h-major) order."""
        if x.ndim != 4:
            raise ValueError(f"expected an image batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.proj.in_channels:
            raise ValueError(f"expected {self.proj.in_channels} input channels, got {x.shape[1]}")
        self.grid_size(x.shape[-2], x.shape[-1])
        return self.proj(x).flatten(2).transpose(1, 2)

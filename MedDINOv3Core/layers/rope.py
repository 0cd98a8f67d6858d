"""Axial rotary position embedding (RoPE) with the DINOv3 coordinate and period conventions.

For a head dimension ``d`` there are ``d/4`` periods ``base ** (4 i / d)``, i = 0 .. d/4-1 (for d = 64:
``100 ** (2i/32)``, i = 0..15). Each patch centre ``((r + 0.5)/H, (c + 0.5)/W)`` is mapped to [-1, 1] per axis
("separate" normalisation), the grid is row-major. Angles ``2 pi coord / period`` give (HW, 2, d/4), flattened to
(HW, d/2) and tiled twice to (HW, d). They rotate q and k of the patch tokens only:
``x cos + rotate_half(x) sin`` with ``rotate_half([a, b]) = [-b, a]``.

Nothing here is learned; the grid is recomputed for every input size, so any resolution works without
interpolation. The ``periods`` buffer is persistent so that released checkpoints (whose periods are bf16-rounded)
load exactly.

Precision: with ``dtype="fp32"`` the coordinates are computed in fp32 (DINOv3 official). With a low-precision dtype
("bf16", the MedDINOv3 released weights; "fp16") the DINOv3 code's arithmetic is reproduced step by step in that
dtype, every intermediate rounded: centres ``arange(0.5, H) / H``, then ``2 c - 1``, the augmentation draws and
products, the periods (``base ** (2 i / (d/2))``), the angles and sin/cos. Casting fp32 coordinates once instead
changes bf16 sin/cos by up to ~3e-2 (it rounds differently from the chained bf16 ops).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rope_periods(head_dim: int, base: float = 100.0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The ``head_dim // 4`` RoPE periods ``base ** (4 i / head_dim)`` as float32.

    ``dtype=None``: computed in float64 and rounded once. A low-precision ``dtype`` (bf16/fp16): computed as DINOv3
    does in that dtype, ``base ** (2 i / (head_dim / 2))`` with every step rounded (the float32 result then holds
    exactly those values). Always computed on the CPU (also while a module is built on the meta device).
    """
    if head_dim % 4:
        raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
    if dtype is not None and dtype != torch.float32:
        return (base ** (2 * torch.arange(head_dim // 4, dtype=dtype, device="cpu") / (head_dim // 2))).to(
            torch.float32
        )
    exponents = 4 * torch.arange(head_dim // 4, dtype=torch.float64, device="cpu") / head_dim
    return (base**exponents).to(torch.float32)


def patch_coordinates(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Patch-centre coordinates in [-1, 1], shape (height * width, 2) as (row, col), row-major.

    float32: ``(arange(n) + 0.5) / n`` then ``2 c - 1``. Another dtype: ``arange(0.5, n) / n`` then ``2 c - 1``, each
    step computed and rounded in that dtype (the DINOv3 bf16 arithmetic).
    """
    if dtype == torch.float32:
        rows = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        cols = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    else:
        rows = torch.arange(0.5, height, dtype=dtype, device=device) / height
        cols = torch.arange(0.5, width, dtype=dtype, device=device) / width
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return 2.0 * grid - 1.0


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[a, b] -> [-b, a] over the halves of the last dimension."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., N, d) by angles whose sin/cos are (N, d)."""
    return x * cos + rotate_half(x) * sin


class RopePositionEmbedding(nn.Module):
    """Produces (sin, cos), each (H*W, head_dim), for a patch grid of H x W.

    Args:
        head_dim: attention head dimension (embed_dim // num_heads).
        base: period base (DINOv3: 100).
        dtype: compute dtype name, "fp32" (DINOv3 official) or "bf16" (MedDINOv3 released weights).
        shift, jitter, rescale: training-only coordinate augmentations (None = off). ``shift`` adds U[-s, s] per
            axis, ``jitter`` multiplies each axis by a log-uniform factor in [1/j, j], ``rescale`` multiplies both
            axes by one log-uniform factor in [1/r, r]. They are never applied in eval mode.
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 100.0,
        dtype: str = "fp32",
        shift: float | None = None,
        jitter: float | None = None,
        rescale: float | None = None,
    ) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"unknown RoPE dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
        self.head_dim = head_dim
        self.dtype = _DTYPES[dtype]
        self.shift, self.jitter, self.rescale = shift, jitter, rescale
        self.register_buffer("periods", rope_periods(head_dim, base, self.dtype), persistent=True)

    def _augment(self, coords: torch.Tensor) -> torch.Tensor:
        """Random shift / per-axis jitter / global rescale, drawn and applied in the dtype of ``coords``."""
        dd = {"device": coords.device, "dtype": coords.dtype}
        if self.shift:
            coords = coords + torch.empty(1, 2, **dd).uniform_(-self.shift, self.shift)
        if self.jitter:
            log_j = math.log(self.jitter)
            coords = coords * torch.empty(1, 2, **dd).uniform_(-log_j, log_j).exp()
        if self.rescale:
            log_r = math.log(self.rescale)
            coords = coords * torch.empty(1, **dd).uniform_(-log_r, log_r).exp()
        return coords

    def forward(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sin, cos), each (height * width, head_dim) in the compute dtype.

        fp32: coordinates and augmentations in fp32. bf16/fp16: every step in that dtype (see the module docstring).
        """
        coords = patch_coordinates(height, width, device=self.periods.device, dtype=self.dtype)
        if self.training:
            coords = self._augment(coords)
        periods = self.periods.to(self.dtype)
        angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # (HW, 2, d/4)
        angles = angles.flatten(1, 2).tile(2)  # (HW, d)
        return torch.sin(angles), torch.cos(angles)

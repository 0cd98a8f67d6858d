"""Pre-norm transformer block with LayerScale and drop path."""

from __future__ import annotations

import torch
from torch import nn

from MedDINOv3Core.layers.attention import SelfAttention
from MedDINOv3Core.layers.drop_path import DropPath
from MedDINOv3Core.layers.layer_scale import LayerScale
from MedDINOv3Core.layers.mlp import Mlp


class Block(nn.Module):
    """x = x + drop(ls1(attn(norm1(x)))); x = x + drop(ls2(mlp(norm2(x))))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        qkv_bias: str = "qv",
        proj_bias: bool = True,
        ffn_bias: bool = True,
        layerscale_init: float = 1e-5,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden_dim, bias=ffn_bias)
        self.ls2 = LayerScale(dim, layerscale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

"""Multi-head self-attention with RoPE on the patch tokens, computed by scaled_dot_product_attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.architecture import QKV_BIAS_MODES
from MedDINOv3Core.layers.rope import apply_rope


class SelfAttention(nn.Module):
    """Fused qkv projection, RoPE on q and k of the patch tokens, SDPA, output projection.

    Args:
        dim: embedding width D.
        num_heads: number of heads; head_dim = D / num_heads (scale 1/sqrt(head_dim)).
        qkv_bias: "qv" (DINOv3 official: q and v biases, the k bias is multiplied by the constant buffer
            ``bias_mask`` so it stays 0), "qkv" (all three) or "none" (MedDINOv3 released weights).
        proj_bias: bias on the output projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: str = "qv", proj_bias: bool = True) -> None:
        super().__init__()
        if qkv_bias not in QKV_BIAS_MODES:
            raise ValueError(f"qkv_bias must be one of {QKV_BIAS_MODES}, got {qkv_bias!r}")
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias != "none")
        if qkv_bias == "qv":
            mask = torch.ones(3 * dim)
            mask[dim : 2 * dim] = 0.0
            self.register_buffer("bias_mask", mask, persistent=True)
        else:
            self.bias_mask = None
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, N, D) with the prefix tokens first and the patch tokens last.

        rope: (sin, cos), each (P, head_dim) for the last P tokens (the patches); None disables RoPE.
        Returns (B, N, D).
        """
        b, n, d = x.shape
        # Three projections from views of the fused weight: each output is contiguous in (B, N, heads, head_dim),
        # which the attention kernel reads without a copy (measurably faster on CPU than one fused matmul whose
        # output must be split); the masked k bias of the "qv" mode is simply not added.
        w, bias = self.qkv.weight, self.qkv.bias
        q, k, v = (
            F.linear(
                x,
                w[i * d : (i + 1) * d],
                None if bias is None or (i == 1 and self.bias_mask is not None) else bias[i * d : (i + 1) * d],
            )
            .view(b, n, self.num_heads, self.head_dim)
            .transpose(1, 2)
            for i in range(3)
        )
        if rope is not None:
            q, k = self._rotate(q, rope), self._rotate(k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    @staticmethod
    def _rotate(t: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        sin, cos = rope
        n_prefix = t.shape[-2] - sin.shape[-2]
        patches = apply_rope(t[..., n_prefix:, :].to(sin.dtype), sin, cos).to(t.dtype)
        return torch.cat((t[..., :n_prefix, :], patches), dim=-2)

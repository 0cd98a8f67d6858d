"""Primus-style decoder: upsample the 1/16-resolution multi-scale token map to per-pixel class logits.

arXiv:2509.02379: ``n_stages`` x [ConvTranspose2d(k=2, s=2) -> channels-first LayerNorm (eps 1e-6) -> GELU],
halving the channels at every stage (ViT-B, 4 blocks concatenated: 3072 -> 1536 -> 768 -> 384 -> 192), then a 1x1
Conv2d to the class logits. No skip connections. With a patch size of 16, four stages bring the map back to the
input resolution. Convolutions use He/kaiming-normal initialisation with a = 0.01 (leaky-ReLU slope), zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from MedDINOv3Core.layers.norm import LayerNorm2d


class UpsampleStage(nn.Module):
    """One decoder stage: (B, C_in, h, w) -> (B, C_out, 2h, 2w) via transposed conv, channel LayerNorm, GELU."""

    def __init__(self, in_channels: int, out_channels: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = LayerNorm2d(out_channels, eps=norm_eps)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.up(x)))


class PrimusDecoder(nn.Module):
    """Multi-scale token map -> class logits at ``2**n_stages`` times the map's resolution.

    Args:
        in_channels: channels of the input map (number of aggregated blocks x embed dim, e.g. 3072 for ViT-B).
        n_classes: output channels (background included).
        n_stages: number of x2 upsampling stages (log2 of the backbone's patch size: 4 for 16).
        norm_eps: epsilon of the channels-first LayerNorms.

    Shapes: forward (B, in_channels, h, w) -> (B, n_classes, h * 2**n_stages, w * 2**n_stages).
    """

    def __init__(self, in_channels: int, n_classes: int, n_stages: int = 4, norm_eps: float = 1e-6) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"the decoder needs at least one output class, got n_classes={n_classes}")
        if n_stages < 0:
            raise ValueError(f"n_stages must be >= 0, got {n_stages}")
        if in_channels % (2**n_stages):
            raise ValueError(
                f"in_channels {in_channels} cannot be halved {n_stages} times; use a feature width divisible "
                f"by {2**n_stages}"
            )
        channels = [in_channels // 2**k for k in range(n_stages + 1)]
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.stages = nn.Sequential(*(UpsampleStage(a, b, norm_eps) for a, b in zip(channels[:-1], channels[1:])))
        self.head = nn.Conv2d(channels[-1], n_classes, kernel_size=1)
        self.reset_parameters()

    @property
    def upsample_factor(self) -> int:
        return 2 ** len(self.stages)

    def reset_parameters(self) -> None:
        """kaiming_normal_(a=0.01) on every convolution, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the decoder expects a (B, {self.in_channels}, h, w) feature map, got {tuple(x.shape)}")
        return self.head(self.stages(x))

"""Primus-style decoder: upsample the 1/16-resolution multi-scale token map to per-pixel class logits.

arXiv:2509.02379: ``n_stages`` x [ConvTranspose2d(k=2, s=2) -> channels-first LayerNorm (eps 1e-6) -> GELU],
halving the channels at every stage (ViT-B, 4 blocks concatenated: 3072 -> 1536 -> 768 -> 384 -> 192), then a 1x1
Conv2d to the class logits. No skip connections. With a patch size of 16, four stages bring the map back to the
input resolution. Convolutions use He/kaiming-normal initialisation with a = 0.01 (leaky-ReLU slope), zero biases.

How it is computed (issue 19): a transposed convolution with kernel 2 and stride 2 has no overlapping outputs, so it
is one matrix product per input pixel, ``y[b, 2i+di, 2j+dj, o] = sum_c x[b, i, j, c] W[c, o, di, dj] + bias[o]``,
followed by a pixel shuffle. The decoder runs channels-last from its input to the head: each stage is one GEMM
(B h w, C_in) x (C_in, 4 C_out), one copy that interleaves the 2 x 2 sub-pixels, and a LayerNorm over the last
(contiguous) axis, on the very parameters of ``nn.ConvTranspose2d`` / ``nn.Conv2d`` (same state dict). Equal to the
convolutions up to float rounding (Testing/core/test_decoder.py); on a 2-core CPU the ViT-B decoder is about 2x
faster than the convolutions (BENCHMARKS.md, issue 19).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.layers.norm import LayerNorm2d

TOKEN_CHUNK = 256  # tokens decoded at a time (PrimusDecoder._block_logits)


class UpsampleStage(nn.Module):
    """One decoder stage: (B, C_in, h, w) -> (B, C_out, 2h, 2w) via transposed conv, channel LayerNorm, GELU."""

    def __init__(self, in_channels: int, out_channels: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = LayerNorm2d(out_channels, eps=norm_eps)
        self.act = nn.GELU()
        self._packed: tuple[tuple, torch.Tensor] | None = None  # inference-time cache of packed_weight (not state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, 2h, 2w), channels-first (the decoder itself calls ``forward_pixels``)."""
        b, c, h, w = x.shape
        y = self.forward_pixels(x.permute(0, 2, 3, 1).reshape(-1, c))  # (B h w 2 2, C_out)
        return y.view(b, h, w, 2, 2, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, 2 * h, 2 * w)

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in) pixels -> (4N, C_out): each pixel's 2 x 2 output pixels, in (pixel, di, dj) order.

        The transposed convolution (kernel 2, stride 2: outputs never overlap) is one GEMM with W (C_in, C_out, 2, 2)
        read as a (C_in, (di, dj, o)) matrix; LayerNorm and GELU act per pixel, so no pixel needs to move.
        """
        conv = self.up
        weight = self.packed_weight()
        y = torch.addmm(conv.bias.repeat(4), x, weight) if conv.bias is not None else x @ weight
        y = y.view(-1, conv.out_channels)
        return self.act(F.layer_norm(y, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps))

    def packed_weight(self) -> torch.Tensor:
        """W (C_in, C_out, 2, 2) as a contiguous (C_in, 2 * 2 * C_out) matrix ordered (di, dj, o).

        The copy costs ~0.1 s a forward for the ViT-B decoder on a 2-core CPU, so without autograd it is kept until
        the weights change (a new version, storage, dtype or device); with autograd it is recomputed (differentiable).
        """
        w = self.up.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
        version = -1 if w.is_inference() else w._version  # inference tensors keep no version counter
        key = (version, w.data_ptr(), w.dtype, w.device)
        if self._packed is None or self._packed[0] != key:
            with torch.no_grad():
                self._packed = (key, w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).clone())
        return self._packed[1]


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
        # Every stage works on a (pixels, channels) matrix in "block order" (each input pixel's 2 x 2 children
        # stay together); one permutation of the n_classes-channel logits at the end puts the pixels in place.
        b, c, h, w = x.shape
        n = len(self.stages)
        y = self._block_logits(x.permute(0, 2, 3, 1).reshape(-1, c)).view(b, h, w, *([2, 2] * n), self.n_classes)
        rows, cols = [3 + 2 * k for k in range(n)], [4 + 2 * k for k in range(n)]
        y = y.permute(0, 3 + 2 * n, 1, *rows, 2, *cols)
        return y.reshape(b, self.n_classes, h * 2**n, w * 2**n)

    def token_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of each token's own block of pixels: (M, in_channels) -> (M, n_classes, 2**n, 2**n).

        No stage mixes neighbouring pixels, so a token's block depends on that token alone: ``forward`` of a map is
        this for every token of the map, placed on the grid.
        """
        m, n = tokens.shape[0], len(self.stages)
        y = self._block_logits(tokens).view(m, *([2, 2] * n), self.n_classes)
        rows, cols = [1 + 2 * k for k in range(n)], [2 + 2 * k for k in range(n)]
        return y.permute(0, 1 + 2 * n, *rows, *cols).reshape(m, self.n_classes, 2**n, 2**n)

    def _block_logits(self, tokens: torch.Tensor, chunk: int = TOKEN_CHUNK) -> torch.Tensor:
        """(M, in_channels) token rows -> (M 4^n, n_classes) logits in block order, ``chunk`` tokens at a time.

        Tokens decode independently, so chunks change nothing but the memory: the last stage's activations of a
        whole ViT-B batch of two 512 x 512 slices (2048 tokens x 256 pixels x 192 channels) are 400 MB, with its
        LayerNorm and GELU temporaries over 1 GB; a chunk of 256 tokens holds an eighth of that.
        """
        parts = []
        for y in tokens.split(chunk):
            for stage in self.stages:
                y = stage.forward_pixels(y)
            parts.append(F.linear(y, self.head.weight.view(self.n_classes, -1), self.head.bias))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

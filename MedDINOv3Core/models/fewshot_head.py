"""Few-shot segmenter: a frozen ViT backbone + a light per-pixel head that trains in seconds on a CPU.

The head sees, at every pixel, (a) the backbone's concatenated multi-scale features (normed patch tokens of the
aggregated blocks, as for the Primus segmenter), bilinearly upsampled from the token grid, and (b) the normalised
image itself smoothed at a few scales (Gaussian sigmas in pixels of the model grid), which places boundaries at
pixel precision where the tokens are 16 pixels apart. A two-layer MLP (1x1 convolutions) turns them into logits:

    h = up(W_f f) + W_i i(x) + b,   logits = W_2 GELU(W_1 GELU(h) + b_1) + b_2

``up`` (bilinear, align_corners=False) commutes with the linear map W_f, so W_f is applied on the token grid and
only the ``hidden``-wide result is upsampled: memory stays small at 512 x 512 and, while training, the head is
evaluated only at sampled pixels (``point_logits``) on features cached once.

This module knows no model card: the network takes its FewShotHeadConfig and tensors only. The config is stored in a
segmentation card as ``card.head == FewShotHeadConfig(...).to_dict()``, recognised by ``head["type"] == "fewshot"``
(``is_fewshot_head``); MedDINOv3Core.segmentation_cards converts between cards and FewShotHeadConfig. State dict
keys: ``backbone.*`` and ``head.*``. ``forward`` has the segmenter contract, (B, 1, H, W) -> (B, n_classes, H, W), so
predict_volume, explore and Slicer use it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.config_utils import config_from_dict, config_to_dict
from MedDINOv3Core.layers.blur import gaussian_blur
from MedDINOv3Core.models.segmenter import MultiScaleBackbone
from MedDINOv3Core.models.vit import ViTConfig
from MedDINOv3Core.resampling import bilinear_matrix

HEAD_TYPE = "fewshot"


@dataclass(frozen=True)
class FewShotHeadConfig:
    """The few-shot head, stored in ``card.head``.

    Args:
        n_classes: logit channels, background included (= number of labels + 1).
        type: always "fewshot" (tells model builders which head this is).
        intermediate_layers: aggregated backbone blocks; empty = the backbone's default four.
        hidden: width of the MLP.
        image_sigmas: Gaussian sigmas (model-grid pixels) of the image channels; 0 is the unsmoothed image.
        in_chans: channels of the input image (repeated to the backbone's input channels).
        position: add the pixel's normalised (y, x) position in the slice (-1..1) as two more channels. Within one
            volume (the few-shot use: paint a few slices, segment the rest) position separates left from right
            organs that look alike; a backbone that encodes position makes it redundant.
    """

    n_classes: int
    type: str = HEAD_TYPE
    intermediate_layers: tuple[int, ...] = ()
    hidden: int = 64
    image_sigmas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    in_chans: int = 1
    position: bool = True

    def __post_init__(self) -> None:
        if self.type != HEAD_TYPE:
            raise ValueError(f"FewShotHeadConfig.type must be {HEAD_TYPE!r}, got {self.type!r}")
        if self.n_classes < 2:
            raise ValueError(f"a segmenter needs n_classes >= 2 (background + one label), got {self.n_classes}")
        if self.hidden < 1 or self.in_chans < 1:
            raise ValueError("hidden and in_chans must be positive")
        object.__setattr__(self, "image_sigmas", tuple(float(s) for s in self.image_sigmas))
        if any(s < 0 for s in self.image_sigmas):
            raise ValueError(f"image_sigmas must be >= 0, got {self.image_sigmas}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FewShotHeadConfig:
        return config_from_dict(cls, dict(data), where="few-shot head config")


def is_fewshot_head(head: Mapping[str, Any] | None) -> bool:
    """Whether a card's head configuration describes a few-shot head."""
    return isinstance(head, Mapping) and head.get("type") == HEAD_TYPE


class FewShotHead(nn.Module):
    """Per-pixel MLP on upsampled token features plus multi-scale image channels (see the module docstring).

    Args:
        feature_dim: channels of the multi-scale token map (number of blocks x embed dim).
        config: the head configuration.
    """

    def __init__(self, feature_dim: int, config: FewShotHeadConfig) -> None:
        super().__init__()
        self.config = config
        n_image = config.in_chans * max(1, len(config.image_sigmas)) + (2 if config.position else 0)
        self.token_proj = nn.Conv2d(feature_dim, config.hidden, 1)
        self.image_proj = nn.Conv2d(n_image, config.hidden, 1, bias=False)
        self.hidden = nn.Conv2d(config.hidden, config.hidden, 1)
        self.out = nn.Conv2d(config.hidden, config.n_classes, 1)

    def image_channels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) normalised image -> (B, K, H, W): smoothed copies (+ y, x position in -1..1)."""
        sigmas = self.config.image_sigmas or (0.0,)
        channels = [gaussian_blur(x, s) for s in sigmas]
        if self.config.position:
            b, _, h, w = x.shape
            ys = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
            xs = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
            channels += [ys, xs]
        return torch.cat(channels, dim=1)

    def project_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim, h, w) -> (B, hidden, h, w) (W_f on the token grid, as matmuls: CPU convolution kernels
        are several times slower for a 1x1 convolution with thousands of input channels). Channels-last features
        (the feature cache's layout) and NCHW features (the backbone's) are both read without a copy."""
        b, c, h, w = features.shape
        weight, bias = self.token_proj.weight[:, :, 0, 0], self.token_proj.bias
        last = features.permute(0, 2, 3, 1)
        if last.is_contiguous():
            return F.linear(last.reshape(b * h * w, c), weight, bias).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        out = torch.matmul(weight, features.reshape(b, c, h * w)) + bias[:, None]
        return out.reshape(b, -1, h, w)

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        """Channels-last (..., hidden) -> (..., n_classes): the two 1x1 convolutions as matmuls (on a CPU about 1.8x
        faster than NCHW 1x1 convolutions at 512 x 512, same weights)."""
        h = F.linear(F.gelu(h), self.hidden.weight[:, :, 0, 0], self.hidden.bias)
        return F.linear(F.gelu(h), self.out.weight[:, :, 0, 0], self.out.bias)

    def forward(self, features: torch.Tensor, image: torch.Tensor, band_pixels: int = 8192) -> torch.Tensor:
        """features (B, feature_dim, h, w), image (B, in_chans, H, W) -> logits (B, n_classes, H, W).

        Computed one band of rows (about ``band_pixels`` pixels) at a time, so that a band's activations stay in
        the CPU's cache instead of streaming (H x W x hidden) activations through memory after each step. The
        projected tokens are resized along x once per slice; a band's rows then mix the two or three token rows it
        touches (one small matmul). The hidden layer runs channels last and the output layer channels first: the
        layouts in which these matrix shapes are fastest on a CPU (a 512 x 512 slice of ViT-B features on 2 cores:
        about 75 ms, against about 100 ms for the earlier banded form and 270 ms for the NCHW formula; same values).
        """
        tokens = self.project_tokens(features).permute(0, 2, 3, 1)  # (B, h, w, hidden)
        channels = self.image_channels(image).permute(0, 2, 3, 1).contiguous()  # (B, H, W, K)
        b, grid_h, grid_w, hidden = tokens.shape
        height, width = image.shape[-2:]
        across = torch.from_numpy(bilinear_matrix(grid_w, width)).to(tokens)  # (W, w)
        w_image = self.image_proj.weight[:, :, 0, 0].T
        w_hidden, b_hidden = self.hidden.weight[:, :, 0, 0].T, self.hidden.bias
        w_out, b_out = self.out.weight[:, :, 0, 0], self.out.bias[:, None]
        out = image.new_empty(b, self.config.n_classes, height, width)
        bands = _row_bands(height, grid_h, max(1, band_pixels // width), tokens)
        for i in range(b):
            wide = torch.matmul(across, tokens[i]).reshape(grid_h, width * hidden)  # resized along x
            for r0, r1, lo, hi, mix in bands:
                n = (r1 - r0) * width
                h = torch.mm(mix, wide[lo:hi]).view(n, hidden)  # resized along y
                h.addmm_(channels[i, r0:r1].view(n, -1), w_image)
                h = torch.addmm(b_hidden, F.gelu(h), w_hidden)
                out[i, :, r0:r1].view(-1, n).copy_(torch.addmm(b_out, w_out, F.gelu(h).T))
        return out

    def point_logits(self, projected: torch.Tensor, image_channels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Logits at sampled pixels, equal to ``forward`` there (training on cached features).

        Args:
            projected: (S, hidden, h, w) ``project_tokens`` of S slices.
            image_channels: (S, K, H, W) ``image_channels`` of the same slices (full resolution).
            points: (N, 3) int64 rows (slice, y, x).

        Returns:
            (N, n_classes) logits.
        """
        s, yy, xx = points[:, 0], points[:, 1], points[:, 2]
        H, W = image_channels.shape[-2:]
        tokens = bilinear_at(projected, (H, W), s, yy, xx)  # (N, hidden)
        pixels = image_channels[s, :, yy, xx]  # (N, K)
        return self._mlp(tokens + pixels @ self.image_proj.weight[:, :, 0, 0].T)


def _row_bands(height: int, cells: int, rows: int, like: torch.Tensor) -> list[tuple[int, int, int, int, torch.Tensor]]:
    """Bands of ``rows`` output rows of a bilinear resize of ``cells`` rows to ``height``: (r0, r1, lo, hi, mix),
    where rows r0..r1-1 are ``mix`` (r1 - r0, hi - lo) times source rows lo..hi-1."""
    matrix = bilinear_matrix(cells, height)
    bands = []
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        used = np.flatnonzero(matrix[r0:r1].any(axis=0))
        lo, hi = int(used[0]), int(used[-1]) + 1
        bands.append((r0, r1, lo, hi, torch.from_numpy(matrix[r0:r1, lo:hi]).to(like)))
    return bands


def bilinear_taps(
    size: int, cells: int, dtype: torch.dtype, device: torch.device | str | None = None, at: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two source cells and the weight of the second, for output positions ``at`` (default: all ``size``) of a
    bilinear resize of ``cells`` cells to ``size`` pixels with ``align_corners=False`` (as ``F.interpolate``)."""
    positions = torch.arange(size, device=device) if at is None else at
    v = ((positions.to(dtype) + 0.5) * (cells / size) - 0.5).clamp(0, cells - 1)
    first = v.floor().long()
    return first, (first + 1).clamp(max=cells - 1), v - first


def bilinear_at(
    maps: torch.Tensor, size: tuple[int, int], s: torch.Tensor, yy: torch.Tensor, xx: torch.Tensor
) -> torch.Tensor:
    """Values of ``F.interpolate(maps, size, mode="bilinear", align_corners=False)`` at pixels (s, yy, xx).

    Computed from the four neighbouring cells by gathers (cheap forward and backward for a few thousand points
    of a map that is never upsampled as a whole). maps (S, C, h, w); s, yy, xx (N,) int64 -> (N, C).
    """
    n_maps, channels, h, w = maps.shape
    y0, y1, fy = bilinear_taps(size[0], h, maps.dtype, at=yy)
    x0, x1, fx = bilinear_taps(size[1], w, maps.dtype, at=xx)
    fy, fx = fy[:, None], fx[:, None]
    flat = maps.permute(0, 2, 3, 1).reshape(n_maps * h * w, channels)
    base = s * (h * w)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, base + yi * w + xi)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


class FewShotSegmenter(MultiScaleBackbone):
    """Frozen-backbone few-shot segmenter: (B, in_chans, H, W) -> logits (B, n_classes, H, W).

    H and W must be multiples of the backbone's patch size (predict_volume pads for you).
    """

    def __init__(self, backbone: ViTConfig, config: FewShotHeadConfig, init_backbone: bool = True) -> None:
        super().__init__(backbone, config, init_backbone)
        self.head = FewShotHead(self.feature_dim, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), x)


__all__ = [
    "HEAD_TYPE",
    "FewShotHead",
    "FewShotHeadConfig",
    "FewShotSegmenter",
    "is_fewshot_head",
]

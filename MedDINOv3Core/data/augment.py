"""nnU-Net-style 2D data augmentation in torch (the MedDINOv3 paper, arXiv:2509.02379), seeded by a torch.Generator.

The transforms and their defaults follow nnU-Net v2's training pipeline for 2D configurations:

- spatial (applied while the patch is cut out of the slice, so rotated corners show real image, not padding):
  rotation (p 0.2, uniform in +-180 deg) and scaling (p 0.2, factor 0.7..1.4; > 1 zooms out), bilinear for the
  image, nearest for labels;
- Gaussian noise (p 0.1, variance uniform in 0..0.1), Gaussian blur (p 0.2, sigma 0.5..1 px),
  multiplicative brightness (p 0.15, 0.75..1.25), contrast (p 0.15, 0.75..1.25, range preserved),
  low-resolution simulation (p 0.25, nearest downsampling by 0.5..1, bicubic upsampling),
  gamma (p 0.1 on the inverted image and p 0.3 on the image, gamma 0.7..1.5, mean and std retained),
  mirroring along each in-plane axis (p 0.5).

A hand-written torch version rather than MONAI's transforms: the whole batch is augmented with one
torch.Generator derived from (seed, step), which makes a resumed run draw exactly the same augmentations, and the
spatial transform is fused with the patch sampling. Intensity transforms see normalised images (B, 1, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from MedDINOv3Core.config_utils import config_from_dict, config_to_dict
from MedDINOv3Core.layers.blur import gaussian_blur


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentations (nnU-Net v2 2D defaults). ``enabled=False`` turns all off."""

    enabled: bool = True
    p_rotation: float = 0.2
    rotation_deg: float = 180.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_mirror: float = 0.5

    def __post_init__(self) -> None:
        for name, value in config_to_dict(self).items():
            if name.startswith("p_") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"augmentation probability {name} must be in [0, 1], got {value}")
            if isinstance(value, list):
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"augmentation range {name} must be [low, high] with low <= high, got {value}")
                object.__setattr__(self, name, (float(value[0]), float(value[1])))
        if self.scale_range[0] <= 0 or self.lowres_zoom[0] <= 0 or self.gamma_range[0] <= 0:
            raise ValueError("scale_range, lowres_zoom and gamma_range must be positive")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        return config_from_dict(cls, dict(data), where="augmentation config")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) < p


def sample_affine(n: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 2) float64 matrices mapping patch offsets (dy, dx) in pixels to slice offsets (rotation x scale).

    Identity for samples that draw neither rotation nor scaling (and for all when augmentation is disabled).
    """
    rotate = _coin(n, config.p_rotation, generator)
    scale = _coin(n, config.p_scale, generator)
    angle = _uniform(n, -config.rotation_deg, config.rotation_deg, generator) * math.pi / 180.0
    factor = _uniform(n, *config.scale_range, generator)
    if not config.enabled:
        rotate[:] = False
        scale[:] = False
    angle = torch.where(rotate, angle, torch.zeros_like(angle))
    factor = torch.where(scale, factor, torch.ones_like(factor))
    cos, sin = torch.cos(angle) * factor, torch.sin(angle) * factor
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def warp_patch(
    image: torch.Tensor,
    label: torch.Tensor,
    center: tuple[float, float],
    matrix: torch.Tensor,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a (rotated, scaled) patch out of one slice.

    Output pixel (i, j) samples the slice at ``center + matrix @ (i - (h-1)/2, j - (w-1)/2)`` (pixel index
    coordinates, (y, x)). With the identity matrix and a centre at ``top + (h-1)/2, left + (w-1)/2`` this is exactly
    the crop ``[top:top+h, left:left+w]``. Outside the slice the image repeats its border (air stays air) and the
    label is background (0).

    Args:
        image: (H, W) float slice. label: (H, W) integer class indices.
        center: (cy, cx) in pixel index coordinates. matrix: (2, 2). size: (h, w) of the patch.

    Returns:
        (1, h, w) float32 image patch and (h, w) int64 label patch.
    """
    h, w = size
    H, W = image.shape
    dy = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    dx = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    offsets = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1)  # (h, w, 2) as (dy, dx)
    src = offsets @ matrix.T + torch.tensor(center, dtype=torch.float64)  # (h, w, 2) as (y, x)
    grid = torch.stack([(2 * src[..., 1] + 1) / W - 1, (2 * src[..., 0] + 1) / H - 1], -1).float()[None]
    img = F.grid_sample(image[None, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    lab = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img[0], lab[0, 0].round().long()


def _gamma(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """nnU-Net gamma with retained statistics: rescale to [0, 1], power, rescale back, restore mean and std."""
    mean, std = x.mean(), x.std()
    lo, hi = x.min(), x.max()
    span = (hi - lo).clamp_min(1e-7)
    y = ((x - lo) / span).clamp_min(0) ** gamma * span + lo
    y_std = y.std().clamp_min(1e-7)
    return (y - y.mean()) / y_std * std + mean


def _sample_gamma(config: AugmentConfig, generator: torch.Generator) -> float:
    lo, hi = config.gamma_range
    if lo < 1 < hi and bool(_coin(1, 0.5, generator)):
        return float(_uniform(1, lo, 1.0, generator))
    return float(_uniform(1, max(lo, 1.0) if lo < 1 < hi else lo, hi, generator))


def augment_intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Noise, blur, brightness, contrast, low resolution and gamma on normalised images (B, C, H, W) -> same shape.

    Every sample draws its own transforms; the draws come from ``generator`` in a fixed order, so the result is a
    pure function of the generator state.
    """
    if not config.enabled:
        return images
    out = []
    for x in images.float():
        x = x[None]  # (1, C, H, W)
        if _coin(1, config.p_noise, generator):
            var = float(_uniform(1, *config.noise_variance, generator))
            x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator).to(x)
        if _coin(1, config.p_blur, generator):
            x = gaussian_blur(x, float(_uniform(1, *config.blur_sigma, generator)))
        if _coin(1, config.p_brightness, generator):
            x = x * float(_uniform(1, *config.brightness_range, generator))
        if _coin(1, config.p_contrast, generator):
            factor = float(_uniform(1, *config.contrast_range, generator))
            lo, hi, mean = x.min(), x.max(), x.mean()
            x = ((x - mean) * factor + mean).clamp(lo, hi)
        if _coin(1, config.p_lowres, generator):
            zoom = float(_uniform(1, *config.lowres_zoom, generator))
            h, w = x.shape[-2:]
            small = F.interpolate(x, size=(max(1, round(h * zoom)), max(1, round(w * zoom))), mode="nearest")
            x = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
        if _coin(1, config.p_gamma_inverted, generator):
            x = -_gamma(-x, _sample_gamma(config, generator))
        if _coin(1, config.p_gamma, generator):
            x = _gamma(x, _sample_gamma(config, generator))
        out.append(x[0])
    return torch.stack(out).to(images.dtype)


def mirror(
    images: torch.Tensor, labels: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample along y and/or x with probability ``p_mirror`` each: images (B, C, H, W), labels (B, H, W)."""
    if not config.enabled:
        return images, labels
    flips = _coin(2 * images.shape[0], config.p_mirror, generator).view(-1, 2)
    images, labels = images.clone(), labels.clone()
    for b, (fy, fx) in enumerate(flips.tolist()):
        dims = [d for d, f in ((-2, fy), (-1, fx)) if f]
        if dims:
            images[b] = torch.flip(images[b], dims)
            labels[b] = torch.flip(labels[b], dims)
    return images, labels


__all__ = ["AugmentConfig", "augment_intensity", "gaussian_blur", "mirror", "sample_affine", "warp_patch"]

"""Multi-crop self-supervised views of CT slices: global and local random resized crops with mild CT augmentations.

A slice enters as a (H, W) float32 image already mapped from HU to [0, 1] (see ``hu_to_unit``). Each view is a
random resized crop (area fraction in ``scale``, aspect ratio log-uniform in [3/4, 4/3]) resized to the requested
size, flipped horizontally with probability ``flip_p``, then given mild intensity changes suitable for CT
(brightness shift, contrast scaling about the crop mean, occasional Gaussian blur; no colour), and finally
normalised to the model input exactly as ``MedDINOv3Core.data.preprocess`` scheme "ct_clip_zscore" does:
(HU - mean) / std with HU clamped to ``hu_range``, repeated to ``in_chans`` channels. The defaults are the MedDINOv3
demo statistics (65.1084, 178.0166), so the exported backbone's model card records the same preprocessing that
finetuning and inference then apply. The Gram teacher's crop is the SAME box (and augmentation) resized to
``gram_scale`` times the global size.

Sizes are chosen per batch (all views of one kind in a batch share a size), so a resolution list lets stage 3 mix
512-768 global and 112-336 local crops from step to step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from MedDINOv3Core.config_utils import config_from_dict, config_to_dict

HU_RANGE = (-1000.0, 1000.0)
DEMO_MEAN_HU = 65.1084
DEMO_STD_HU = 178.0166


@dataclass(frozen=True)
class CropConfig:
    """Multi-crop and augmentation settings (paper stage 1: 2 x 224 global at 0.32-1.0, 8 x 96 local at 0.05-0.32)."""

    global_sizes: tuple[int, ...] = (224,)
    local_sizes: tuple[int, ...] = (96,)
    n_global: int = 2
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    flip_p: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.2
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    gram_scale: int = 2
    hu_range: tuple[float, float] = HU_RANGE
    norm_mean: float = DEMO_MEAN_HU
    norm_std: float = DEMO_STD_HU
    in_chans: int = 3

    def __post_init__(self) -> None:
        if not self.global_sizes or not self.local_sizes:
            raise ValueError("global_sizes and local_sizes need at least one size each")
        if self.n_global < 1 or self.n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {self.n_global}, {self.n_local}")
        for lo, hi in (self.global_scale, self.local_scale):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"crop scale ranges must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
        if not self.norm_std > 0 or not self.hu_range[0] < self.hu_range[1]:
            raise ValueError(f"need norm_std > 0 and hu_range low < high, got {self.norm_std}, {self.hu_range}")

    def preprocessing(self) -> dict[str, Any]:
        """The equivalent ``MedDINOv3Core.data.preprocess.PreprocessConfig`` fields (for the model card)."""
        return {
            "scheme": "ct_clip_zscore",
            "clip_low": float(self.hu_range[0]),
            "clip_high": float(self.hu_range[1]),
            "mean": float(self.norm_mean),
            "std": float(self.norm_std),
        }

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropConfig:
        return config_from_dict(cls, data, where="crop config")


def hu_to_unit(hu: np.ndarray | torch.Tensor, hu_range: tuple[float, float] = HU_RANGE):
    """Clamp HU to ``hu_range`` ([-1000, 1000]) and map it linearly to [0, 1]."""
    lo, hi = hu_range
    if isinstance(hu, torch.Tensor):
        return (hu.float().clamp(lo, hi) - lo) / (hi - lo)
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def normalize_input(unit: torch.Tensor, config: CropConfig) -> torch.Tensor:
    """(..., H, W) image in [0, 1] -> (..., C, H, W) model input: back to HU, (HU - mean) / std, C channels."""
    lo, hi = config.hu_range
    x = (unit * (hi - lo) + lo - config.norm_mean) / config.norm_std
    return x.unsqueeze(-3).expand(*x.shape[:-2], config.in_chans, *x.shape[-2:]).contiguous()


def _crop_box(h: int, w: int, scale: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random box (top, left, height, width) of area fraction in ``scale`` and aspect ratio in [3/4, 4/3]."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)  # fallback: central square
    return (h - side) // 2, (w - side) // 2, side, side


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (H, W) image with reflect padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    t = img[None, None]
    pad = min(radius, img.shape[0] - 1, img.shape[1] - 1)
    if pad < radius:
        k = k[radius - pad : radius + pad + 1]
        k = k / k.sum()
    t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
    t = F.conv2d(t, k.view(1, 1, 1, -1))
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    return t[0, 0]


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(img[None, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def make_view(
    image: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    config: CropConfig,
    rng: np.random.Generator,
    extra_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One augmented view of a (H, W) image in [0, 1].

    Returns the (C, size, size) normalised view and, when ``extra_size`` is given, the same box and augmentation at
    (C, extra_size, extra_size) (the Gram teacher's crop), else None.
    """
    top, left, ch, cw = _crop_box(image.shape[0], image.shape[1], scale, rng)
    box = image[top : top + ch, left : left + cw]
    flip = rng.random() < config.flip_p
    shift = rng.uniform(-config.brightness, config.brightness)
    gain = math.exp(rng.uniform(-config.contrast, config.contrast))
    sigma = rng.uniform(*config.blur_sigma) if rng.random() < config.blur_p else 0.0

    def render(out_size: int, sigma_scale: float) -> torch.Tensor:
        v = _resize(box, out_size)
        if flip:
            v = v.flip(-1)
        if sigma > 0:
            v = _gaussian_blur(v, sigma * sigma_scale)
        v = (v - v.mean()) * gain + v.mean() + shift
        return normalize_input(v.clamp(0.0, 1.0), config)

    view = render(size, 1.0)
    extra = render(extra_size, extra_size / size) if extra_size else None
    return view, extra


def make_views(
    image: np.ndarray | torch.Tensor,
    config: CropConfig,
    global_size: int,
    local_size: int,
    rng: np.random.Generator,
    with_gram: bool = False,
) -> dict[str, torch.Tensor]:
    """All views of one slice.

    Args:
        image: (H, W) slice in [0, 1].
        config: crop settings.
        global_size, local_size: this batch's crop sizes.
        rng: the sample's random generator.
        with_gram: also return the Gram teacher's crops.

    Returns a dict: "global" (n_global, C, G, G), "local" (n_local, C, L, L) and, with ``with_gram``,
    "gram" (n_global, C, s*G, s*G) with s = config.gram_scale.
    """
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if img.ndim != 2:
        raise ValueError(f"a CT slice must be a (H, W) image, got shape {tuple(img.shape)}")
    gram_size = global_size * config.gram_scale if with_gram else None
    globals_, grams = [], []
    for _ in range(config.n_global):
        view, extra = make_view(img, global_size, config.global_scale, config, rng, gram_size)
        globals_.append(view)
        grams.append(extra)
    locals_ = [make_view(img, local_size, config.local_scale, config, rng)[0] for _ in range(config.n_local)]
    c = config.in_chans
    out = {
        "global": torch.stack(globals_),
        "local": torch.stack(locals_) if locals_ else torch.zeros(0, c, local_size, local_size),
    }
    if with_gram:
        out["gram"] = torch.stack(grams)
    return out

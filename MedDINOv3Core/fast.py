"""CPU fast mode (issue 19): fewer FLOPs and cheaper arithmetic for volume prediction and feature extraction.

``FastConfig`` switches three approximations, each kept because the benchmark harness (``python -m training bench``)
showed that it pays on a 2-core CPU (BENCHMARKS.md, "CPU fast mode and the GPU path"):

- body crop: every batch of slices is cropped to the bounding box of the body (CT voxels above ``body_hu``), grown by
  ``margin`` patches of air and snapped to the patch grid; slices without body are not run at all. Outside the box
  the logits are background (``background_logits``). The crop keeps its RoPE positions in the whole slice
  (``rope_window``), but the ViT no longer attends to the air patches cut away, so the logits inside the body change
  a little: not exact, so the plain path never crops. Within the box, only the patches with body (holes such as
  the lungs filled, grown by ``margin``) enter the backbone and the decoder (``body_patches``, ``token_logits``:
  the Primus decoder maps each token to its own pixels, so the air patches of the box's corners are left out).
- slice subsampling: with slices thinner than ``z_spacing`` mm only every k-th slice (k = floor(z_spacing / dz), the
  first and last always) runs through the model; the slices between get the linear interpolation of their
  neighbours' logits (features: of their features, renormalised), as the CPU fast modes of peers do.
- int8: ``quantize_dynamic`` of the MLP and attention-output ``nn.Linear`` layers (weights int8, activations
  quantised per batch; CPU only; qkv stays fp32 because the attention reads views of its fused weight). On by
  default for the fast feature extraction (backbone only: it pays there), off for the fast prediction, where with the
  crop and the body patches it no longer did (``FastConfig.extraction()`` and ``FastConfig()``).

All maths here are plain functions of tensors; ``inference.predict_volume(fast=...)`` and
``extraction.extract_features(fast=...)`` call them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.layers.rope import RopePositionEmbedding

log = logging.getLogger(__name__)

BACKGROUND_LOGIT = 30.0  # logit margin of background over every other class outside the body


@dataclass(frozen=True)
class FastConfig:
    """What the fast mode changes (all on by default; ``FastConfig.off()`` changes nothing).

    Args:
        crop_body: crop every batch to the body's bounding box and skip slices without body (CT only).
        body_tokens: within the crop, run only the patches with body (grown by ``margin``) through the backbone and
            the decoder (Primus segmenters; needs ``crop_body``).
        z_spacing: run only slices about this far apart (mm) and interpolate between them; 0 runs every slice.
        quantize: int8 dynamic quantisation of the MLP and attention-output linear layers (CPU only; a quantised
            copy of the model is held beside it).
        margin: patches of air kept around the body's bounding box.
        body_hu: CT intensity (HU) above which a voxel is body.
    """

    crop_body: bool = True
    body_tokens: bool = True
    z_spacing: float = 3.0
    quantize: bool = False
    margin: int = 1
    body_hu: float = -500.0

    def __post_init__(self) -> None:
        if not self.z_spacing >= 0:
            raise ValueError(f"z_spacing must be >= 0 mm (0: every slice), got {self.z_spacing}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0 patches, got {self.margin}")

    @classmethod
    def extraction(cls) -> FastConfig:
        """The fast feature extraction's settings: int8 and slice subsampling (extraction never crops)."""
        return cls(quantize=True)

    @classmethod
    def off(cls) -> FastConfig:
        return cls(crop_body=False, body_tokens=False, z_spacing=0.0, quantize=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slice_step(dz: float, z_spacing: float) -> int:
    """Every k-th slice runs: k = floor(z_spacing / dz) (at least 1); dz and z_spacing in mm."""
    if z_spacing <= 0 or dz <= 0:
        return 1
    return max(1, int(math.floor(z_spacing / dz + 1e-6)))


def computed_slices(total: int, step: int) -> list[int]:
    """Indices of the slices that run through the model: 0, step, 2 step, ... and always the last one."""
    if total <= 0:
        return []
    idx = list(range(0, total, step))
    if idx[-1] != total - 1:
        idx.append(total - 1)
    return idx


def interpolate_between(a: torch.Tensor, b: torch.Tensor, ka: int, kb: int) -> torch.Tensor:
    """Slices ka+1 .. kb from the maps of slices ka (``a``) and kb (``b``), each (C, H, W): (kb - ka, C, H, W).

    Linear in the slice index; the last one is ``b`` itself.
    """
    n = kb - ka
    w = torch.arange(1, n + 1, dtype=a.dtype, device=a.device).view(n, 1, 1, 1) / n
    return torch.lerp(a.unsqueeze(0), b.unsqueeze(0), w)


def fill_features(features: np.ndarray, norms: np.ndarray, computed: list[int], n_blocks: int) -> None:
    """Fill the slices between ``computed`` ones of a feature cache in place (fast extraction).

    ``features`` (Z, h, w, D) holds L2-normalised blocks concatenated and normalised again (each block part has norm
    1 / sqrt(n_blocks)); between two computed slices each block is interpolated linearly and renormalised the same
    way, and the per-block raw-token ``norms`` (Z, h, w, n_blocks) are interpolated linearly.
    """

    def between(a: np.ndarray, b: np.ndarray, n: int) -> torch.Tensor:  # slices 1 .. n-1 of n steps from a to b
        w = torch.arange(1, n, dtype=torch.float32).view(n - 1, *([1] * a.ndim)) / n
        a_t, b_t = torch.from_numpy(np.asarray(a, dtype=np.float32)), torch.from_numpy(np.asarray(b, dtype=np.float32))
        return torch.lerp(a_t[None], b_t[None], w)

    for ka, kb in zip(computed[:-1], computed[1:]):
        if kb - ka < 2:
            continue
        mid = between(features[ka], features[kb], kb - ka)  # (kb - ka - 1, h, w, D)
        n, h, w, d = mid.shape
        blocks = torch.nn.functional.normalize(mid.reshape(n, h, w, n_blocks, d // n_blocks), dim=-1)
        features[ka + 1 : kb] = (blocks.reshape(n, h, w, d) / math.sqrt(n_blocks)).numpy().astype(features.dtype)
        norms[ka + 1 : kb] = between(norms[ka], norms[kb], kb - ka).numpy()


def body_threshold(prepared, hu: float) -> float | None:
    """``hu`` in the prepared volume's normalised units, or None when its scheme is not CT (then nothing is cropped)."""
    if prepared.config.scheme != "ct_clip_zscore":
        return None
    return float(prepared.normalise(np.asarray([hu], dtype=np.float32))[0])


def body_box(x: torch.Tensor, threshold: float, patch: int, margin: int) -> tuple[int, int, int, int] | None:
    """Bounding box (y0, y1, x0, x1) of the voxels above ``threshold`` in any slice of ``x`` (n, c, H, W).

    ``H`` and ``W`` are patch multiples (a padded frame); the box is grown by ``margin`` patches, snapped outward to
    the frame's patch grid and clipped to the frame. None when no voxel is above the threshold.
    """
    mask = (x > threshold).flatten(0, 1).any(dim=0)
    rows, cols = torch.nonzero(mask.any(dim=1)), torch.nonzero(mask.any(dim=0))
    if rows.numel() == 0:
        return None
    h, w = x.shape[-2:]
    y0 = max(0, (int(rows[0]) // patch - margin) * patch)
    x0 = max(0, (int(cols[0]) // patch - margin) * patch)
    y1 = min(h, (-(-(int(rows[-1]) + 1) // patch) + margin) * patch)
    x1 = min(w, (-(-(int(cols[-1]) + 1) // patch) + margin) * patch)
    return y0, y1, x0, x1


def body_patches(x: torch.Tensor, threshold: float, patch: int, margin: int) -> torch.Tensor | None:
    """Row-major indices of the body's patches in ``x`` (n, c, H, W; patch multiples); None when that is every patch.

    A patch is body when it holds a voxel above ``threshold`` in any slice, or when it lies in a hole of those
    patches (air inside the body: the lungs, the airways, bowel gas are below the body threshold but are anatomy),
    grown by ``margin`` patches.
    """
    h, w = x.shape[-2] // patch, x.shape[-1] // patch
    mask = (x > threshold).flatten(0, 1).any(dim=0).view(h, patch, w, patch).any(dim=3).any(dim=1)
    mask = fill_holes(mask)
    if margin > 0:
        grown = F.max_pool2d(mask[None, None].float(), 2 * margin + 1, stride=1, padding=margin)
        mask = grown[0, 0] > 0
    if bool(mask.all()):
        return None
    return torch.nonzero(mask.flatten()).flatten()


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """A 2D bool mask with its holes filled: every cell that the outside cannot reach through False cells (4-connected)
    becomes True."""
    free = ~mask
    outside = torch.zeros_like(mask)
    outside[0], outside[-1], outside[:, 0], outside[:, -1] = free[0], free[-1], free[:, 0], free[:, -1]
    while True:  # grow the outside through free cells until it stops (at most h x w steps; a few dozen in practice)
        grown = outside.clone()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if torch.equal(grown, outside):
            return ~outside
        outside = grown


def supports_token_subset(model: nn.Module) -> bool:
    """Whether ``token_logits`` can run ``model``: a segmenter whose decoder maps every token to its own block of
    pixels (the Primus decoder; the few-shot head mixes neighbouring tokens)."""
    return hasattr(model, "token_features") and hasattr(getattr(model, "decoder", None), "token_logits")


def token_logits(model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits (n, C, H, W) of ``x`` (n, c, H, W) where only the patches ``keep`` run through the backbone and the
    decoder (body patches inside a crop: air patches cost nothing); the others are background (``BACKGROUND_LOGIT``).
    """
    features = model.token_features(x, keep)  # (n, k, F)
    n, k, _ = features.shape
    blocks = model.decoder.token_logits(features.reshape(n * k, -1)).float()  # (n k, C, p, p)
    c, p = blocks.shape[1], blocks.shape[-1]
    h, w = x.shape[-2] // p, x.shape[-1] // p
    out = torch.zeros((n, h * w, c, p, p), dtype=torch.float32, device=x.device)
    out[:, :, 0] = BACKGROUND_LOGIT
    out[:, keep] = blocks.view(n, k, c, p, p)
    return out.view(n, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h * p, w * p)


@contextlib.contextmanager
def rope_window(model: nn.Module, frame: tuple[int, int], offset: tuple[int, int]) -> Iterator[None]:
    """Within the block, the model's RoPE gives a (h, w)-patch input the positions of the window at ``offset`` (in
    patches) of a ``frame``-patch image, i.e. a crop keeps the coordinates it had in the whole (DINOv3 RoPE
    normalises positions to the input's extent, so a crop would otherwise see its anatomy stretched)."""
    ropes = [m for m in model.modules() if isinstance(m, RopePositionEmbedding)]

    def windowed(rope: RopePositionEmbedding):
        full = type(rope).forward

        def forward(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
            sin, cos = full(rope, *frame)
            r0, c0 = offset
            pick = lambda t: t.view(*frame, -1)[r0 : r0 + height, c0 : c0 + width].reshape(height * width, -1)  # noqa: E731
            return pick(sin), pick(cos)

        return forward

    for rope in ropes:
        rope.forward = windowed(rope)
    try:
        yield
    finally:
        for rope in ropes:
            del rope.forward


def paste(canvas: torch.Tensor, part: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Write ``part`` (n, C, y1 - y0, x1 - x0) into ``canvas`` (n, C, H, W) at ``box``."""
    y0, y1, x0, x1 = box
    canvas[..., y0:y1, x0:x1] = part
    return canvas


def background_logits(n: int, n_classes: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(n, C, H, W) fp32 logits that say background: class 0 at ``BACKGROUND_LOGIT``, every other class at 0."""
    out = torch.zeros((n, n_classes, *shape), dtype=torch.float32, device=device)
    out[:, 0] = BACKGROUND_LOGIT
    return out


def quantized_linear_names(model: nn.Module) -> set[str]:
    """Names of the ``nn.Linear`` modules that int8 dynamic quantisation may replace: MLP layers and attention outputs.

    The attention's fused ``qkv`` is excluded: the attention computes q, k and v from views of its weight tensor.
    """
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith("qkv")}


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with int8 dynamic quantisation of ``quantized_linear_names`` (CPU inference only).

    Weights are stored in int8 (per-tensor scale), activations quantised per batch on the fly (fbgemm on x86).
    """
    from torch.ao.quantization import quantize_dynamic

    names = quantized_linear_names(model)
    if not names:
        return model
    with warnings.catch_warnings():  # torch's deprecation notice of the quantised tensor API, once a call
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(copy.deepcopy(model).cpu().eval(), names, dtype=torch.qint8)
    log.info("int8 dynamic quantisation of %d linear layers", len(names))
    return quantized


__all__ = [
    "BACKGROUND_LOGIT",
    "FastConfig",
    "background_logits",
    "body_box",
    "body_patches",
    "body_threshold",
    "fill_features",
    "fill_holes",
    "computed_slices",
    "interpolate_between",
    "paste",
    "quantize_int8",
    "quantized_linear_names",
    "rope_window",
    "slice_step",
    "supports_token_subset",
    "token_logits",
]

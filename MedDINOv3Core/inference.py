"""Volume inference: slice-wise, batched, streaming, tiled with Gaussian weighting, geometry-exact.

``predict_volume(model, card, volume)`` runs a 2D segmenter over the axial slices of ``volume`` (MedDINOv3
paper, arXiv:2509.02379):

1. ``prepare_volume`` (MedDINOv3Core.data.preprocess) with the card's preprocessing: axial layout, intensity
   normalisation, in-plane resampling to the model spacing; slices are produced one batch at a time.
2. Each batch (B, 1, H', W') is padded (constant ``pad_value`` in normalised units, as nnU-Net) to at least the
   tile size and to a multiple of the patch size, then covered by tiles of ``tile_size`` placed with ``step`` x tile
   spacing; tile logits are averaged with a Gaussian importance map (sigma = ``gaussian_sigma`` x tile size).
   Optional mirroring TTA averages the logits over the 4 in-plane flips.
3. The batch's logits are resampled back to the native in-plane grid, reduced to labels (argmax -> label values of
   ``card.labels``) and written straight into the output labelmap, which has the input's shape and geometry
   exactly. Only the current batch of logits is ever held, so memory does not grow with the number of slices
   (unless probabilities are requested: they are a (C, z, y, x) float32 output).

fp32 on CPU; autocast (bf16, or fp16 where bf16 is unsupported) on CUDA/MPS; logits are accumulated in fp32.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from MedDINOv3Core.card import InferenceConfig, ModelCard, card_labels
from MedDINOv3Core.data.preprocess import PreparedVolume, prepare_volume
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.device import autocast, select_device
from MedDINOv3Core.progress import check_cancel, report

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """What predict_volume returns.

    labelmap: Volume (uint8, or uint16 when a label value exceeds 255) with the input's exact geometry.
    probabilities: (n_classes, z, y, x) float32 softmax probabilities on the input grid, or None.
    labels: the card's foreground labels (channel c >= 1 is labels[c - 1]).
    device: the device that ran the model. seconds: wall time.
    """

    labelmap: Volume
    probabilities: np.ndarray | None
    labels: tuple
    device: str
    seconds: float


def gaussian_importance_map(size: tuple[int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """(H, W) Gaussian weights centred on the tile, sigma = sigma_scale x size per axis, max 1, no zeros."""
    axes = []
    for n in size:
        coords = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (coords / (sigma_scale * n)) ** 2))
    g = axes[0][:, None] * axes[1][None, :]
    g = g / g.max()
    positive = g[g > 0]
    g = torch.clamp(g, min=float(positive.min()) if positive.numel() else 1.0)
    return g.float()


def tile_starts(length: int, tile: int, step: float) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``length`` (>= tile) with stride <= step x tile, evenly spread."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile * step)) + 1
    stride = (length - tile) / (n - 1)
    return [int(round(i * stride)) for i in range(n)]


def _forward(model: nn.Module, x: torch.Tensor, tta: bool, device: torch.device) -> torch.Tensor:
    """Logits (B, C, h, w) in fp32; with TTA the mean over the 4 in-plane mirrorings."""
    with autocast(device):
        if not tta:
            return model(x).float()
        total = None
        for dims in ((), (-1,), (-2,), (-2, -1)):
            xi = torch.flip(x, dims) if dims else x
            yi = model(xi).float()
            yi = torch.flip(yi, dims) if dims else yi
            total = yi if total is None else total + yi
        return total / 4


def sliding_window_logits(
    model: nn.Module,
    x: torch.Tensor,
    config: InferenceConfig,
    patch_size: int,
    device: torch.device,
    importance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tiled logits for a batch of normalised slices.

    Args:
        model: (B, 1, h, w) -> (B, C, h, w).
        x: (B, 1, H, W) on ``device``.
        config: tile size, step, sigma, TTA, pad value.
        patch_size: the backbone's patch size (tiles and padded sizes are multiples of it).
        importance: cached gaussian_importance_map for the tile size (computed when None).

    Returns:
        (B, C, H, W) fp32 logits on ``device``.
    """
    b, _, h, w = x.shape

    def round_up(n: int) -> int:
        return -(-n // patch_size) * patch_size

    if config.tile_size:
        th, tw = config.tile_size
        if th % patch_size or tw % patch_size:
            raise ValueError(f"tile_size {config.tile_size} must be a multiple of the patch size {patch_size}")
        ph, pw = max(th, round_up(h)), max(tw, round_up(w))
    else:
        ph, pw = round_up(h), round_up(w)
        th, tw = ph, pw
    top, left = (ph - h) // 2, (pw - w) // 2
    if (ph, pw) != (h, w):
        padded = torch.full((b, x.shape[1], ph, pw), config.pad_value, dtype=x.dtype, device=x.device)
        padded[:, :, top : top + h, left : left + w] = x
        x = padded
    ys, xs = tile_starts(ph, th, config.step), tile_starts(pw, tw, config.step)
    if len(ys) * len(xs) == 1:
        logits = _forward(model, x, config.tta, device)
    else:
        if importance is None or tuple(importance.shape) != (th, tw):
            importance = gaussian_importance_map((th, tw), config.gaussian_sigma)
        weight_tile = importance.to(device)
        logits = None
        weights = torch.zeros((ph, pw), dtype=torch.float32, device=device)
        for y0 in ys:
            for x0 in xs:
                out = _forward(model, x[:, :, y0 : y0 + th, x0 : x0 + tw], config.tta, device)
                if logits is None:
                    logits = torch.zeros((b, out.shape[1], ph, pw), dtype=torch.float32, device=device)
                logits[:, :, y0 : y0 + th, x0 : x0 + tw] += out * weight_tile
                weights[y0 : y0 + th, x0 : x0 + tw] += weight_tile
        logits /= weights
    return logits[:, :, top : top + h, left : left + w]


def label_lookup(labels: tuple) -> np.ndarray:
    """Class index -> label value table (index 0 = background 0), uint8 unless a value exceeds 255."""
    values = [0] + [int(label.value) for label in labels]
    return np.asarray(values, dtype=np.uint8 if max(values) <= 255 else np.uint16)


def structure_volumes(labelmap: Volume, labels: tuple) -> list[tuple[int, str, int, float]]:
    """(value, name, voxel count, volume in mL) of every label, in the labels' order (count 0: not found).

    The volume is the voxel count times the voxel volume (the product of the spacing, mm^3) / 1000.
    """
    counts = np.bincount(np.asarray(labelmap.array).reshape(-1).astype(np.int64), minlength=65536)
    voxel_ml = float(np.prod(labelmap.spacing)) / 1000.0
    return [(int(lab.value), lab.name, int(counts[lab.value]), int(counts[lab.value]) * voxel_ml) for lab in labels]


def predict_volume(
    model: nn.Module,
    card: ModelCard,
    volume: Volume,
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    tta: bool | None = None,
    return_probabilities: bool = False,
    progress: Callable[..., None] | None = None,
    cancel: Any = None,
) -> Prediction:
    """Segment ``volume`` slice by slice; the labelmap has exactly the input's shape, spacing, origin, direction.

    Args:
        model: a segmenter (B, 1, H, W) -> logits (B, n_classes, H, W), e.g. from weights.load_model.
        card: its model card (labels, preprocessing, inference settings).
        volume: the input (z, y, x) volume.
        device: "auto" (CUDA -> MPS -> CPU), "cpu", "cuda[:N]", "mps" or a torch.device.
        batch_size: slices per forward pass (default: card.inference batch_size).
        tta: mirroring TTA (default: card.inference tta).
        return_probabilities: also return (n_classes, z, y, x) float32 softmax probabilities.
        progress: callback (stage, done, total, message); stage "predict", counted in slices.
        cancel: a CancelToken / threading.Event; checked between batches (raises progress.Cancelled).

    Returns:
        a Prediction.
    """
    start = time.perf_counter()
    config = InferenceConfig.from_dict(card.inference or {})
    changes = {k: v for k, v in {"batch_size": batch_size, "tta": tta}.items() if v is not None}
    config = config.replace(**changes) if changes else config
    labels = card_labels(card)
    lut = label_lookup(labels)
    n_classes = len(lut)
    dev = select_device(device)
    prepared = prepare_volume(volume, card.preprocessing)
    patch = card.backbone.patch_size
    model = model.to(dev).eval()
    importance = gaussian_importance_map(config.tile_size, config.gaussian_sigma) if config.tile_size else None

    labelmap = np.zeros(volume.shape, dtype=lut.dtype)
    out_axial = prepared.axial_view(labelmap)
    probs = np.zeros((n_classes, *volume.shape), dtype=np.float32) if return_probabilities else None
    probs_axial = prepared.axial_view(probs) if probs is not None else None
    lut_t = torch.from_numpy(lut.astype(np.int64))
    total = len(prepared)
    log.info(
        "predicting %d slices of %s on %s (model grid %s, tile %s, batch %d, tta %s)",
        total,
        volume.shape,
        dev,
        prepared.model_shape,
        config.tile_size or "whole slice",
        config.batch_size,
        config.tta,
    )
    report(progress, "predict", 0, total, f"{total} slices on {dev.type}")
    with torch.inference_mode():
        for k0 in range(0, total, config.batch_size):
            check_cancel(cancel)
            k1 = min(total, k0 + config.batch_size)
            x = torch.from_numpy(prepared.slices(k0, k1))[:, None].to(dev)
            logits = sliding_window_logits(model, x, config, patch, dev, importance)
            if logits.shape[1] != n_classes:
                raise ValueError(
                    f"the model returned {logits.shape[1]} classes but the model card lists {n_classes - 1} labels "
                    "+ background; the card and the weights do not belong together"
                )
            if not bool(torch.isfinite(logits).all()):  # one reduction per batch: never an all-background result
                bad_input = not bool(torch.isfinite(x).all())
                reason = "the input holds NaN or infinite voxels" if bad_input else "check the model's weights"
                raise ValueError(
                    f"the model produced non-finite logits (NaN or infinity) for slices {k0}..{k1 - 1}; {reason}"
                )
            logits = prepared.restore(logits, "bilinear")
            _write_batch(logits, lut_t, out_axial, probs_axial, k0, k1)
            del x, logits
            report(progress, "predict", k1, total, "")
    seconds = time.perf_counter() - start
    log.info("predicted %d slices in %.1f s (%.2f slices/s)", total, seconds, total / max(seconds, 1e-9))
    return Prediction(volume.with_array(labelmap), probs, labels, str(dev), seconds)


def _write_batch(
    logits: torch.Tensor,
    lut: torch.Tensor,
    out_axial: np.ndarray,
    probs_axial: np.ndarray | None,
    k0: int,
    k1: int,
) -> None:
    """Argmax (n, C, H, W) logits to label values into out_axial[k0:k1]; probabilities into probs_axial[:, k0:k1]."""
    index = logits.argmax(dim=1).cpu()
    out_axial[k0:k1] = lut[index].numpy().astype(out_axial.dtype)
    if probs_axial is not None:
        p = torch.softmax(logits, dim=1).cpu().numpy()  # (n, C, H, W)
        probs_axial[:, k0:k1] = np.moveaxis(p, 1, 0)


def prepared_for(card: ModelCard, volume: Volume) -> PreparedVolume:
    """The PreparedVolume predict_volume uses for ``volume`` (for callers that need the same model grid)."""
    return prepare_volume(volume, card.preprocessing)


__all__ = [
    "InferenceConfig",
    "Prediction",
    "gaussian_importance_map",
    "label_lookup",
    "predict_volume",
    "prepared_for",
    "sliding_window_logits",
    "structure_volumes",
    "tile_starts",
]

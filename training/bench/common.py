"""Inputs shared by the benchmark cases: toy/real model sizes, random-weight segmenters, CT phantoms, matmul peak."""

from __future__ import annotations

import time

import numpy as np
import torch

from training.bench import BenchSettings

TOY_PRESET = "vit_tiny"
TOY_SIZE = 32


def preset(settings: BenchSettings) -> str:
    return TOY_PRESET if settings.toy else settings.preset


def size(settings: BenchSettings) -> int:
    return TOY_SIZE if settings.toy else settings.size


def slices(settings: BenchSettings) -> int:
    return 2 if settings.toy else settings.slices


def vit_config(settings: BenchSettings, **overrides):
    """The backbone config of the run (toy: vit_tiny with 8-px patches so that 32 x 32 slices hold 16 patches)."""
    from MedDINOv3Core.models.vit import vit_config as config_of

    if settings.toy:
        overrides = {"patch_size": 8, **overrides}
    return config_of(preset(settings), **overrides)


def bench_device(settings: BenchSettings) -> torch.device:
    """The device of the run (``--device``; an unavailable one is a clear error)."""
    from MedDINOv3Core.device import select_device

    return select_device(settings.device)


def matmul_operands(n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Two n x n matrices in the arithmetic a model runs in there: fp32 on the CPU, the autocast dtype (bf16) on
    CUDA, so that a step's achieved FLOP/s is compared with the peak of the same arithmetic."""
    from MedDINOv3Core.device import autocast_dtype

    device = torch.device(device)
    dtype = autocast_dtype(device) if device.type == "cuda" else torch.float32
    return torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)


def _wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, device: torch.device | str = "cpu") -> float:
    """Best GFLOP/s of a square matrix multiply (``torch.mm``; see matmul_operands): the device's practical peak,
    right now."""
    device = torch.device(device)
    a, b = matmul_operands(n, device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _wait(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _wait(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def segmentation_model(settings: BenchSettings, n_labels: int = 15):
    """(model, card): the card at ``settings.model`` (trained weights), else a random-weight segmenter of the preset
    with ``n_labels`` labels, the MedDINOv3 demo CT preprocessing and whole-slice tiles of the run's size."""
    from MedDINOv3Core.data.preprocess import PreprocessConfig
    from MedDINOv3Core.inference import InferenceConfig
    from MedDINOv3Core.segmentation_cards import new_segmentation_card
    from MedDINOv3Core.weights import build_model, load_model

    if settings.model:
        return load_model(settings.model, device="cpu")
    s = size(settings)
    card = new_segmentation_card(
        vit_config(settings),
        [f"organ_{i}" for i in range(1, n_labels + 1)],
        PreprocessConfig.meddinov3_demo(),
        InferenceConfig(tile_size=(s, s), batch_size=settings.batch_size),
    )
    return build_model(card).eval(), card


def phantom_ct(settings: BenchSettings, z_mm: float = 1.0, seed: int = 0):
    """A CT-like phantom (MedDINOv3Core.data.phantom) of ``slices`` x ``size``^2 at ``z_mm`` slices; 360 mm in plane."""
    from MedDINOv3Core.data.phantom import make_phantom

    s = size(settings)
    return make_phantom((slices(settings), s, s), spacing=(360.0 / s, 360.0 / s, z_mm), seed=seed)


def dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """DSC of every label value present in ``a`` or ``b`` (background 0 excluded)."""
    out = {}
    for v in np.union1d(np.unique(a), np.unique(b)):
        if v == 0:
            continue
        x, y = a == v, b == v
        out[int(v)] = round(2.0 * float(np.logical_and(x, y).sum()) / max(1, int(x.sum()) + int(y.sum())), 4)
    return out

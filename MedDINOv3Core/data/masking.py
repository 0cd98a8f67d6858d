"""iBOT block masking: rectangles of patches masked until a target fraction of the patch grid is covered."""

from __future__ import annotations

import math

import numpy as np


def block_mask(
    grid: tuple[int, int],
    ratio: float,
    rng: np.random.Generator,
    min_patches: int = 4,
    min_aspect: float = 0.3,
    max_attempts: int = 10,
) -> np.ndarray:
    """A boolean (h, w) mask with exactly ``round(ratio * h * w)`` masked patches, mostly in rectangular blocks.

    Blocks (BEiT-style: random area from ``min_patches`` up to what is still needed, log-uniform aspect ratio in
    [min_aspect, 1/min_aspect]) are added until the target is reached; when blocks no longer fit, random single
    patches finish the count, so the masked fraction is exact.

    Args:
        grid: (h, w) patch grid.
        ratio: masked fraction in [0, 1].
        rng: the random generator (numpy), so masks are reproducible per sample.
    """
    h, w = grid
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    mask = np.zeros((h, w), dtype=bool)
    target = int(round(ratio * h * w))
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    failures = 0
    while mask.sum() < target and failures < max_attempts:
        need = target - int(mask.sum())
        area = rng.uniform(min(min_patches, need), need)
        aspect = math.exp(rng.uniform(*log_aspect))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if not (1 <= bh <= h and 1 <= bw <= w):
            failures += 1
            continue
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        block = mask[top : top + bh, left : left + bw]
        new = int((~block).sum())
        if 0 < new <= need:
            block[:] = True
            failures = 0
        else:
            failures += 1
    remaining = target - int(mask.sum())
    if remaining > 0:
        free = np.flatnonzero(~mask.ravel())
        mask.ravel()[rng.choice(free, size=remaining, replace=False)] = True
    return mask


def sample_view_masks(
    grid: tuple[int, int],
    n_views: int,
    rng: np.random.Generator,
    mask_probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
) -> np.ndarray:
    """Masks for the ``n_views`` global crops of ONE sample: (n_views, h * w) boolean.

    Exactly ``round(mask_probability * n_views)`` views (chosen at random) get a block mask with a ratio drawn from
    U[ratio_range]; the others are unmasked. A fixed count per sample keeps the number of masked images per batch
    independent of how the batch is split over processes.
    """
    h, w = grid
    out = np.zeros((n_views, h * w), dtype=bool)
    n_masked = int(round(mask_probability * n_views))
    for v in rng.permutation(n_views)[:n_masked]:
        out[v] = block_mask(grid, float(rng.uniform(*ratio_range)), rng).ravel()
    return out

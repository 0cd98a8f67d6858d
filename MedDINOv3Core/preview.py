"""PNG previews a person can look at: CT slices with label, PCA and heat-map overlays.

Images are 2D arrays in display order (rows top -> bottom, columns left -> right). An axial slice of the
preprocess module's axial layout (array axes S, P, L) displays in the radiological convention directly: anterior at
the top, the patient's right on the viewer's left. PNGs are written with SimpleITK (atomically).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from MedDINOv3Core.atomic import atomic_path

# Anchor colours of matplotlib's "inferno" colour map (perceptually uniform, dark -> bright), interpolated linearly.
_INFERNO = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def window(image: np.ndarray, center: float = 40.0, width: float = 400.0) -> np.ndarray:
    """Grey-level window (HU centre/width; defaults: soft tissue) -> uint8."""
    lo = center - width / 2.0
    scaled = (np.asarray(image, dtype=np.float64) - lo) / max(width, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=-1)


def colormap(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values to RGB uint8 with the inferno colour map over [vmin, vmax]."""
    t = np.clip((np.asarray(values, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    pos = t * (len(_INFERNO) - 1)
    i = np.minimum(pos.astype(int), len(_INFERNO) - 2)
    frac = (pos - i)[..., None]
    rgb = _INFERNO[i] * (1 - frac) + _INFERNO[i + 1] * frac
    return (rgb + 0.5).astype(np.uint8)


def blend(base_rgb: np.ndarray, over_rgb: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Alpha-blend ``over_rgb`` onto ``base_rgb``; alpha a scalar or an (H, W) map in [0, 1]."""
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    out = base_rgb.astype(np.float64) * (1 - a) + over_rgb.astype(np.float64) * a
    return (np.clip(out, 0, 255) + 0.5).astype(np.uint8)


def overlay_labels(
    gray: np.ndarray, labels: np.ndarray, colors: dict[int, Sequence[float]], alpha: float = 0.45, outline: bool = True
) -> np.ndarray:
    """Colour each label value (colors: value -> RGB in 0..1) over a grey uint8 image, with bright outlines."""
    from scipy import ndimage

    base = gray_to_rgb(gray)
    over = base.copy()
    weight = np.zeros(labels.shape, dtype=np.float64)
    edges = np.zeros(labels.shape, dtype=bool)
    for value, color in colors.items():
        mask = labels == value
        if not mask.any():
            continue
        over[mask] = (np.asarray(color[:3], dtype=np.float64) * 255).astype(np.uint8)
        weight[mask] = alpha
        if outline:
            edge = mask & ~ndimage.binary_erosion(mask)
            edges |= edge
            weight[edge] = 1.0
    return blend(base, over, weight)


def overlay_heatmap(
    gray: np.ndarray, values: np.ndarray, vmin: float, vmax: float, alpha: float = 0.6, threshold: float | None = None
) -> np.ndarray:
    """An inferno heat map over a grey image; values below ``threshold`` are left transparent."""
    weight = np.full(values.shape, alpha, dtype=np.float64)
    if threshold is not None:
        weight[values < threshold] = 0.0
    return blend(gray_to_rgb(gray), colormap(values, vmin, vmax), weight)


def mark(rgb: np.ndarray, row: float, col: float, color=(0, 255, 255), size: int = 5) -> np.ndarray:
    """Draw a small cross at (row, col)."""
    out = rgb.copy()
    r, c = int(round(row)), int(round(col))
    h, w = out.shape[:2]
    for d in range(-size, size + 1):
        if 0 <= r < h and 0 <= c + d < w:
            out[r, c + d] = color
        if 0 <= r + d < h and 0 <= c < w:
            out[r + d, c] = color
    return out


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so that small slices are legible."""
    return rgb if factor <= 1 else np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def aspect_correct(rgb: np.ndarray, row_spacing: float, col_spacing: float) -> np.ndarray:
    """Stretch rows or columns (nearest) so that pixels are square in millimetres."""
    ratio = row_spacing / col_spacing
    if abs(ratio - 1.0) < 0.05:
        return rgb
    h, w = rgb.shape[:2]
    if ratio > 1:
        rows = np.minimum((np.arange(int(round(h * ratio))) / ratio).astype(int), h - 1)
        return rgb[rows]
    cols = np.minimum((np.arange(int(round(w / ratio))) * ratio).astype(int), w - 1)
    return rgb[:, cols]


def montage(images: Sequence[np.ndarray], columns: int = 2, pad: int = 4) -> np.ndarray:
    """Tile RGB images (padded to the largest) into a grid."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    rows = -(-len(images) // columns)
    out = np.zeros((rows * h + (rows + 1) * pad, columns * w + (columns + 1) * pad, 3), dtype=np.uint8)
    for n, im in enumerate(images):
        r, c = divmod(n, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out


def heat(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> a black-red-yellow-white colour ramp, RGB uint8."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None] * 3.0
    ramp = np.clip(np.concatenate([v, v - 1.0, v - 2.0], axis=-1), 0.0, 1.0)
    return (ramp * 255.0 + 0.5).astype(np.uint8)


def side_by_side(images: Sequence[np.ndarray], gap: int = 2, fill: int = 255) -> np.ndarray:
    """RGB images of equal height in one row, separated by ``gap`` columns of ``fill``."""
    separator = np.full((images[0].shape[0], gap, 3), fill, dtype=np.uint8)
    return np.concatenate([p for image in images for p in (image, separator)][:-1], axis=1)


def feature_preview(cache, volume, similarity=None, rgb=None, points=(), space: str = "ras") -> np.ndarray:
    """One axial slice of a feature cache (MedDINOv3Core/feature_cache.py) side by side: the CT (window 400/40 HU),
    the similarity overlay (marked at the first point, whose slice is shown; the middle slice without points) and
    the PCA colours. ``similarity`` is a (z, y, x) map on ``volume``'s grid, ``rgb`` a uint8 (z, y, x, 3) map."""
    from MedDINOv3Core.explore import points_to_index

    mapping = cache.mapping
    marker = None
    if points:
        axial = mapping.to_axial_index(points_to_index(cache, points[0], space))[0]
        k, marker = int(axial[0]), (int(axial[1]), int(axial[2]))
    else:
        k = mapping.n_slices // 2
    grey = gray_to_rgb(window(mapping.axial_view(volume.array)[k]))
    panels = [grey]
    if similarity is not None:
        sim = mapping.axial_view(similarity)[k]
        overlay = blend(grey, heat(sim), 0.6 * np.clip(sim, 0.0, 1.0))
        if marker is not None:
            overlay = mark(overlay, marker[0], marker[1], color=(0, 255, 0), size=3)
        panels.append(overlay)
    if rgb is not None:
        panels.append(np.moveaxis(mapping.axial_view(np.moveaxis(rgb, -1, 0))[:, k], 0, -1).astype(np.uint8))
    return side_by_side(panels)


def write_rgb_volume(rgb: np.ndarray, reference, path: str | os.PathLike) -> Path:
    """A uint8 (z, y, x, 3) colour map (e.g. PCA colours) -> an RGB vector image with the geometry of ``reference``
    (a Volume), written by :func:`MedDINOv3Core.volume_io.write_rgb_volume` (atomically; format from the suffix)."""
    from MedDINOv3Core.volume_io import write_rgb_volume

    return write_rgb_volume(rgb, reference, path)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 or (H, W) uint8 image as PNG, atomically."""
    import SimpleITK as sitk

    path = Path(path)
    array = np.ascontiguousarray(rgb, dtype=np.uint8)
    if array.ndim not in (2, 3):
        raise ValueError(f"a PNG preview needs an (H, W) or (H, W, 3) image, got shape {array.shape}")
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3)
    with atomic_path(path, suffix=".png") as tmp:
        sitk.WriteImage(image, str(tmp))
    return path

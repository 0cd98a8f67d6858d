"""Instant few-shot preview from a feature cache (numpy only: it runs in Slicer's process, no torch).

Before a round of few-shot training, label every patch of the volume by its nearest painted features, to show where
the next round needs paint:

1. ``painted_patches``: the painted axial slices' patches get the majority class of their labelled voxels (the label
   map goes through the cache's grid mapping: axial layout, nearest resampling to the model grid, centred padding,
   patch pooling, as ``explore.patch_fraction``); patches less than half labelled are left out.
2. ``class_prototypes``: per class, the normalised mean of its painted patches' (L2-normalised, cached) features.
3. ``preview_patches``: every patch's class is the prototype of highest cosine similarity (one (N, D) x (D, C)
   product over the memory-mapped cache, streamed in chunks).
4. ``preview_labels``: the per-class similarities are upsampled onto the input grid with the cache's PatchUpsampler
   (bilinear, a few slices at a time) and arg-maxed into label values; painted voxels keep their paint.

Labels follow the few-shot dataset contract (MedDINOv3Core.data.nnunet_data): with ``ignore_value`` voxels of that
value are unpainted and every other voxel is labelled (0 = painted background); without it a slice is painted when it
holds foreground, and all its voxels are labelled.
"""

from __future__ import annotations

import logging

import numpy as np

from MedDINOv3Core.feature_cache import FeatureCache

log = logging.getLogger(__name__)

MIN_LABELLED = 0.5  # a patch votes when at least this fraction of its voxels is labelled


def painted_patches(
    cache: FeatureCache, labels: np.ndarray, ignore_value: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The painted patches and their classes.

    Args:
        cache: the volume's feature cache.
        labels: integer label values (z, y, x) on the input grid.
        ignore_value: the value of unpainted voxels (an nnU-Net "ignore" label), or None (unpainted slices are 0).

    Returns:
        (rows int64 (n,) into the flattened (Z h w) patch grid, class values int64 (n,), painted axial slices).
    """
    labels = np.asarray(labels)
    if labels.shape != cache.shape:
        raise ValueError(f"labels of shape {labels.shape} differ from the cached volume's {cache.shape}")
    mapping = cache.mapping
    axial = mapping.axial_view(labels)
    (hh, ww), (uh, uw) = mapping.native_shape, mapping.upsampled_shape
    rows = np.minimum(np.floor((np.arange(uh) + 0.5) * hh / uh).astype(np.int64), hh - 1)
    cols = np.minimum(np.floor((np.arange(uw) + 0.5) * ww / uw).astype(np.int64), ww - 1)
    (gh, gw), p, (top, left) = mapping.grid, mapping.patch, mapping.pad
    out_rows, out_classes, painted = [], [], []
    for k in range(mapping.n_slices):
        sl = np.asarray(axial[k])
        labelled = sl != ignore_value if ignore_value is not None else np.full(sl.shape, bool(sl.any()))
        if not labelled.any():
            continue
        painted.append(k)
        grid_labels = sl[np.ix_(rows, cols)].astype(np.int64)
        grid_mask = labelled[np.ix_(rows, cols)]
        values = np.unique(grid_labels[grid_mask])
        counts = np.zeros((len(values), gh * p, gw * p), dtype=np.float32)
        for i, v in enumerate(values):
            counts[i, top : top + uh, left : left + uw] = (grid_labels == v) & grid_mask
        pooled = counts.reshape(len(values), gh, p, gw, p).mean(axis=(2, 4)).reshape(len(values), -1)  # (V, h w)
        keep = pooled.sum(axis=0) >= MIN_LABELLED
        idx = np.flatnonzero(keep)
        out_rows.append(k * gh * gw + idx)
        out_classes.append(values[pooled[:, idx].argmax(axis=0)])
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    return np.concatenate(out_rows), np.concatenate(out_classes), painted


def _features(cache: FeatureCache, rows: np.ndarray) -> np.ndarray:
    """float32 (n, D) cached features of the flattened patch rows (memory-mapped gather)."""
    flat = cache.features.reshape(cache.n_patches, cache.dim)
    return np.asarray(flat[np.sort(rows)], dtype=np.float32)[np.argsort(np.argsort(rows))]


def class_prototypes(cache: FeatureCache, rows: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class values (C,), unit prototypes float32 (D, C)): the normalised mean feature of each class's patches."""
    values = np.unique(classes)
    feats = _features(cache, rows)
    protos = np.stack([feats[classes == v].mean(axis=0) for v in values], axis=1)
    protos /= np.maximum(np.linalg.norm(protos, axis=0, keepdims=True), 1e-12)
    return values, protos.astype(np.float32)


def preview_patches(
    cache: FeatureCache, labels: np.ndarray, ignore_value: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every patch's nearest class: (class values (C,), similarities float32 (C, Z, h, w), label values (Z, h, w)).

    Raises ValueError when nothing is painted.
    """
    rows, classes, _ = painted_patches(cache, labels, ignore_value)
    if rows.size == 0:
        raise ValueError("nothing is painted: paint at least one slice before asking for a preview")
    values, protos = class_prototypes(cache, rows, classes)
    z, (h, w) = cache.mapping.n_slices, cache.mapping.grid
    sims = cache.dot(protos).T.reshape(len(values), z, h, w)  # (C, Z, h, w)
    return values, sims, values[sims.argmax(axis=0)]


def preview_labels(
    cache: FeatureCache, labels: np.ndarray, ignore_value: int | None = None, chunk: int = 8
) -> np.ndarray:
    """The instant preview on the input grid: label values (z, y, x), the labels' dtype.

    Per-class similarities are upsampled bilinearly (the cache's PatchUpsampler) ``chunk`` axial slices at a time and
    arg-maxed; voxels of painted slices that are labelled keep their paint.
    """
    labels = np.asarray(labels)
    values, sims, _ = preview_patches(cache, labels, ignore_value)
    mapping = cache.mapping
    out = np.zeros(cache.shape, dtype=labels.dtype if labels.dtype != bool else np.uint8)
    out_axial = mapping.axial_view(out)
    buffer = np.zeros(cache.shape, dtype=np.float32)
    buf_axial = mapping.axial_view(buffer)
    upsampler = cache.upsampler
    for k0 in range(0, mapping.n_slices, chunk):
        k1 = min(mapping.n_slices, k0 + chunk)
        best = None
        for c in range(len(values)):
            upsampler.volume_into(sims[c, k0:k1], buffer, slices=range(k0, k1))
            current = np.asarray(buf_axial[k0:k1])
            if best is None:
                best, arg = current.copy(), np.zeros(current.shape, dtype=np.int64)
            else:
                better = current > best
                best[better], arg[better] = current[better], c
        out_axial[k0:k1] = values[arg].astype(out.dtype)
    if ignore_value is not None:
        labelled = labels != ignore_value
    else:
        labelled = np.zeros(labels.shape, dtype=bool)
        lab_axial, painted = mapping.axial_view(labelled), mapping.axial_view(labels)
        for k in range(mapping.n_slices):
            if np.asarray(painted[k]).any():
                lab_axial[k] = True
    out[labelled] = labels[labelled]
    return out


__all__ = ["MIN_LABELLED", "class_prototypes", "painted_patches", "preview_labels", "preview_patches"]

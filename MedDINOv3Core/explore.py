"""Feature exploration on an opened feature cache, numpy only (Slicer's click path needs no torch): PCA colour maps
and cosine-similarity maps over whole volumes, and the body mask the caches store.

The cache itself is written once per volume by ``MedDINOv3Core.extraction.extract_features`` (torch, a background
job). On an opened cache: ``similarity_map`` (cosine similarity of the patch under one or more clicked points
against every patch of the slice or the volume, upsampled onto the input voxel grid into one reused float32 array),
``pca_map`` (3 principal components fitted on foreground patches, sign-fixed, as uint8 RGB on the input grid) and
``region_from_similarity`` (the connected region above a threshold around the click: a one-click segmentation).

Every map has exactly the input volume's shape; wrap it with ``Volume.with_array`` (or the cache geometry) to keep
spacing, origin and direction bit for bit.
"""

from __future__ import annotations

import logging

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.feature_cache import (
    FeatureCache,
    GridMapping,
)

log = logging.getLogger(__name__)

SPACES = ("ijk", "lps", "ras")
SCOPES = ("slice", "volume")
COMBINES = ("mean", "max")
CT_BODY_THRESHOLD_HU = -500.0


# ------------------------------------------------------------------------------------------------- masks (numpy)


def body_mask(volume: Volume, ct: bool = True) -> np.ndarray:
    """Foreground (body) mask, bool (z, y, x): the largest connected component above a threshold, holes filled.

    Args:
        volume: the input volume.
        ct: threshold at HU > -500 (CT); otherwise above the volume's mean intensity (MRI and other modalities).
    """
    from scipy import ndimage

    a = volume.array
    threshold = CT_BODY_THRESHOLD_HU if ct else float(a.mean(dtype=np.float64))
    above = a > threshold
    labels, n = ndimage.label(above)
    if n == 0:
        log.warning("no voxel above %.1f: the foreground mask is empty, PCA will fit on every patch", threshold)
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(sizes.argmax())
    return ndimage.binary_fill_holes(mask)


def patch_fraction(mapping: GridMapping, mask: np.ndarray) -> np.ndarray:
    """Fraction of each patch inside ``mask`` (z, y, x) -> float32 (Z, h, w).

    The mask goes through the same chain as the image: axial layout, nearest resampling to the model grid
    (torch's nearest-exact rule, as ``PreparedVolume.labels``), upsampling, centred zero padding, patch pooling.
    """
    axial = mapping.axial_view(np.asarray(mask, dtype=bool))
    (hh, ww), (uh, uw) = mapping.native_shape, mapping.upsampled_shape
    rows = np.minimum(np.floor((np.arange(uh) + 0.5) * hh / uh).astype(np.int64), hh - 1)
    cols = np.minimum(np.floor((np.arange(uw) + 0.5) * ww / uw).astype(np.int64), ww - 1)
    (gh, gw), p, (top, left) = mapping.grid, mapping.patch, mapping.pad
    out = np.empty((mapping.n_slices, gh, gw), dtype=np.float32)
    padded = np.zeros((gh * p, gw * p), dtype=np.float32)
    for k in range(mapping.n_slices):
        padded[top : top + uh, left : left + uw] = axial[k][np.ix_(rows, cols)]
        out[k] = padded.reshape(gh, p, gw, p).mean(axis=(1, 3))
    return out


# ---------------------------------------------------------------------------------------------- clicks (numpy)


def points_to_index(cache_or_volume: FeatureCache | Volume, points, space: str = "ijk") -> np.ndarray:
    """Points (3,) or (n, 3) -> int64 (n, 3) input-array indices (z, y, x) of the nearest voxels.

    Args:
        cache_or_volume: anything with ``spacing``, ``origin``, ``direction`` and ``shape`` (z, y, x).
        points: (i, j, k) continuous voxel indices for space "ijk"; physical mm for "lps" or "ras".
        space: "ijk", "lps" (SimpleITK / DICOM) or "ras" (3D Slicer's world coordinates).
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (3,) or (n, 3), got shape {np.asarray(points).shape}")
    if space != "ijk":
        if space == "ras":
            pts = pts * np.array([-1.0, -1.0, 1.0])
        direction = np.asarray(cache_or_volume.direction, dtype=np.float64).reshape(3, 3)
        rel = pts - np.asarray(cache_or_volume.origin)
        pts = (rel @ np.linalg.inv(direction).T) / np.asarray(cache_or_volume.spacing)
    zyx = np.rint(pts[:, ::-1]).astype(np.int64)
    shape = np.asarray(cache_or_volume.shape)
    outside = np.any((zyx < 0) | (zyx >= shape), axis=1)
    if outside.any():
        bad = np.asarray(points, dtype=np.float64).reshape(-1, 3)[outside][0]
        raise ValueError(
            f"point {bad.tolist()} ({space}) lies outside the volume of shape (z, y, x) {tuple(map(int, shape))}; "
            "check the coordinate space (--space ijk|lps|ras)"
        )
    return zyx


def _patch_rows(cache: FeatureCache, zyx: np.ndarray) -> list[tuple[int, int, int]]:
    """Input indices (n, 3) -> (slice, row, col) of the patch holding each point."""
    axial = cache.mapping.to_axial_index(zyx)
    return [(int(a[0]), *cache.mapping.native_to_patch(a[1], a[2])) for a in axial]


def similarity_patches(
    cache: FeatureCache, points, *, space: str = "ijk", scope: str = "volume", combine: str = "mean"
) -> np.ndarray:
    """Cosine similarity on the patch grid: float32 (Z, h, w), in [-1, 1].

    Each point selects the patch holding it; its feature is compared with every patch of the volume (scope
    "volume") or of its own axial slice ("slice"; patches of other slices are 0). Several points are combined by
    the mean or the max of their similarities.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    patches = _patch_rows(cache, points_to_index(cache, points, space))
    z, (h, w) = cache.mapping.n_slices, cache.mapping.grid
    queries = np.stack([np.asarray(cache.features[p], dtype=np.float32) for p in patches], axis=1)  # (D, n)
    reduce = np.mean if combine == "mean" else np.max
    out = np.zeros((z, h, w), dtype=np.float32)
    if scope == "volume":
        out.reshape(-1)[:] = reduce(cache.dot(queries), axis=1)
    else:
        for k in sorted({p[0] for p in patches}):
            cols = [n for n, p in enumerate(patches) if p[0] == k]
            sims = cache.dot(queries[:, cols], rows=slice(k * h * w, (k + 1) * h * w))
            out[k] = reduce(sims, axis=1).reshape(h, w)
    np.clip(out, -1.0, 1.0, out=out)
    return out


def similarity_map(
    cache: FeatureCache,
    points,
    *,
    space: str = "ijk",
    scope: str = "volume",
    combine: str = "mean",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Cosine-similarity map on the input voxel grid: float32 (z, y, x).

    Args:
        cache: an opened FeatureCache.
        points: one point (3,) or several (n, 3), in ``space`` ("ijk" voxel index, "lps" or "ras" mm).
        scope: "volume" (every patch of the volume) or "slice" (the clicked axial slice only; others are 0).
        combine: "mean" or "max" over several points.
        out: a float32 array of the volume's shape to write into (reused between clicks: no allocation).

    Returns:
        ``out`` (or a new array): bilinear upsampling of the patch similarities through the preprocess mapping.
    """
    patch_map = similarity_patches(cache, points, space=space, scope=scope, combine=combine)
    if out is None:
        out = np.empty(cache.shape, dtype=np.float32)
    elif out.shape != cache.shape or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {cache.shape}, got {out.dtype} {out.shape}")
    if scope == "volume":
        return cache.upsampler.volume_into(patch_map, out)
    out.fill(0.0)
    for k in range(patch_map.shape[0]):
        if patch_map[k].any():
            cache.upsampler.volume_into(patch_map[k : k + 1], out, slices=range(k, k + 1))
    return out


def region_from_similarity(
    similarity: np.ndarray,
    seed,
    threshold: float,
    *,
    space: str = "ijk",
    geometry: FeatureCache | Volume | None = None,
) -> np.ndarray:
    """One-click segmentation: the 6-connected region of ``similarity >= threshold`` holding the seed, bool (z, y, x).

    Args:
        similarity: a map from ``similarity_map``.
        seed: the clicked point (3,), in ``space``; "lps"/"ras" need ``geometry`` (the cache or the volume).
        threshold: similarity threshold in [-1, 1].

    Returns:
        the region (empty, with a warning, when the seed itself is below the threshold).
    """
    from scipy import ndimage

    sim = np.asarray(similarity)
    if sim.ndim != 3:
        raise ValueError(f"similarity must be a (z, y, x) map, got shape {sim.shape}")
    if space != "ijk" and geometry is None:
        raise ValueError(f"a seed in {space!r} space needs the geometry (the cache or the volume)")
    ref = geometry if geometry is not None else Volume.geometry_of(sim.shape)
    if ref.shape != sim.shape:
        raise ValueError(f"similarity shape {sim.shape} differs from the geometry's {tuple(ref.shape)}")
    z, y, x = points_to_index(ref, seed, space)[0]
    above = sim >= threshold
    if not above[z, y, x]:
        log.warning("the seed's similarity %.3f is below the threshold %.3f: empty region", sim[z, y, x], threshold)
        return np.zeros(sim.shape, dtype=bool)
    labels, _ = ndimage.label(above)
    return labels == labels[z, y, x]


# ----------------------------------------------------------------------------------------------------- PCA (numpy)


def pca_components(
    cache: FeatureCache, mask: np.ndarray | None = None, *, n_components: int = 3, max_fit: int = 8192, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal axes of the foreground patch features (randomised subspace iteration, seeded: deterministic).

    Args:
        cache: the opened cache.
        mask: foreground (z, y, x) on the input grid; default the body mask stored at extraction. Patches at least
            half inside it are fitted (every patch when none is).
        max_fit: at most this many foreground patches (a seeded random subset) are used for the fit.

    Returns:
        (mean (D,), components (n_components, D) with a fixed sign: each axis's largest-magnitude loading is
        positive, foreground flags bool (N,)).
    """
    fraction = cache.foreground if mask is None else patch_fraction(cache.mapping, mask)
    fg = fraction.reshape(-1) >= 0.5
    if not fg.any():
        log.warning("no foreground patch: fitting PCA on every patch")
        fg[:] = True
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(fg)
    if rows.size > max_fit:
        rows = np.sort(rng.choice(rows, max_fit, replace=False))
    dense = cache.matrix()
    x = dense[rows] if dense is not None else np.asarray(cache.features.reshape(cache.n_patches, -1)[rows], np.float32)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    xc = x - mean
    k = min(n_components + 10, *xc.shape)
    basis = _orthonormal(xc @ rng.standard_normal((xc.shape[1], k)).astype(np.float32))
    for _ in range(2):  # power iterations sharpen the leading subspace
        basis = _orthonormal(xc @ _orthonormal(xc.T @ basis))
    _, _, vt = np.linalg.svd(basis.T @ xc, full_matrices=False)
    components = vt[:n_components].astype(np.float32)
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components *= signs[:, None]
    return mean, components, fg


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``y`` (n, k), k small: Cholesky QR (LAPACK QR of tall matrices is slower here)."""
    gram = y.T.astype(np.float64) @ y.astype(np.float64)
    chol = np.linalg.cholesky(gram + np.eye(len(gram)) * (1e-10 * np.trace(gram) + 1e-30))
    return (y @ np.linalg.inv(chol).T.astype(np.float32)).astype(np.float32)


def pca_map(
    cache: FeatureCache, mask: np.ndarray | None = None, *, max_fit: int = 8192, seed: int = 0, percentile: float = 1.0
) -> np.ndarray:
    """The first three principal components of the patch features as colours: uint8 RGB (z, y, x, 3).

    Fitted on foreground patches across the whole volume (so colours are consistent across slices), scaled per
    component between the ``percentile`` and ``100 - percentile`` percentiles of the foreground projections,
    upsampled to the input voxel grid; voxels outside the mask are black.
    """
    mean, components, fg = pca_components(cache, mask, max_fit=max_fit, seed=seed)
    proj = cache.dot(components.T) - mean @ components.T  # (N, 3)
    voxel_mask = cache.mask() if mask is None else np.asarray(mask, dtype=bool)
    z, (h, w) = cache.mapping.n_slices, cache.mapping.grid
    rgb = np.zeros((*cache.shape, 3), dtype=np.uint8)
    channel = np.empty(cache.shape, dtype=np.float32)
    for c in range(proj.shape[1]):
        lo, hi = np.percentile(proj[fg, c], [percentile, 100.0 - percentile])
        scaled = (proj[:, c] - lo) * np.float32(255.0 / max(hi - lo, 1e-6))
        cache.upsampler.volume_into(scaled.reshape(z, h, w), channel)
        np.clip(channel, 0.0, 255.0, out=channel)
        channel *= voxel_mask
        rgb[..., c] = np.rint(channel)
    return rgb


__all__ = [
    "COMBINES",
    "SCOPES",
    "SPACES",
    "FeatureCache",
    "body_mask",
    "patch_fraction",
    "pca_components",
    "pca_map",
    "points_to_index",
    "region_from_similarity",
    "similarity_map",
    "similarity_patches",
]

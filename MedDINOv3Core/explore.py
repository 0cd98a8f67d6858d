"""Feature exploration: patch-feature cache, PCA colour maps and cosine-similarity maps over whole volumes.

Two halves, so that Slicer's click path needs no torch:

- ``extract_features(model, card, volume, ...) -> FeatureCache`` (torch, a background job): the volume is
  preprocessed with the card's ONE preprocess function, slices run through the backbone in batches, and the
  L2-normalised patch features (one block, or several blocks concatenated: the segmenter's multi-scale stack) are
  written to a float16 memory-mapped cache (MedDINOv3Core.feature_cache), keyed by the model weights, the volume
  content and geometry, the preprocessing, the layers and the upsampling factor: an unchanged key reuses the cache,
  any change rebuilds it.
- numpy only, on an opened cache: ``similarity_map`` (cosine similarity of the patch under one or more clicked
  points against every patch of the slice or the volume, upsampled onto the input voxel grid into one reused
  float32 array), ``pca_map`` (3 principal components fitted on foreground patches, sign-fixed, as uint8 RGB on
  the input grid) and ``region_from_similarity`` (the connected region above a threshold around the click: a
  one-click segmentation).

Every map has exactly the input volume's shape; wrap it with ``Volume.with_array`` (or the cache geometry) to keep
spacing, origin and direction bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.feature_cache import (
    CacheWriter,
    FeatureCache,
    GridMapping,
    default_cache_root,
    key_digest,
    read_header,
    volume_hash,
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


# ------------------------------------------------------------------------------------------------ extraction (torch)


def state_dict_hash(model) -> str:
    """blake2b of a module's state dict (names, dtypes, shapes, bytes): the model identity in the cache key."""
    import torch

    h = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def resolve_layers(model, layers: str | Sequence[int] | None) -> tuple[Any, tuple[int, ...], int]:
    """The backbone, the 0-based block indices and the input-channel repeat for ``layers``.

    Args:
        model: a VisionTransformer (backbone card) or a Segmenter (segmentation card; ``.backbone``, ``.layers``).
        layers: None (a segmenter's multi-scale stack, a backbone's last block), "last", "multiscale" (the
            default intermediate blocks, e.g. 2, 5, 8, 11 for ViT-B) or block indices (negative from the end).
    """
    backbone = getattr(model, "backbone", model)
    config = backbone.config
    if layers is None:
        indices = tuple(getattr(model, "layers", ())) or (config.depth - 1,)
    elif layers == "last":
        indices = (config.depth - 1,)
    elif layers == "multiscale":
        indices = config.default_intermediate_indices()
    elif isinstance(layers, str):
        raise ValueError(f"layers must be 'last', 'multiscale' or block indices, got {layers!r}")
    else:
        indices = tuple(int(i) + config.depth if int(i) < 0 else int(i) for i in layers)
        bad = [i for i in indices if not 0 <= i < config.depth]
        if bad or not indices:
            raise ValueError(f"layers {list(layers)} out of range for a backbone of depth {config.depth}")
    # a segmenter declares its image channels (config.in_chans); a bare backbone gets one CT channel repeated
    in_chans = int(getattr(model.config, "in_chans", 1)) if backbone is not model else 1
    return backbone, tuple(indices), config.in_chans // in_chans


@dataclass(frozen=True)
class _Plan:
    """What an extraction runs: backbone, 0-based blocks, input-channel repeat, preprocessed volume, patch grid."""

    backbone: Any
    indices: tuple[int, ...]
    repeat: int
    prepared: Any
    mapping: GridMapping

    @property
    def dim(self) -> int:
        """Features per patch: the blocks' tokens concatenated."""
        return len(self.indices) * self.backbone.config.embed_dim


DEFAULT_BATCH_SIZE = 4  # slices per forward pass on the CPU (and the floor on CUDA)


def _slice_bytes(plan: _Plan) -> int:
    """Rough device memory of one slice in an extraction pass: the kept blocks' fp32 tokens, a block's bf16
    activations (MLP hidden 4x wide), the input; plus a fixed margin."""
    tokens = plan.mapping.grid[0] * plan.mapping.grid[1] + 8
    d = plan.backbone.config.embed_dim
    return tokens * d * (4 * len(plan.indices) + 2 * 16) + 32 * 2**20


def _check_options(upsample: int, batch_size: int) -> None:
    """Raise ValueError unless ``upsample`` is 1 or 2 and ``batch_size`` at least 1."""
    if upsample not in (1, 2):
        raise ValueError(f"upsample must be 1 or 2, got {upsample}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _plan(model, card, volume: Volume, layers: str | Sequence[int] | None, upsample: int) -> _Plan:
    """Resolve the backbone and its blocks, preprocess the volume with the card's settings and plan the patch grid."""
    from MedDINOv3Core.data.preprocess import prepare_volume

    backbone, indices, repeat = resolve_layers(model, layers)
    prepared = prepare_volume(volume, card.preprocessing)
    patch = backbone.config.patch_size
    mapping = GridMapping.plan(
        volume.shape, prepared.axes, prepared.flips, prepared.native_shape, prepared.model_shape, upsample, patch
    )
    return _Plan(backbone, indices, repeat, prepared, mapping)


def _cache_key(
    plan: _Plan, volume: Volume, upsample: int, mask: np.ndarray | None, model_hash: str | None, pad_value: float
) -> dict[str, Any]:
    """The cache key: weights, volume (content, geometry), preprocessing, blocks, upsampling, the pad value of the
    slice borders and the foreground mask."""
    if mask is not None and np.asarray(mask).shape != volume.shape:
        raise ValueError(f"mask shape {np.asarray(mask).shape} differs from the volume's {volume.shape}")
    return {
        "model": model_hash or state_dict_hash(plan.backbone),
        "volume": volume_hash(volume.array, volume.spacing, volume.origin, volume.direction),
        "preprocessing": plan.prepared.config.to_dict(),
        "layers": list(plan.indices),
        "upsample": upsample,
        "pad_value": float(pad_value),
        "mask": "body" if mask is None else volume_hash(np.asarray(mask, dtype=bool), (), (), ()),
    }


def _open_current(target: Path, key: dict[str, Any], n_slices: int, progress) -> FeatureCache | None:
    """The cache at ``target`` opened when it was built for ``key``, else None (a stale one is logged)."""
    from MedDINOv3Core.progress import report

    header = read_header(target)
    if header is not None and header.get("key") == key:
        log.info("reusing feature cache %s", target)
        report(progress, "features", n_slices, n_slices, "cached")
        return FeatureCache.open(target)
    if header is not None:
        log.info("feature cache %s was built for another model/volume/settings; rebuilding it", target)
    return None


def _slice_features(plan: _Plan, backbone, ks: Sequence[int], dev, pad_value: float):
    """Normalised features (n, h, w, D) and per-block raw-token norms (n, h, w, n_blocks) of axial slices ``ks``."""
    import torch
    import torch.nn.functional as F

    from MedDINOv3Core.device import autocast

    mapping = plan.mapping
    (gh, gw), (top, left), (uh, uw), patch = mapping.grid, mapping.pad, mapping.upsampled_shape, mapping.patch
    contiguous = list(ks) == list(range(ks[0], ks[-1] + 1))
    arrays = plan.prepared.slices(ks[0], ks[-1] + 1) if contiguous else [plan.prepared.slices(k, k + 1)[0] for k in ks]
    x = torch.from_numpy(np.stack(arrays) if not contiguous else arrays)[:, None].to(dev)
    if mapping.scale != 1:
        x = F.interpolate(x, size=(uh, uw), mode="bilinear", align_corners=False)
    padded = torch.full((len(ks), 1, gh * patch, gw * patch), pad_value, dtype=x.dtype, device=dev)
    padded[:, :, top : top + uh, left : left + uw] = x
    if plan.repeat > 1:
        padded = padded.repeat(1, plan.repeat, 1, 1)
    with autocast(dev):
        blocks = backbone.get_intermediate_layers(padded, plan.indices, reshape=True, norm=True)
    blocks = [b.float() for b in blocks]
    norms = torch.stack([b.norm(dim=1) for b in blocks], dim=-1)  # (n, h, w, n_blocks): raw tokens recoverable
    feats = torch.cat([F.normalize(b, dim=1) for b in blocks], dim=1)
    return F.normalize(feats, dim=1).permute(0, 2, 3, 1), norms


def _extract_slices(
    plan: _Plan, writer: CacheWriter, dev, pad_value: float, batch_size: int, progress, cancel, fast=None
) -> None:
    """Run the slices through the backbone in batches and store their normalised patch features in ``writer``;
    ``fast`` (a FastConfig): int8 on the CPU, every k-th slice run and the ones between interpolated (fill_features)."""
    import torch

    from MedDINOv3Core.device import HostCopies
    from MedDINOv3Core.progress import check_cancel, report

    total, backbone, run = len(plan.prepared), plan.backbone, list(range(len(plan.prepared)))
    if fast is not None:
        from MedDINOv3Core.fast import computed_slices, quantize_int8, slice_step

        backbone = quantize_int8(backbone) if fast.quantize and dev.type == "cpu" else backbone
        run = computed_slices(total, slice_step(float(plan.prepared.spacing[2]), fast.z_spacing))
    copies = HostCopies(dev)  # on CUDA each batch reaches the cache one batch later, without waiting for the device

    def store(done):
        for ks, (feats, norms) in done:
            writer.features[ks] = feats.astype(np.float16, copy=False)
            writer.norms[ks] = norms

    with torch.inference_mode():
        for i0 in range(0, len(run), batch_size):
            check_cancel(cancel)
            ks = run[i0 : i0 + batch_size]
            feats, norms = _slice_features(plan, backbone, ks, dev, pad_value)
            store(copies.put(ks, feats.half() if dev.type == "cuda" else feats, norms))
            report(progress, "features", ks[-1] + 1, total, "")
        store(copies.flush())
    if len(run) < total:
        from MedDINOv3Core.fast import fill_features

        fill_features(writer.features, writer.norms, run, len(plan.indices))


def _fast_config(fast):
    """None for the exact path; FastConfig for ``fast`` True or a FastConfig."""
    if fast is False or fast is None:
        return None
    from MedDINOv3Core.fast import FastConfig

    return FastConfig.extraction() if fast is True else fast


def _finish(writer: CacheWriter, plan: _Plan, card, volume: Volume, mask, key: dict[str, Any], start: float) -> Path:
    """Store the foreground (``mask`` or ``body_mask``) per patch and the header, and rename the cache into place."""
    ct = plan.prepared.config.scheme == "ct_clip_zscore"
    fg = body_mask(volume, ct=ct) if mask is None else np.asarray(mask)
    writer.foreground[:] = patch_fraction(plan.mapping, fg)
    header = {
        "key": key,
        "key_digest": key_digest(key),
        "grid": plan.mapping.to_dict(),
        "geometry": {"spacing": volume.spacing, "origin": volume.origin, "direction": volume.direction},
        "model": {"name": card.name, "task": card.task, "layers": list(plan.indices), "dim": plan.dim},
        "seconds": round(time.perf_counter() - start, 3),
    }
    return writer.commit(header, fg)


def extract_features(
    model,
    card,
    volume: Volume,
    *,
    cache_dir: str | Path | None = None,
    layers: str | Sequence[int] | None = None,
    upsample: int = 1,
    batch_size: int | None = None,
    device: str = "cpu",
    mask: np.ndarray | None = None,
    model_hash: str | None = None,
    progress: Callable[..., None] | None = None,
    cancel: Any = None,
    fast: Any = False,
    compile: bool = False,
) -> FeatureCache:
    """Extract (or reuse) the patch features of every axial slice into a float16 memory-mapped cache.

    Args:
        model: a VisionTransformer or Segmenter from ``weights.load_model`` (its weights identify the cache).
        card: its ModelCard (preprocessing, inference pad value).
        volume: the input (z, y, x) volume.
        cache_dir: the cache directory; reused when its key matches, rebuilt (atomically replaced) when not. None:
            ``~/.cache/meddinov3/features/<key digest>``.
        layers: see ``resolve_layers``. Each block's tokens are L2-normalised before concatenation, so every scale
            weighs the same in the cosine similarity.
        upsample: 1, or 2 for finer maps (each slice upsampled x2 before the backbone: 4x the compute and cache).
        batch_size: slices per forward pass (default: 4; on CUDA sized to the free memory).
        device: "cpu", "cuda", "mps" or "auto".
        mask: optional foreground mask (z, y, x) for PCA; default ``body_mask`` of the volume.
        model_hash: identity of the weights (e.g. the card's safetensors SHA-256); default: a hash of the state dict.
        progress: callback (stage, done, total, message); stages "hash" and "features" (slices).
        cancel: CancelToken / threading.Event, checked between batches (raises progress.Cancelled).
        fast: True or a MedDINOv3Core.fast.FastConfig: int8 linear layers (CPU) and only slices about
            ``z_spacing`` mm apart through the backbone, the others interpolated (no body crop: the air patches
            keep real features for the similarity maps). Part of the cache key.

        compile: ``torch.compile`` the backbone's blocks in place (GPU; the first batches compile; the features and
            the cache key are those of the same weights).

    Returns:
        the opened FeatureCache.
    """
    from MedDINOv3Core.device import auto_batch_size, compile_blocks, select_device
    from MedDINOv3Core.inference import InferenceConfig
    from MedDINOv3Core.progress import report

    _check_options(upsample, 1 if batch_size is None else batch_size)
    plan = _plan(model, card, volume, layers, upsample)
    report(progress, "hash", 0, 1, "model and volume identity")
    pad_value = InferenceConfig.from_dict(card.inference or {}).pad_value
    key = _cache_key(plan, volume, upsample, mask, model_hash, pad_value)
    fast_config = _fast_config(fast)
    if fast_config is not None:
        key["fast"] = {"z_spacing": fast_config.z_spacing, "quantize": fast_config.quantize}
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root() / key_digest(key)[:32]
    total = len(plan.prepared)
    cached = _open_current(target, key, total, progress)
    if cached is not None:
        return cached

    dev = select_device(device)
    grid, dim, indices = plan.mapping.grid, plan.dim, plan.indices
    if batch_size is None:
        batch_size = auto_batch_size(dev, _slice_bytes(plan), default=DEFAULT_BATCH_SIZE)
    writer = CacheWriter(target, (total, *grid, dim), n_blocks=len(indices))
    start = time.perf_counter()
    was_training = plan.backbone.training
    plan.backbone.to(dev).eval()
    if compile:
        compile_blocks(plan.backbone)
    log.info("extracting %d slices: grid %s x %d features (blocks %s) on %s", total, grid, dim, indices, dev)
    report(progress, "features", 0, total, f"{total} slices on {dev.type}")
    try:
        _extract_slices(plan, writer, dev, pad_value, batch_size, progress, cancel, fast_config)
        path = _finish(writer, plan, card, volume, mask, key, start)
    except BaseException:
        writer.abort()
        raise
    finally:
        plan.backbone.train(was_training)
    seconds = time.perf_counter() - start
    log.info("extracted %d slices in %.1f s (%.2f slices/s) into %s", total, seconds, total / max(seconds, 1e-9), path)
    return FeatureCache.open(path)


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
    "extract_features",
    "patch_fraction",
    "pca_components",
    "pca_map",
    "points_to_index",
    "region_from_similarity",
    "resolve_layers",
    "similarity_map",
    "similarity_patches",
    "state_dict_hash",
]

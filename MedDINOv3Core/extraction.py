"""Feature extraction (torch): every axial slice of a volume through a backbone, once, into a feature cache.

``extract_features(model, card, volume, ...) -> FeatureCache`` (a background job): the volume is preprocessed with
the card's ONE preprocess function, slices run through the backbone in batches, and the L2-normalised patch
features (one block, or several blocks concatenated: the segmenter's multi-scale stack) are written to a float16
memory-mapped cache (MedDINOv3Core.feature_cache), keyed by the model weights, the volume content and geometry, the
preprocessing, the layers and the upsampling factor: an unchanged key reuses the cache, any change rebuilds it.
The maps computed from an opened cache (similarity, PCA, regions) are numpy only: MedDINOv3Core.explore.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.explore import body_mask, patch_fraction
from MedDINOv3Core.feature_cache import (
    CacheWriter,
    FeatureCache,
    GridMapping,
    default_cache_root,
    key_digest,
    read_header,
    volume_hash,
)
from MedDINOv3Core.progress import ProgressCallback

log = logging.getLogger(__name__)


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


def _open_current(
    target: Path, key: dict[str, Any], n_slices: int, progress: ProgressCallback | None
) -> FeatureCache | None:
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
    plan: _Plan,
    writer: CacheWriter,
    dev,
    pad_value: float,
    batch_size: int,
    progress: ProgressCallback | None,
    cancel,
    fast=None,
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
    progress: ProgressCallback | None = None,
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


__all__ = ["DEFAULT_BATCH_SIZE", "extract_features", "resolve_layers", "state_dict_hash"]

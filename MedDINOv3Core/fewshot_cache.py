"""The few-shot loop on a feature cache: training inputs and whole-volume prediction with no backbone pass.

A feature cache (MedDINOv3Core.feature_cache, written once per volume by ``extraction.extract_features``) holds, for
every axial slice, the normalised multi-scale tokens and each block's norm, so the raw tokens that
``MultiScaleBackbone.features`` returns come back exactly up to float16 (``FeatureCache.raw_tokens``). A few-shot
model (MedDINOv3Core.models.fewshot_head) is a frozen backbone plus a light head on those tokens and on image
channels of the normalised slice, so with a matching cache:

- ``slice_tokens(cache, k)``: the tokens of one labelled slice for few-shot training (train.finetune_tasks);
- ``predict_from_cache(model, card, volume, cache)``: the head alone, slice by slice (memory-mapped slices, one batch
  in memory), restored onto the input grid exactly like ``inference.predict_volume`` (the same preprocessing, the
  same centred padding with the card's pad value, the same bilinear restore and argmax): the same ``Prediction``.

A cache matches when it was built from the same backbone weights (``state_dict_hash`` of the backbone alone, so a
few-shot model made from a base model shares the base model's cache), the same volume (content and geometry), the
same preprocessing and pad value, the head's blocks and no upsampling; ``cache_problem`` says what differs in one
line (``check_cache`` raises it as a FeatureCacheError).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from MedDINOv3Core.card import InferenceConfig, ModelCard, PreprocessConfig, card_labels
from MedDINOv3Core.data.preprocess import PreparedVolume, prepare_volume
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.feature_cache import FeatureCache, FeatureCacheError, volume_hash
from MedDINOv3Core.inference import Prediction, all_finite, label_lookup, write_batch
from MedDINOv3Core.progress import ProgressCallback, check_cancel, report

log = logging.getLogger(__name__)

REBUILD = "build it with `python -m training explore --model MODEL --input VOLUME --cache-dir DIR` for this model"


def _json(value: Any) -> Any:
    """``value`` as it reads back from a JSON header (tuples become lists)."""
    return json.loads(json.dumps(value))


def absolute_layers(layers: Sequence[int], depth: int) -> list[int]:
    """Block indices with negative ones counted from the end (the cache key's spelling)."""
    return [int(i) + depth if int(i) < 0 else int(i) for i in layers]


def backbone_hash(model) -> str:
    """The cache key's model identity of a segmenter: the state-dict hash of its backbone alone."""
    from MedDINOv3Core.extraction import state_dict_hash

    return state_dict_hash(getattr(model, "backbone", model))


def cache_problem(
    cache: FeatureCache,
    *,
    model_hash: str,
    preprocessing: PreprocessConfig | dict[str, Any],
    layers: Sequence[int],
    pad_value: float,
    volume_digest: str | None = None,
) -> str | None:
    """What makes ``cache`` unusable for a few-shot model, in one sentence, or None when it matches.

    Args:
        cache: the opened cache.
        model_hash: ``backbone_hash`` of the model.
        preprocessing: the model card's preprocessing.
        layers: the head's aggregated blocks (0-based, ``absolute_layers``).
        pad_value: the card's inference pad value.
        volume_digest: ``volume_hash`` of the volume (None: not checked).
    """
    key = cache.key
    if not isinstance(preprocessing, PreprocessConfig):
        preprocessing = PreprocessConfig.from_dict(preprocessing)
    if key.get("model") != model_hash:
        return f"the feature cache {cache.path} belongs to another model (other backbone weights); {REBUILD}"
    if volume_digest is not None and key.get("volume") != volume_digest:
        return f"the feature cache {cache.path} belongs to another volume (content or geometry differ); {REBUILD}"
    if _json(key.get("preprocessing")) != _json(preprocessing.to_dict()):
        return f"the feature cache {cache.path} was built with other preprocessing than the model's; {REBUILD}"
    if list(key.get("layers", [])) != list(layers):
        return (
            f"the feature cache {cache.path} holds blocks {key.get('layers')}, the model uses {list(layers)}; {REBUILD}"
        )
    if int(key.get("upsample", 1)) != 1:
        return f"the feature cache {cache.path} was extracted with --upsample {key.get('upsample')}; {REBUILD}"
    if key.get("fast"):
        return f"the feature cache {cache.path} was extracted with --fast (interpolated slices); {REBUILD} (no --fast)"
    if float(key.get("pad_value", 0.0)) != float(pad_value):
        return f"the feature cache {cache.path} pads slices with {key.get('pad_value')}, the model with {pad_value}"
    return None


def _model_facts(model, card: ModelCard) -> dict[str, Any]:
    """The cache_problem arguments of a few-shot model and its card."""
    from MedDINOv3Core.models.fewshot_head import FewShotSegmenter

    if not isinstance(model, FewShotSegmenter):
        raise FeatureCacheError(
            f"model {card.name!r} is not a few-shot model: only a few-shot head runs on cached features; predict "
            "without --features, or fine-tune one with `python -m training finetune --config finetune_fewshot`"
        )
    inference = InferenceConfig.from_dict(card.inference or {})
    return {
        "model_hash": backbone_hash(model),
        "preprocessing": card.preprocessing,
        "layers": absolute_layers(model.layers, model.backbone.config.depth),
        "pad_value": inference.pad_value,
    }


def check_cache(cache: FeatureCache, model, card: ModelCard, volume: Volume | None = None) -> None:
    """Raise FeatureCacheError (one line saying what to do) unless ``cache`` serves this few-shot model (and
    ``volume``)."""
    digest = None if volume is None else volume_hash(volume.array, volume.spacing, volume.origin, volume.direction)
    problem = cache_problem(cache, volume_digest=digest, **_model_facts(model, card))
    if problem is not None:
        raise FeatureCacheError(problem)


def slice_tokens(cache: FeatureCache, index: int) -> torch.Tensor:
    """The raw multi-scale tokens of axial slice ``index``: (1, F, h, w) float32 (``model.features`` of the padded
    slice, up to float16)."""
    return torch.from_numpy(cache.raw_tokens(index, index + 1)).permute(0, 3, 1, 2).contiguous()


def padded_slices(
    images: np.ndarray | torch.Tensor, grid: tuple[int, int], patch: int, pad_value: float
) -> torch.Tensor:
    """(n, H', W') normalised model-grid slices -> (n, 1, grid_h x patch, grid_w x patch), padded centred with
    ``pad_value`` as ``inference.sliding_window_logits`` pads a whole slice."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    n, h, w = x.shape
    ph, pw = grid[0] * patch, grid[1] * patch
    top, left = (ph - h) // 2, (pw - w) // 2
    out = torch.full((n, 1, ph, pw), float(pad_value), dtype=torch.float32)
    out[:, 0, top : top + h, left : left + w] = x
    return out


def _check_grid(cache: FeatureCache, prepared: PreparedVolume, patch: int) -> None:
    mapping = cache.mapping
    if mapping.patch != patch or tuple(mapping.model_shape) != tuple(prepared.model_shape):
        raise FeatureCacheError(
            f"the feature cache {cache.path} has a {mapping.model_shape} grid of {mapping.patch}-pixel patches, the "
            f"model a {prepared.model_shape} grid of {patch}-pixel patches; {REBUILD}"
        )


@torch.inference_mode()
def predict_from_cache(
    model,
    card: ModelCard,
    volume: Volume,
    cache: FeatureCache,
    *,
    batch_size: int = 2,
    return_probabilities: bool = False,
    progress: ProgressCallback | None = None,
    cancel: Any = None,
) -> Prediction:
    """Segment ``volume`` with a few-shot model's head on the cached tokens: no backbone pass.

    Equals ``predict_volume(model, card, volume)`` up to the cache's float16 precision (>= 99.5 % of voxels agree,
    tested): the same preprocessing, centred padding with the card's pad value, head, bilinear restore to the native
    grid and argmax into a labelmap with the input's exact geometry. Memory: one batch of slices (the cache is read
    slice range by slice range from its memory map).

    Args:
        model: a FewShotSegmenter (weights.load_model of a few-shot card).
        card: its model card; whole-slice inference (no tile_size) and no TTA (mirrored features are not cached).
        volume: the input volume the cache was built from (checked by content and geometry).
        cache: the opened FeatureCache (``check_cache`` must pass).
        batch_size: slices per head pass (a 512 x 512 slice holds ~70 MB of hidden activations).
        return_probabilities: also return (n_classes, z, y, x) float32 softmax probabilities.
        progress: callback (stage, done, total, message): "features" (0 of 0, "from cache") then "predict" slices.
        cancel: CancelToken / threading.Event, checked between batches.

    Returns:
        a Prediction (device "cpu").
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_cache(cache, model, card, volume)
    config = InferenceConfig.from_dict(card.inference or {})
    if config.tta:
        raise FeatureCacheError("mirroring TTA needs the backbone (mirrored features are not cached); drop --tta")
    prepared = prepare_volume(volume, card.preprocessing)
    patch = model.patch_size
    _check_grid(cache, prepared, patch)
    padded = tuple(g * patch for g in cache.mapping.grid)
    if config.tile_size and tuple(config.tile_size) != padded:  # a tile of exactly the padded slice is one pass
        raise FeatureCacheError(
            f"model {card.name!r} tiles slices ({config.tile_size}); the few-shot head on cached features needs "
            "whole-slice inference (an empty inference.tile_size, as finetune writes few-shot cards)"
        )
    labels = card_labels(card)
    lut = torch.from_numpy(label_lookup(labels).astype(np.int64))
    n_classes = len(lut)
    model = model.to("cpu").eval()
    labelmap = np.zeros(volume.shape, dtype=label_lookup(labels).dtype)
    out_axial = prepared.axial_view(labelmap)
    probs = np.zeros((n_classes, *volume.shape), dtype=np.float32) if return_probabilities else None
    probs_axial = prepared.axial_view(probs) if probs is not None else None
    mapping, total = cache.mapping, len(prepared)
    (h, w), (top, left) = prepared.model_shape, mapping.pad
    report(progress, "features", 0, 0, "from cache")
    report(progress, "predict", 0, total, f"{total} slices, few-shot head on cached features")
    log.info("predicting %d slices from the feature cache %s (head only)", total, cache.path)
    for k0 in range(0, total, batch_size):
        check_cancel(cancel)
        k1 = min(total, k0 + batch_size)
        tokens = torch.from_numpy(cache.raw_tokens(k0, k1)).permute(0, 3, 1, 2)
        x = padded_slices(prepared.slices(k0, k1), mapping.grid, patch, config.pad_value)
        logits = model.head(tokens, x)[:, :, top : top + h, left : left + w]
        if not bool(all_finite(logits)):
            raise ValueError(f"the head produced non-finite logits for slices {k0}..{k1 - 1}; check the model")
        write_batch(prepared.restore(logits, "bilinear"), lut, out_axial, probs_axial, k0, k1)
        report(progress, "predict", k1, total, "")
    seconds = time.perf_counter() - start
    log.info("predicted %d slices from the cache in %.1f s", total, seconds)
    return Prediction(volume.with_array(labelmap), probs, labels, "cpu", seconds)


__all__ = [
    "absolute_layers",
    "backbone_hash",
    "cache_problem",
    "check_cache",
    "padded_slices",
    "predict_from_cache",
    "slice_tokens",
]

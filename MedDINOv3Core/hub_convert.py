"""Conversion of an upstream checkpoint into a model card, for MedDINOv3Core.hub.

``convert_to_card`` reads a checkpoint (safetensors or a weights-only torch file), converts it with
MedDINOv3Core.convert and writes a card with MedDINOv3Core.weights; a transformers DINOv3 config.json supplies what
the weights cannot tell.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from MedDINOv3Core.progress import ProgressCallback, report
from MedDINOv3Core.registry import RegistryEntry

log = logging.getLogger(__name__)


def _transformers_overrides(config_path: Path) -> dict[str, Any]:
    """ViTConfig fields from a transformers DINOv3ViTConfig config.json (what the weights cannot tell)."""
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the transformers config {config_path}: {exc}") from exc
    if cfg.get("use_gated_mlp"):
        raise ValueError(f"{config_path}: DINOv3 models with a gated (SwiGLU) MLP are not supported")
    mapping = {
        "num_attention_heads": "num_heads",
        "layer_norm_eps": "norm_eps",
        "rope_theta": "rope_base",
        "pos_embed_rescale": "rope_rescale",
        "pos_embed_shift": "rope_shift",
        "pos_embed_jitter": "rope_jitter",
    }
    return {ours: cfg[theirs] for theirs, ours in mapping.items() if theirs in cfg}


def _is_transformers_config(path: Path) -> bool:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("model_type", "")).startswith("dinov3")
    except (OSError, ValueError, AttributeError):
        return False


def convert_to_card(
    weights: Path,
    target: Path,
    *,
    fmt: str | None = None,
    transformers_config: Path | None = None,
    architecture: Mapping[str, Any] | None = None,
    card_fields: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Convert an upstream checkpoint into a model card at ``target`` (written atomically).

    Args:
        weights: the checkpoint (safetensors or a weights-only torch file; never unpickled).
        target: the card directory to write.
        fmt: upstream format (None: detected from the keys).
        transformers_config: a transformers config.json giving heads, norm eps and RoPE settings.
        architecture: ViTConfig overrides (take precedence).
        card_fields: ModelCard fields (name, description, license, provenance, labels, preprocessing).
    """
    from MedDINOv3Core.card import ModelCard
    from MedDINOv3Core.convert import convert_checkpoint, read_checkpoint
    from MedDINOv3Core.weights import save_model_card

    report(progress, "convert", 0, 1, weights.name)
    overrides = _transformers_overrides(transformers_config) if transformers_config else {}
    overrides.update(architecture or {})
    state_dict, vit_config, detected = convert_checkpoint(read_checkpoint(weights), fmt, **overrides)
    fields = dict(card_fields or {})
    fields["provenance"] = {**fields.get("provenance", {}), "format": detected}
    fields["labels"] = tuple(fields.get("labels", ()))
    card = ModelCard(task="backbone", backbone=vit_config, **fields)
    save_model_card(target, card, state_dict)
    report(progress, "convert", 1, 1, weights.name)
    log.info("converted %s (%s) into the model card %s", weights, detected, target)
    return target


def _card_fields(entry: RegistryEntry | None, name: str, provenance: dict[str, Any]) -> dict[str, Any]:
    if entry is None:
        return {"name": name, "license": "unknown", "provenance": provenance}
    return {
        "name": entry.name,
        "description": entry.description,
        "license": entry.license,
        "provenance": {**provenance, "license_url": entry.license_url, "gated": entry.gated},
        "labels": entry.labels,
        "preprocessing": dict(entry.preprocessing),
    }

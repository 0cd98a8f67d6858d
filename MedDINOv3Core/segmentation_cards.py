"""The card <-> head-config conversion for segmentation model cards.

A model card (``MedDINOv3Core.card``) is plain data; the networks (``MedDINOv3Core.models``) take their config
dataclasses and tensors only. This module sits between the two: above the models, below ``MedDINOv3Core.weights``,
whose ``build_model`` builds a network from a card with the head config parsed here. It reads a segmentation card's
``head`` into the network's config, checked against the card's labels, and builds new segmentation cards with their
labels, head, preprocessing and inference settings validated.

Model card conventions (``task="segmentation"``):

- ``card.head`` holds the head's config dict, its ``type`` picking the network: absent or "primus"
  (``models.segmenter.PRIMUS_HEAD``) -> a ``SegmenterConfig`` (ViT + Primus decoder), "fewshot"
  (``models.fewshot_head.HEAD_TYPE``) -> a ``FewShotHeadConfig`` (frozen ViT + light per-pixel head);
- ``card.labels`` lists the FOREGROUND classes: logit channel 0 is background (label value 0) and channel ``c >= 1``
  is ``labels[c - 1]``, whose ``value`` is written into the output labelmap. So ``n_classes == len(labels) + 1``.
- ``card.preprocessing`` is a PreprocessConfig, ``card.inference`` an InferenceConfig, both stored as dicts (the
  card, its labels and both configs are defined in MedDINOv3Core.card).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from MedDINOv3Core.architecture import ViTConfig
from MedDINOv3Core.card import InferenceConfig, Label, ModelCard, PreprocessConfig, card_labels, parse_labels
from MedDINOv3Core.config_utils import config_to_dict
from MedDINOv3Core.models.fewshot_head import FewShotHeadConfig, is_fewshot_head
from MedDINOv3Core.models.segmenter import PRIMUS_HEAD, SegmenterConfig


def segmenter_config_from_card(card: ModelCard) -> SegmenterConfig:
    """Parse ``card.head`` and check it against ``card.labels``."""
    if card.task != "segmentation":
        raise ValueError(f"model card {card.name!r} is a {card.task!r} model, not a segmentation model")
    if not card.head:
        raise ValueError(f"segmentation model card {card.name!r} has no 'head' configuration")
    head = {k: v for k, v in card.head.items() if k != "type"}
    if card.head.get("type", PRIMUS_HEAD) != PRIMUS_HEAD:
        raise ValueError(f"model card {card.name!r} has a {card.head['type']!r} head, not the Primus decoder")
    config = SegmenterConfig.from_dict(head)
    labels = card_labels(card)
    if config.n_classes != len(labels) + 1:
        raise ValueError(
            f"model card {card.name!r}: head.n_classes is {config.n_classes} but it lists {len(labels)} labels "
            f"(n_classes must be the number of labels + 1 for background)"
        )
    return config


def fewshot_config_from_card(card: ModelCard) -> FewShotHeadConfig:
    """Parse a few-shot ``card.head`` and check it against ``card.labels``."""
    if card.task != "segmentation" or not is_fewshot_head(card.head):
        raise ValueError(f"model card {card.name!r} does not describe a few-shot segmentation head")
    config = FewShotHeadConfig.from_dict(card.head)
    if config.n_classes != len(card.labels) + 1:
        raise ValueError(
            f"model card {card.name!r}: head.n_classes is {config.n_classes} but it lists {len(card.labels)} labels"
        )
    return config


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    return config_to_dict(config)


def new_segmentation_card(
    backbone: ViTConfig,
    labels: Sequence[Mapping[str, Any] | Label | str],
    preprocessing: Any = None,
    inference: Any = None,
    head: SegmenterConfig | Mapping[str, Any] | None = None,
    *,
    name: str = "",
    description: str = "",
    license: str = "",
    provenance: Mapping[str, Any] | None = None,
) -> ModelCard:
    """A segmentation ModelCard with validated labels, head, preprocessing and inference settings.

    Args:
        backbone: the ViT architecture.
        labels: foreground labels (Label, card dicts, or bare names which get values 1, 2, ... and palette colours).
        preprocessing: a PreprocessConfig or its dict; None means PreprocessConfig() defaults.
        inference: an InferenceConfig or its dict; None means InferenceConfig() defaults.
        head: a SegmenterConfig or its dict; None means SegmenterConfig(n_classes=len(labels) + 1). Its n_classes
            must equal len(labels) + 1.
        name, description, license, provenance: card metadata.
    """
    parsed = parse_labels(labels)
    if not parsed:
        raise ValueError("a segmentation model needs at least one label")
    head_cfg = (
        head
        if isinstance(head, SegmenterConfig)
        else SegmenterConfig.from_dict({"n_classes": len(parsed) + 1, **(dict(head) if head is not None else {})})
    )
    pre = (
        preprocessing
        if isinstance(preprocessing, PreprocessConfig)
        else PreprocessConfig.from_dict(_as_dict(preprocessing))
    )
    inf = inference if isinstance(inference, InferenceConfig) else InferenceConfig.from_dict(_as_dict(inference))
    card = ModelCard(
        task="segmentation",
        backbone=backbone,
        name=name,
        description=description,
        license=license,
        provenance=dict(provenance or {}),
        head=head_cfg.to_dict(),
        labels=tuple(label.to_dict() for label in parsed),
        preprocessing=pre.to_dict(),
        inference=inf.to_dict(),
    )
    segmenter_config_from_card(card)
    return card


def new_fewshot_card(
    backbone: ViTConfig,
    labels: Sequence[Mapping[str, Any] | Any],
    head: FewShotHeadConfig,
    preprocessing: Mapping[str, Any],
    inference: Mapping[str, Any],
    **metadata: Any,
) -> ModelCard:
    """A segmentation ModelCard carrying a few-shot head (labels validated like the Primus segmenter's)."""

    parsed = parse_labels(labels)
    card = ModelCard(
        task="segmentation",
        backbone=backbone,
        head=head.to_dict(),
        labels=tuple(label.to_dict() for label in parsed),
        preprocessing=dict(preprocessing),
        inference=dict(inference),
        **metadata,
    )
    fewshot_config_from_card(card)
    return card


__all__ = [
    "fewshot_config_from_card",
    "new_fewshot_card",
    "new_segmentation_card",
    "segmenter_config_from_card",
]

"""The MedDINOv3 2D segmenter: DINOv3 ViT backbone + multi-scale token aggregation + Primus decoder.

The segmentation set-up of MedDINOv3 (arXiv:2509.02379). A (B, 1, H, W) normalised slice is repeated to the
backbone's 3 input channels (no ImageNet mean/std); the normed patch tokens of blocks ``intermediate_layers``
(default: four evenly spaced blocks ending at the last, i.e. 2, 5, 8, 11 for ViT-B) are concatenated to a
(B, 4 D, H/16, W/16) map (``Segmenter.features``), which the decoder turns into logits (B, n_classes, H, W). H and W
must be multiples of the patch size.

Model card conventions (``task="segmentation"``):
- ``card.head`` holds a SegmenterConfig (see below);
- ``card.labels`` lists the FOREGROUND classes: logit channel 0 is background (label value 0) and channel ``c >= 1``
  is ``labels[c - 1]``, whose ``value`` is written into the output labelmap. So ``n_classes == len(labels) + 1``.
- ``card.preprocessing`` is a PreprocessConfig, ``card.inference`` an InferenceConfig (both as dicts; the card, its
  labels and both configs are defined in MedDINOv3Core.card, and Label / parse_labels / card_labels /
  DEFAULT_COLORS are re-exported here).

State dict keys: ``backbone.*`` (the DINOv3 official names) and ``decoder.*``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from MedDINOv3Core.card import (
    DEFAULT_COLORS,
    InferenceConfig,
    Label,
    ModelCard,
    PreprocessConfig,
    card_labels,
    parse_labels,
)
from MedDINOv3Core.config_utils import config_from_dict, config_to_dict
from MedDINOv3Core.models.decoder import PrimusDecoder
from MedDINOv3Core.models.vit import VisionTransformer, ViTConfig, uninitialised

PRIMUS_HEAD = "primus"


@dataclass(frozen=True)
class SegmenterConfig:
    """The segmentation head, stored in ``card.head``.

    Args:
        n_classes: logit channels, background included (= number of labels + 1).
        intermediate_layers: backbone blocks (0-based) whose normed patch tokens are concatenated; empty means the
            backbone's default (ViT-B: 2, 5, 8, 11).
        decoder_norm_eps: epsilon of the decoder's channels-first LayerNorms.
        in_chans: channels of the input image (1 for CT/MRI), repeated to the backbone's input channels.
    """

    n_classes: int
    intermediate_layers: tuple[int, ...] = ()
    decoder_norm_eps: float = 1e-6
    in_chans: int = 1

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise ValueError(f"a segmenter needs n_classes >= 2 (background + one label), got {self.n_classes}")
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be positive, got {self.in_chans}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmenterConfig:
        if "n_classes" not in data:
            raise ValueError("segmentation head config lacks 'n_classes' (the number of labels + 1 for background)")
        return config_from_dict(cls, dict(data), where="segmentation head config")


class MultiScaleBackbone(nn.Module):
    """The backbone with multi-scale token aggregation shared by every segmentation head.

    ``features`` concatenates the normed patch tokens of the aggregated blocks; subclasses add a head on top.
    The config needs ``n_classes``, ``in_chans`` and ``intermediate_layers``. ``init_backbone=False`` builds the
    backbone on the meta device (``vit.uninitialised``) for a caller that loads its weights next with ``assign``.

    Attributes:
        backbone: the VisionTransformer.
        layers: the aggregated block indices.
    """

    def __init__(self, backbone: ViTConfig, config: Any, init_backbone: bool = True) -> None:
        super().__init__()
        if backbone.in_chans % config.in_chans:
            raise ValueError(
                f"cannot repeat {config.in_chans} input channel(s) to the backbone's {backbone.in_chans} channels"
            )
        self.config = config
        self.layers = tuple(config.intermediate_layers) or backbone.default_intermediate_indices()
        bad = [i for i in self.layers if not -backbone.depth <= i < backbone.depth]
        if bad:
            raise ValueError(f"intermediate_layers {bad} out of range for a backbone of depth {backbone.depth}")
        self.repeat = backbone.in_chans // config.in_chans
        self.backbone = VisionTransformer(backbone) if init_backbone else uninitialised(VisionTransformer, backbone)

    @property
    def n_classes(self) -> int:
        return self.config.n_classes

    @property
    def patch_size(self) -> int:
        return self.backbone.config.patch_size

    @property
    def feature_dim(self) -> int:
        """Channels of ``features``: number of aggregated blocks x embed dim."""
        return len(self.layers) * self.backbone.config.embed_dim

    def _check_input(self, x: torch.Tensor) -> None:
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"the segmenter expects (B, {self.config.in_chans}, H, W) input, got {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"input height and width must be multiples of the patch size {p}, got {tuple(x.shape[-2:])}; "
                "pad the image (predict_volume does this for you)"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-scale features: (B, in_chans, H, W) -> (B, len(layers) * D, H/p, W/p).

        The normed patch tokens of each aggregated block, concatenated along channels in block order.
        """
        return torch.cat(self.backbone.get_intermediate_layers(self._repeated(x), self.layers), dim=1)

    def token_features(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``features`` at the patches ``keep`` only (row-major indices in the patch grid; the other patches never
        enter the backbone): (B, in_chans, H, W) -> (B, len(keep), len(layers) * D)."""
        tokens = self.backbone.get_intermediate_layers(self._repeated(x), self.layers, reshape=False, keep=keep)
        return torch.cat(tokens, dim=-1)

    def _repeated(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x.repeat(1, self.repeat, 1, 1) if self.repeat > 1 else x


class Segmenter(MultiScaleBackbone):
    """Backbone + multi-scale aggregation + Primus decoder.

    Attributes:
        backbone: the VisionTransformer.
        decoder: the PrimusDecoder.
        layers: the aggregated block indices.
    """

    def __init__(self, backbone: ViTConfig, config: SegmenterConfig, init_backbone: bool = True) -> None:
        patch = backbone.patch_size
        n_stages = int(round(math.log2(patch)))
        if 2**n_stages != patch:
            raise ValueError(f"the Primus decoder needs a power-of-two patch size, got {patch}")
        super().__init__(backbone, config, init_backbone)
        self.decoder = PrimusDecoder(self.feature_dim, config.n_classes, n_stages, config.decoder_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes, H, W) for normalised slices (B, in_chans, H, W)."""
        return self.decoder(self.features(x))


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


__all__ = [
    "DEFAULT_COLORS",
    "PRIMUS_HEAD",
    "Label",
    "Segmenter",
    "SegmenterConfig",
    "card_labels",
    "new_segmentation_card",
    "parse_labels",
    "segmenter_config_from_card",
]

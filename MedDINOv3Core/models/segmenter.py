"""The MedDINOv3 2D segmenter: DINOv3 ViT backbone + multi-scale token aggregation + Primus decoder.

The segmentation set-up of MedDINOv3 (arXiv:2509.02379). A (B, 1, H, W) normalised slice is repeated to the
backbone's 3 input channels (no ImageNet mean/std); the normed patch tokens of blocks ``intermediate_layers``
(default: four evenly spaced blocks ending at the last, i.e. 2, 5, 8, 11 for ViT-B) are concatenated to a
(B, 4 D, H/16, W/16) map (``Segmenter.features``), which the decoder turns into logits (B, n_classes, H, W). H and W
must be multiples of the patch size.

This module knows no model card: the network takes its SegmenterConfig and tensors only. The config is stored in a
segmentation card's ``head``; MedDINOv3Core.segmentation_cards converts between cards and SegmenterConfig and
describes the card conventions (labels, background channel, ``n_classes == len(labels) + 1``).

State dict keys: ``backbone.*`` (the DINOv3 official names) and ``decoder.*``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


__all__ = [
    "PRIMUS_HEAD",
    "Segmenter",
    "SegmenterConfig",
]

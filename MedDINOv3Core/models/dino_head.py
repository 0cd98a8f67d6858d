"""DINO / iBOT projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes.

Input tokens (..., D) go through ``n_layers`` linear layers (GELU between them; the last maps to the bottleneck),
are L2-normalised, and are scored against K prototypes whose rows are L2-normalised too (weight normalisation with
the gain fixed to 1, as in DINO), so each logit is a cosine similarity. The prototype matrix is the "last layer"
that pretraining freezes during the first iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.config_utils import config_from_dict, config_to_dict


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a projection head (paper: 3 layers, hidden 2048, bottleneck 256, 65536 prototypes)."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3

    def __post_init__(self) -> None:
        if self.n_layers < 1 or min(self.out_dim, self.hidden_dim, self.bottleneck_dim) < 1:
            raise ValueError(f"head sizes must be positive and n_layers >= 1, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        return config_from_dict(cls, data, where="head config")


class DINOHead(nn.Module):
    """Projection head used for both the DINO (class token) and iBOT (patch token) objectives.

    Args:
        in_dim: backbone width D.
        config: the head shape.
    """

    def __init__(self, in_dim: int, config: HeadConfig | None = None) -> None:
        super().__init__()
        config = config or HeadConfig()
        self.config = config
        dims = [in_dim] + [config.hidden_dim] * (config.n_layers - 1) + [config.bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(config.n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < config.n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        # Weight-normalised prototypes with a fixed unit gain: only the direction of each row is learned.
        self.prototypes = nn.Parameter(torch.empty(config.out_dim, config.bottleneck_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) tokens -> (..., bottleneck) L2-normalised embeddings."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) tokens -> (..., K) prototype logits (cosine similarities in [-1, 1])."""
        return F.linear(self.embed(x), F.normalize(self.prototypes, dim=-1, eps=1e-6))

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The parameters frozen during the first pretraining iterations (the prototypes)."""
        return [self.prototypes]

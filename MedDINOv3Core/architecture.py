"""The DINOv3 ViT's architecture as plain data (no torch): ``ViTConfig``, the presets and the qkv-bias modes.

Model cards, the registry and the Slicer module read and validate architectures without importing torch; the
network itself is ``MedDINOv3Core.models.vit.VisionTransformer``, built from a ``ViTConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from MedDINOv3Core.config_utils import config_from_dict, config_to_dict

QKV_BIAS_MODES = ("qv", "qkv", "none")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a DINOv3 ViT. Every field is saved in the model card's config.json.

    The parity knobs differ between released weights: DINOv3 official uses ``qkv_bias="qv"``, ``norm_eps=1e-5``,
    ``rope_dtype="fp32"``; MedDINOv3 released weights use ``qkv_bias="none"``, ``norm_eps=1e-6``,
    ``rope_dtype="bf16"``.
    """

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    in_chans: int = 3
    n_storage_tokens: int = 4
    qkv_bias: str = "qv"
    proj_bias: bool = True
    ffn_bias: bool = True
    norm_eps: float = 1e-5
    layerscale_init: float = 1e-5
    drop_path_rate: float = 0.0
    rope_base: float = 100.0
    rope_dtype: str = "fp32"
    rope_shift: float | None = None
    rope_jitter: float | None = None
    rope_rescale: float | None = 2.0

    def __post_init__(self) -> None:
        if self.qkv_bias not in QKV_BIAS_MODES:
            raise ValueError(f"qkv_bias must be one of {QKV_BIAS_MODES}, got {self.qkv_bias!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError(f"head dim {self.embed_dim // self.num_heads} must be divisible by 4 for axial RoPE")
        if self.depth < 1 or self.patch_size < 1:
            raise ValueError("depth and patch_size must be positive")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def default_intermediate_indices(self) -> tuple[int, ...]:
        """Four evenly spaced blocks ending at the last one (ViT-B: 2, 5, 8, 11; ViT-L: 5, 11, 17, 23)."""
        n = min(4, self.depth)
        return tuple(sorted({self.depth * (k + 1) // n - 1 for k in range(n)}))

    def forward_flops(self, height: int, width: int) -> float:
        """Matmul FLOPs (2 per multiply-add) of one forward pass on one (height, width) image: patch embedding,
        qkv, attention scores and values, output projection and MLP; norms and activations are not counted."""
        d, hidden = self.embed_dim, self.mlp_hidden_dim
        patches = (height // self.patch_size) * (width // self.patch_size)
        n = patches + 1 + self.n_storage_tokens
        embed = 2 * patches * d * self.in_chans * self.patch_size**2
        per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * hidden
        return embed + self.depth * per_block

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        return config_from_dict(cls, data, where="backbone config")


PRESETS: dict[str, ViTConfig] = {
    "vit_tiny": ViTConfig(embed_dim=64, depth=4, num_heads=2),
    "vit_small": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
}


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """A preset ("vit_tiny", "vit_small", "vit_base", "vit_large"; the "/16" suffix is accepted) with overrides."""
    key = name.lower().replace("/16", "").replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]


__all__ = ["PRESETS", "QKV_BIAS_MODES", "ViTConfig", "vit_config"]

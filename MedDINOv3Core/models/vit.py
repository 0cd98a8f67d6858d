"""DINOv3 Vision Transformer (the MedDINOv3 backbone), written from REFERENCE.md section 1.

Tokens are [cls, storage (register) tokens, patches]. No absolute position embedding: axial RoPE in every attention
layer. Pre-norm blocks with LayerScale; a shared final LayerNorm. Inputs must be multiples of the patch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from MedDINOv3Core.config_utils import config_from_dict, config_to_dict
from MedDINOv3Core.layers import Block, PatchEmbed, RopePositionEmbedding
from MedDINOv3Core.layers.attention import QKV_BIAS_MODES


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


class ViTFeatures(NamedTuple):
    """What ``forward_features`` returns (always this structure).

    cls_token: (B, D) normed class token. registers: (B, R, D) normed storage tokens.
    patch_tokens: (B, N, D) normed patch tokens, row-major over the (H/16, W/16) grid.
    prenorm: (B, 1 + R + N, D) tokens before the final norm. grid: (H/16, W/16).
    """

    cls_token: torch.Tensor
    registers: torch.Tensor
    patch_tokens: torch.Tensor
    prenorm: torch.Tensor
    grid: tuple[int, int]


class VisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config.in_chans, d, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.storage_tokens = nn.Parameter(torch.zeros(1, config.n_storage_tokens, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.rope_embed = RopePositionEmbedding(
            config.head_dim,
            base=config.rope_base,
            dtype=config.rope_dtype,
            shift=config.rope_shift,
            jitter=config.rope_jitter,
            rescale=config.rope_rescale,
        )
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                d,
                config.num_heads,
                config.mlp_hidden_dim,
                qkv_bias=config.qkv_bias,
                proj_bias=config.proj_bias,
                ffn_bias=config.ffn_bias,
                layerscale_init=config.layerscale_init,
                norm_eps=config.norm_eps,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.reset_parameters()

    @property
    def n_prefix_tokens(self) -> int:
        return 1 + self.config.n_storage_tokens

    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) linear and token weights, zero biases, unit norms, LayerScale at its init."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        """Patch-embed ``x`` (B, C, H, W), replace masked patches by ``mask_token``, prepend cls + storage tokens.

        masks: optional boolean (B, N) or (B, H/16, W/16), True where a patch is masked (iBOT).
        Returns tokens (B, 1 + R + N, D) and the grid (H/16, W/16).
        """
        grid = self.patch_embed.grid_size(x.shape[-2], x.shape[-1])
        tokens = self.patch_embed(x)
        if masks is not None:
            masks = masks.reshape(masks.shape[0], -1)
            if masks.dtype != torch.bool or masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"masks must be boolean of shape {tuple(tokens.shape[:2])} (batch, patches), "
                    f"got {masks.dtype} {tuple(masks.shape)}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        b = tokens.shape[0]
        prefix = torch.cat((self.cls_token.expand(b, -1, -1), self.storage_tokens.expand(b, -1, -1)), dim=1)
        return torch.cat((prefix.to(tokens.dtype), tokens), dim=1), grid

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> ViTFeatures:
        """Run the backbone on an image batch (B, C, H, W); see ViTFeatures for the outputs."""
        prenorm, grid = self.prepare_tokens(x, masks)
        rope = self.rope_embed(*grid)
        for block in self.blocks:
            prenorm = block(prenorm, rope)
        normed = self.norm(prenorm)
        r = self.n_prefix_tokens
        return ViTFeatures(normed[:, 0], normed[:, 1:r], normed[:, r:], prenorm, grid)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The normed class token (B, D)."""
        return self.forward_features(x, masks).cls_token

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        indices: Sequence[int] | None = None,
        reshape: bool = True,
        norm: bool = True,
    ) -> list[torch.Tensor]:
        """Patch tokens after the given blocks (0-based), each through the SHARED final norm when ``norm``.

        Returns one tensor per index, (B, D, H/16, W/16) when ``reshape`` else (B, N, D). Prefix tokens are dropped.
        Blocks after the last requested index are not run.
        """
        indices = tuple(self.config.default_intermediate_indices() if indices is None else indices)
        depth = self.config.depth
        bad = [i for i in indices if not -depth <= i < depth]
        if bad:
            raise ValueError(f"block indices {bad} out of range for a backbone of depth {depth}")
        wanted = [i % depth for i in indices]
        tokens, grid = self.prepare_tokens(x)
        rope = self.rope_embed(*grid)
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = block(tokens, rope)
            if i in wanted:
                kept[i] = tokens
        r = self.n_prefix_tokens
        outs = []
        for i in wanted:
            t = self.norm(kept[i]) if norm else kept[i]
            t = t[:, r:]
            if reshape:
                t = t.transpose(1, 2).reshape(t.shape[0], -1, *grid)
            outs.append(t)
        return outs


def build_vit(config: ViTConfig | str, **overrides: Any) -> VisionTransformer:
    """A randomly initialised backbone from a config or a preset name."""
    if isinstance(config, str):
        config = vit_config(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return VisionTransformer(config)

"""DINOv3 Vision Transformer (the MedDINOv3 backbone), as in the MedDINOv3 paper (arXiv:2509.02379).

Tokens are [cls, storage (register) tokens, patches]. No absolute position embedding: axial RoPE in every attention
layer. Pre-norm blocks with LayerScale; a shared final LayerNorm. Inputs must be multiples of the patch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from MedDINOv3Core.architecture import PRESETS, ViTConfig, vit_config
from MedDINOv3Core.layers import Block, PatchEmbed, RopePositionEmbedding


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
        rates = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
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
        keep: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Patch tokens after the given blocks (0-based), each through the SHARED final norm when ``norm``.

        Returns one tensor per index, (B, D, H/16, W/16) when ``reshape`` else (B, N, D). Prefix tokens are dropped.
        Blocks after the last requested index are not run. ``keep``: int64 indices of the patches (row-major in the
        patch grid) that enter the blocks at all, with their own RoPE positions; the others are dropped (fewer
        FLOPs; the kept tokens no longer attend to them) and the result is (B, len(keep), D) (no ``reshape``).
        """
        indices = tuple(self.config.default_intermediate_indices() if indices is None else indices)
        depth = self.config.depth
        bad = [i for i in indices if not -depth <= i < depth]
        if bad:
            raise ValueError(f"block indices {bad} out of range for a backbone of depth {depth}")
        wanted = [i % depth for i in indices]
        tokens, grid = self.prepare_tokens(x)
        rope = self.rope_embed(*grid)
        r = self.n_prefix_tokens
        if keep is not None:
            if reshape:
                raise ValueError("a subset of the patch tokens (keep) cannot be reshaped to the patch grid")
            tokens = torch.cat((tokens[:, :r], tokens[:, r:].index_select(1, keep)), dim=1)
            rope = tuple(t.index_select(0, keep) for t in rope)
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = block(tokens, rope)
            if i in wanted:
                kept[i] = tokens
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


def uninitialised(factory: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """``factory(*args, **kwargs)`` (a module class or a builder) built on the meta device: no random initialisation
    runs (about 2 s for ViT-B on a 2-core CPU) and no memory is allocated. The caller must load every parameter and
    buffer next with ``load_state_dict(..., assign=True)`` (``convert.load_state_dict_strict(assign=True)``), which
    puts the loaded tensors in their place."""
    with torch.device("meta"):
        return factory(*args, **kwargs)


__all__ = [
    "PRESETS",
    "ViTConfig",
    "ViTFeatures",
    "VisionTransformer",
    "build_vit",
    "uninitialised",
    "vit_config",
]

"""bf16 RoPE reproduces the DINOv3 bf16 arithmetic that the released MedDINOv3 weights were trained with.

The reference below is written from the description of that arithmetic (issue 16 item 10), independently of the
layer: every step is a bf16 tensor operation, so every intermediate is rounded to bf16.
"""

from __future__ import annotations

import math

import pytest
import torch

from MedDINOv3Core.layers.rope import RopePositionEmbedding
from MedDINOv3Core.models.vit import VisionTransformer, vit_config

BF16 = torch.bfloat16
SIZES = (224, 448, 512, 896)
PATCH = 16


def reference_tables(height: int, width: int, head_dim: int, base: float = 100.0):
    """(sin, cos) as DINOv3 computes them in bf16: (H*W, head_dim) each."""
    periods = base ** (2 * torch.arange(head_dim // 4, dtype=BF16) / (head_dim // 2))
    rows = torch.arange(0.5, height, dtype=BF16) / height
    cols = torch.arange(0.5, width, dtype=BF16) / width
    coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


def test_reference_is_bf16_throughout():
    sin, cos = reference_tables(14, 14, 64)
    assert sin.dtype == cos.dtype == BF16 and sin.shape == (196, 64)


@pytest.mark.parametrize("head_dim", [64, 32])
@pytest.mark.parametrize("size", SIZES)
def test_bf16_tables_match_reference(size, head_dim):
    grid = size // PATCH
    sin, cos = RopePositionEmbedding(head_dim, dtype="bf16").eval()(grid, grid)
    ref_sin, ref_cos = reference_tables(grid, grid, head_dim)
    assert sin.dtype == cos.dtype == BF16
    assert (sin.float() - ref_sin.float()).abs().max() <= 1e-5  # the bound; in fact bit-identical:
    assert torch.equal(sin, ref_sin) and torch.equal(cos, ref_cos)


def test_bf16_tables_match_reference_rectangular():
    sin, cos = RopePositionEmbedding(64, dtype="bf16").eval()(14, 32)
    ref_sin, ref_cos = reference_tables(14, 32, 64)
    assert torch.equal(sin, ref_sin) and torch.equal(cos, ref_cos)


def test_bf16_periods_buffer_holds_bf16_values():
    periods = RopePositionEmbedding(64, dtype="bf16").periods
    assert periods.dtype == torch.float32  # the stored buffer stays fp32 (checkpoint layout)
    assert torch.equal(periods, periods.to(BF16).float())


def test_bf16_augmentations_stay_bf16_and_train_only():
    rope = RopePositionEmbedding(32, dtype="bf16", shift=1.0, jitter=2.0, rescale=2.0).train()
    torch.manual_seed(0)
    a = rope(4, 4)
    torch.manual_seed(0)
    b = rope(4, 4)
    assert a[0].dtype == BF16
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # seeded draws are reproducible
    ref_sin, _ = reference_tables(4, 4, 32)
    assert not torch.equal(a[0], ref_sin)
    assert torch.equal(rope.eval()(4, 4)[0], ref_sin)


@pytest.mark.parametrize("size", SIZES)
def test_vit_patch_tokens_match_reference_tables(size):
    torch.manual_seed(0)
    model = VisionTransformer(
        vit_config("vit_tiny", num_heads=1, qkv_bias="none", norm_eps=1e-6, rope_dtype="bf16")
    ).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for block in model.blocks:  # sharper attention than the 0.02-std init, so position errors would show
            block.attn.qkv.weight.mul_(25.0)
        ours = model.forward_features(x).patch_tokens
        head_dim = model.config.head_dim
        model.rope_embed.forward = lambda h, w: reference_tables(h, w, head_dim)
        ref = model.forward_features(x).patch_tokens
    # Exact: the fp32-cast-once tables of the old bf16 mode gave differences of ~1e-5 even in this tiny model.
    assert torch.equal(ours, ref)

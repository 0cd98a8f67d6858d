"""Known-value tests for the ViT layers: RoPE, attention (SDPA vs explicit), patch embedding, drop path."""

from __future__ import annotations

import math

import pytest
import torch

from MedDINOv3Core.layers import DropPath, PatchEmbed, RopePositionEmbedding, SelfAttention
from MedDINOv3Core.layers.rope import apply_rope, patch_coordinates, rope_periods, rotate_half


def test_rope_periods_match_dinov3_convention():
    periods = rope_periods(64, base=100.0)
    assert periods.shape == (16,)
    expected = torch.tensor([100.0 ** (2 * i / 32) for i in range(16)])
    torch.testing.assert_close(periods, expected)
    assert periods[0] == 1.0


def test_patch_coordinates_are_centres_in_minus_one_one_row_major():
    coords = patch_coordinates(2, 4)
    assert coords.shape == (8, 2)
    # row coordinate: (r + 0.5)/2 mapped to [-1, 1] -> -0.5, 0.5; col: (c + 0.5)/4 -> -0.75, -0.25, 0.25, 0.75
    torch.testing.assert_close(coords[:4, 0], torch.full((4,), -0.5))
    torch.testing.assert_close(coords[4:, 0], torch.full((4,), 0.5))
    torch.testing.assert_close(coords[:4, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_rope_angles_layout():
    rope = RopePositionEmbedding(head_dim=8, base=100.0).eval()
    sin, cos = rope(1, 2)
    assert sin.shape == cos.shape == (2, 8)
    periods = rope_periods(8, 100.0)  # 2 periods
    coords = patch_coordinates(1, 2)
    # layout: [row/p0, row/p1, col/p0, col/p1] tiled twice
    for n in range(2):
        angles = [2 * math.pi * coords[n, a] / periods[i] for a in range(2) for i in range(2)]
        expected = torch.tensor(angles * 2)
        torch.testing.assert_close(torch.atan2(sin[n], cos[n]), torch.atan2(expected.sin(), expected.cos()))


def test_rotate_half_and_rotation_preserve_norm():
    x = torch.arange(8.0)
    torch.testing.assert_close(rotate_half(x), torch.tensor([-4.0, -5, -6, -7, 0, 1, 2, 3]))
    rope = RopePositionEmbedding(head_dim=16).eval()
    sin, cos = rope(3, 5)
    v = torch.randn(2, 15, 16)
    torch.testing.assert_close(apply_rope(v, sin, cos).norm(dim=-1), v.norm(dim=-1))


def test_rope_relative_property():
    """q.k after rotation depends only on the coordinate difference: shifting both positions changes nothing."""
    rope = RopePositionEmbedding(head_dim=16).eval()
    sin, cos = rope(4, 4)
    q, k = torch.randn(16), torch.randn(16)
    rq = apply_rope(q.expand(16, 16), sin, cos)
    rk = apply_rope(k.expand(16, 16), sin, cos)
    # patches (0,0)->(0,1) and (2,2)->(2,3) differ by the same offset
    assert torch.allclose(rq[0] @ rk[1], rq[10] @ rk[11], atol=1e-5)


def test_rope_augmentations_only_in_training():
    rope = RopePositionEmbedding(head_dim=16, shift=1.0, jitter=2.0, rescale=2.0)
    rope.eval()
    a, b = rope(3, 3), rope(3, 3)
    torch.testing.assert_close(a[0], b[0])
    rope.train()
    torch.manual_seed(1)
    c = rope(3, 3)
    assert not torch.allclose(a[0], c[0])


def test_rope_bf16_dtype():
    sin, cos = RopePositionEmbedding(head_dim=16, dtype="bf16").eval()(2, 2)
    assert sin.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown RoPE dtype"):
        RopePositionEmbedding(head_dim=16, dtype="fp8")


def _explicit_attention(attn: SelfAttention, x, rope):
    b, n, d = x.shape
    h, hd = attn.num_heads, attn.head_dim
    bias = attn.qkv.bias * attn.bias_mask if attn.bias_mask is not None else attn.qkv.bias
    qkv = x @ attn.qkv.weight.T + (bias if bias is not None else 0)
    q, k, v = qkv.split(d, dim=-1)
    q, k, v = (t.reshape(b, n, h, hd).transpose(1, 2) for t in (q, k, v))
    sin, cos = rope
    npre = n - sin.shape[0]
    q = torch.cat([q[:, :, :npre], q[:, :, npre:] * cos + rotate_half(q[:, :, npre:]) * sin], dim=2)
    k = torch.cat([k[:, :, :npre], k[:, :, npre:] * cos + rotate_half(k[:, :, npre:]) * sin], dim=2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    return attn.proj(out)


@pytest.mark.parametrize("mode", ["qv", "qkv", "none"])
def test_sdpa_matches_explicit_attention(mode):
    attn = SelfAttention(32, 4, qkv_bias=mode).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
    rope = RopePositionEmbedding(head_dim=8).eval()(3, 4)
    x = torch.randn(2, 5 + 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, rope), _explicit_attention(attn, x, rope), atol=1e-4, rtol=1e-4)


def test_masked_k_bias_has_no_effect():
    attn = SelfAttention(16, 2, qkv_bias="qv").eval()
    x = torch.randn(1, 6, 16)
    rope = RopePositionEmbedding(head_dim=8).eval()(1, 1)
    with torch.no_grad():
        before = attn(x, rope)
        attn.qkv.bias[16:32] = 100.0  # the k part is masked to 0
        torch.testing.assert_close(attn(x, rope), before)


def test_patch_embed_rejects_bad_sizes():
    pe = PatchEmbed(3, 8, 16)
    with pytest.raises(ValueError, match=r"not a multiple of the patch size 16.*32x48"):
        pe(torch.zeros(1, 3, 30, 40))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        pe(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        pe(torch.zeros(3, 32, 32))


def test_drop_path_is_bernoulli_per_sample_and_unbiased():
    dp = DropPath(0.5).train()
    x = torch.ones(4000, 3)
    y = dp(x)
    rows = y[:, 0]
    assert set(rows.unique().tolist()) == {0.0, 2.0}
    assert (y == y[:, :1]).all()  # whole samples dropped
    assert abs(rows.mean().item() - 1.0) < 0.08
    assert torch.equal(dp.eval()(x), x)
    with pytest.raises(ValueError, match="drop path probability"):
        DropPath(1.0)

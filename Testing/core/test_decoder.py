"""PrimusDecoder: shapes, channel schedule, initialisation, parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from MedDINOv3Core.layers.norm import LayerNorm2d
from MedDINOv3Core.models.decoder import PrimusDecoder


def test_shapes_and_channel_schedule():
    dec = PrimusDecoder(256, n_classes=5, n_stages=4)
    x = torch.randn(2, 256, 3, 4)
    y = dec(x)
    assert y.shape == (2, 5, 48, 64)
    assert dec.upsample_factor == 16
    ups = [m for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in ups] == [(256, 128), (128, 64), (64, 32), (32, 16)]
    assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in ups)
    norms = [m for m in dec.modules() if isinstance(m, LayerNorm2d)]
    assert len(norms) == 4 and all(m.eps == 1e-6 for m in norms)
    assert dec.head.kernel_size == (1, 1) and dec.head.in_channels == 16


def test_vit_b_decoder_size_matches_reference():
    # MedDINOv3 paper (arXiv:2509.02379) decoder: 3072 -> 1536 -> 768 -> 384 -> 192 -> n_classes, "~25M decoder params".
    dec = PrimusDecoder(3072, n_classes=16)
    expected = sum(a * b * 4 + b + 2 * b for a, b in [(3072, 1536), (1536, 768), (768, 384), (384, 192)])
    expected += 192 * 16 + 16
    assert sum(p.numel() for p in dec.parameters()) == expected
    assert 24e6 < expected < 27e6


def test_kaiming_init_and_zero_bias():
    torch.manual_seed(0)
    dec = PrimusDecoder(512, n_classes=3)
    conv = dec.stages[0].up
    assert torch.all(conv.bias == 0)
    # kaiming_normal_(a=0.01), fan_in mode: std = gain / sqrt(fan_in); for ConvTranspose2d fan_in = weight.size(1)*k*k
    fan_in = conv.weight.shape[1] * 4
    std = (2.0 / (1 + 0.01**2)) ** 0.5 / fan_in**0.5
    assert conv.weight.std().item() == pytest.approx(std, rel=0.05)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="cannot be halved"):
        PrimusDecoder(100, n_classes=2, n_stages=4)
    with pytest.raises(ValueError, match="at least one output class"):
        PrimusDecoder(64, n_classes=0)
    dec = PrimusDecoder(64, n_classes=2)
    with pytest.raises(ValueError, match=r"\(B, 64, h, w\)"):
        dec(torch.randn(1, 32, 2, 2))


def test_gradients_flow_to_every_parameter():
    dec = PrimusDecoder(64, n_classes=3)
    dec(torch.randn(2, 64, 2, 2)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dec.parameters())


def _conv_reference(dec: PrimusDecoder, x: torch.Tensor) -> torch.Tensor:
    """The decoder as nn.ConvTranspose2d / LayerNorm2d / nn.Conv2d compute it, channels-first."""
    for stage in dec.stages:
        x = stage.act(stage.norm(stage.up(x)))
    return dec.head(x)


def _randomise(dec: nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)


def test_gemm_decoder_equals_transposed_convolutions_with_random_weights():
    dec = PrimusDecoder(64, n_classes=5, n_stages=3).eval()
    _randomise(dec)
    x = torch.randn(2, 64, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(dec(x), _conv_reference(dec, x), rtol=1e-4, atol=1e-4)
        stage = dec.stages[0]
        torch.testing.assert_close(stage(x), stage.act(stage.norm(stage.up(x))), rtol=1e-4, atol=1e-4)


def test_gemm_decoder_gradients_match_and_cache_follows_weight_changes():
    dec = PrimusDecoder(32, n_classes=3, n_stages=2)
    _randomise(dec)
    x = torch.randn(1, 32, 2, 3)
    dec(x).square().sum().backward()
    ours = [p.grad.clone() for p in dec.parameters()]
    dec.zero_grad()
    _conv_reference(dec, x).square().sum().backward()
    for a, b in zip(ours, [p.grad for p in dec.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        before = dec(x)
    other = PrimusDecoder(32, n_classes=3, n_stages=2)
    dec.load_state_dict(other.state_dict())  # same keys as the convolution modules; the packed cache is refreshed
    assert set(dec.state_dict()) == set(other.state_dict())
    with torch.inference_mode():
        after = dec(x)
        torch.testing.assert_close(after, _conv_reference(other, x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, after)


def test_decoding_in_token_chunks_changes_nothing():
    """Tokens decode independently: any chunking of the token rows gives the same logits (only the memory changes)."""
    dec = PrimusDecoder(32, n_classes=3, n_stages=2)
    _randomise(dec)
    tokens = torch.randn(13, 32)
    with torch.inference_mode():
        whole = dec._block_logits(tokens, chunk=1000)
        for chunk in (1, 4, 12):
            torch.testing.assert_close(dec._block_logits(tokens, chunk=chunk), whole, rtol=1e-5, atol=1e-6)

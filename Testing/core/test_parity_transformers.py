"""Numerical parity with an independent implementation: Hugging Face transformers' DINOv3ViTModel.

Random transformers weights are converted through our filter (filter_transformers via convert_checkpoint); the
class token, the patch tokens and the intermediate layers [2, 5, 8, 11] must agree within 1e-4 in fp32.
"""

from __future__ import annotations

import pytest
import torch

from MedDINOv3Core.convert import convert_checkpoint
from MedDINOv3Core.models.vit import VisionTransformer

transformers = pytest.importorskip("transformers")


def _random_hf_model(qv_bias: bool, dim=768, depth=12, heads=12):
    config = transformers.DINOv3ViTConfig(
        hidden_size=dim,
        intermediate_size=4 * dim,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_register_tokens=4,
        query_bias=qv_bias,
        key_bias=False,
        value_bias=qv_bias,
        layerscale_value=1e-5,
        layer_norm_eps=1e-5,
    )
    model = transformers.DINOv3ViTModel(config).eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # non-trivial values everywhere (biases, norms, LayerScale, tokens), scaled to keep activations sane
            scale = 0.03 if p.ndim > 1 else 0.3
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if name.endswith("norm1.weight") else 0.0))
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["qv-bias", "no-bias"])
def models(request):
    hf = _random_hf_model(request.param)
    state_dict, config, fmt = convert_checkpoint(hf.state_dict())
    assert fmt == "transformers"
    assert config.qkv_bias == ("qv" if request.param else "none")
    ours = VisionTransformer(config).eval()
    ours.load_state_dict(state_dict)
    return hf, ours


@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_parity_with_transformers(models, size):
    hf, ours = models
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        feats = ours.forward_features(x)
        inter = ours.get_intermediate_layers(x, [2, 5, 8, 11], reshape=True, norm=True)
    assert feats.patch_tokens.abs().mean() > 0.1  # outputs are not trivially small
    torch.testing.assert_close(feats.cls_token, ref.pooler_output, atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.patch_tokens, ref.last_hidden_state[:, 5:], atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.registers, ref.last_hidden_state[:, 1:5], atol=1e-4, rtol=0)
    h, w = size[0] // 16, size[1] // 16
    for index, ours_map in zip([2, 5, 8, 11], inter):
        # transformers' hidden_states[i + 1] is the output of block i (0-based); the final norm is shared
        ref_tokens = hf.norm(ref.hidden_states[index + 1])[:, 5:]
        ref_map = ref_tokens.transpose(1, 2).reshape(2, -1, h, w)
        torch.testing.assert_close(ours_map, ref_map, atol=1e-4, rtol=0)


def test_parity_mask_token_path(models):
    hf, ours = models
    with torch.no_grad():
        hf.embeddings.mask_token.normal_()
        ours.mask_token.copy_(hf.embeddings.mask_token.reshape(1, -1))
    x = torch.randn(1, 3, 64, 64)
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, [1, 5, 6]] = True
    with torch.no_grad():
        ref = hf(x, bool_masked_pos=masks).last_hidden_state
        feats = ours.forward_features(x, masks)
    torch.testing.assert_close(feats.patch_tokens, ref[:, 5:], atol=1e-4, rtol=0)

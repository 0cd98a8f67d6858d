"""The DINOv3 ViT: presets, shapes, intermediate layers, mask token, config strictness."""

from __future__ import annotations

import pytest
import torch

from MedDINOv3Core.models.vit import PRESETS, VisionTransformer, ViTConfig, build_vit, vit_config


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_vit_base_parameter_count_matches_timm():
    # timm vit_base_patch16_dinov3 (no qkv bias, no mask token): 85,641,216; ours adds the (1, 768) mask token.
    model = VisionTransformer(vit_config("vit_base", qkv_bias="none"))
    assert n_params(model) == 85_641_216 + 768


@pytest.mark.parametrize(
    "name,dim,depth,heads,mlp",
    [("vit_small", 384, 12, 6, 1536), ("vit_base", 768, 12, 12, 3072), ("vit_large", 1024, 24, 16, 4096)],
)
def test_presets(name, dim, depth, heads, mlp):
    c = vit_config(name)
    assert (c.embed_dim, c.depth, c.num_heads, c.mlp_hidden_dim, c.head_dim) == (dim, depth, heads, mlp, 64)
    assert c.n_storage_tokens == 4 and c.patch_size == 16
    assert vit_config(name.replace("vit_", "vit-") + "/16") == c


def test_default_intermediate_indices():
    assert vit_config("vit_base").default_intermediate_indices() == (2, 5, 8, 11)
    assert vit_config("vit_large").default_intermediate_indices() == (5, 11, 17, 23)
    assert vit_config("vit_tiny").default_intermediate_indices() == (0, 1, 2, 3)


def test_forward_features_structure(tiny_vit_config):
    model = VisionTransformer(tiny_vit_config).eval()
    x = torch.randn(2, 3, 32, 48)
    f = model.forward_features(x)
    assert f.cls_token.shape == (2, 64)
    assert f.registers.shape == (2, 4, 64)
    assert f.patch_tokens.shape == (2, 6, 64)
    assert f.prenorm.shape == (2, 11, 64)
    assert f.grid == (2, 3)
    torch.testing.assert_close(model.norm(f.prenorm)[:, 5:], f.patch_tokens)
    torch.testing.assert_close(model(x), f.cls_token)


def test_intermediate_layers_shared_norm_and_reshape(tiny_vit_config):
    model = VisionTransformer(tiny_vit_config).eval()
    x = torch.randn(1, 3, 32, 48)
    maps = model.get_intermediate_layers(x, [1, 3])
    assert [m.shape for m in maps] == [(1, 64, 2, 3)] * 2
    last = model.forward_features(x).patch_tokens  # block 3 is the last: equals the final normed output
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), last)
    raw = model.get_intermediate_layers(x, [3], reshape=False, norm=False)[0]
    torch.testing.assert_close(raw, model.forward_features(x).prenorm[:, 5:])
    assert model.get_intermediate_layers(x, [-1], reshape=False)[0].shape == (1, 6, 64)
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(x, [4])


def test_mask_token_replaces_masked_patches(tiny_vit_config):
    model = VisionTransformer(tiny_vit_config).eval()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 1] = True
    tokens, _ = model.prepare_tokens(x, masks)
    torch.testing.assert_close(tokens[0, 5 + 1], model.mask_token[0])
    unmasked, _ = model.prepare_tokens(x)
    torch.testing.assert_close(tokens[1], unmasked[1])
    torch.testing.assert_close(tokens[0, 5 + 2], unmasked[0, 5 + 2])
    # an all-false mask is a no-op on the output; a masked patch changes it
    f0 = model.forward_features(x, masks=torch.zeros(2, 2, 2, dtype=torch.bool)).cls_token
    torch.testing.assert_close(f0, model(x))
    assert not torch.allclose(model(x, masks)[0], f0[0])
    with pytest.raises(ValueError, match="masks must be boolean"):
        model(x, masks.float())


def test_any_resolution_without_interpolation(tiny_vit_config):
    model = VisionTransformer(tiny_vit_config).eval()
    for h, w in [(16, 16), (48, 32), (64, 112)]:
        assert model.forward_features(torch.randn(1, 3, h, w)).grid == (h // 16, w // 16)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 40, 32))


def test_train_mode_drop_path_and_rope_augmentation_are_random(tiny_vit_config):
    model = VisionTransformer(tiny_vit_config.replace(drop_path_rate=0.5)).train()
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_config_round_trip_and_strictness():
    c = vit_config("vit_small", qkv_bias="none", norm_eps=1e-6, rope_dtype="bf16")
    assert ViTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['embed'\]"):
        ViTConfig.from_dict({"embed": 3})
    with pytest.raises(ValueError, match="qkv_bias must be one of"):
        ViTConfig(qkv_bias="k")
    with pytest.raises(ValueError, match="not divisible"):
        ViTConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="unknown ViT preset"):
        vit_config("vit_giant")
    assert set(PRESETS) == {"vit_tiny", "vit_small", "vit_base", "vit_large"}
    assert isinstance(build_vit("vit_tiny", depth=2), VisionTransformer)

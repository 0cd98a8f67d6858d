"""Upstream checkpoint filters (one per format, MedDINOv3Core.convert) with their bad inputs."""

from __future__ import annotations

import pytest
import torch

from MedDINOv3Core.convert import (
    CheckpointFormatError,
    convert_checkpoint,
    detect_format,
    filter_dinov3,
    filter_meddinov3_teacher,
    filter_timm,
    filter_transformers,
    read_checkpoint,
)
from MedDINOv3Core.models.vit import VisionTransformer, vit_config


@pytest.fixture
def tiny_model():
    torch.manual_seed(3)
    model = VisionTransformer(vit_config("vit_tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


# ------------------------------------------------------------------ upstream namings written independently here


def to_transformers(sd, prefix="model.layer."):
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"].reshape(1, 1, -1),
        "embeddings.register_tokens": sd["storage_tokens"],
        "embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, t = f"blocks.{i}.", f"{prefix}{i}."
        q, k, v = sd[b + "attn.qkv.weight"].chunk(3)
        out.update(
            {t + "attention.q_proj.weight": q, t + "attention.k_proj.weight": k, t + "attention.v_proj.weight": v}
        )
        if b + "attn.qkv.bias" in sd:
            qb, _, vb = sd[b + "attn.qkv.bias"].chunk(3)
            out.update({t + "attention.q_proj.bias": qb, t + "attention.v_proj.bias": vb})
        pairs = {
            "attn.proj": "attention.o_proj",
            "mlp.fc1": "mlp.up_proj",
            "mlp.fc2": "mlp.down_proj",
            "norm1": "norm1",
            "norm2": "norm2",
        }
        for ours, theirs in pairs.items():
            out[t + theirs + ".weight"] = sd[b + ours + ".weight"]
            out[t + theirs + ".bias"] = sd[b + ours + ".bias"]
        out[t + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[t + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return out


def to_timm(sd):
    out = {}
    for key, value in sd.items():
        if key.endswith((".periods", ".bias_mask")) or key == "mask_token":
            continue
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")] = q
            out[key.replace("qkv.bias", "v_bias")] = v
            continue
        key = key.replace("storage_tokens", "reg_token").replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
        out[key] = value
    out["head.weight"] = torch.zeros(10, 64)  # a classifier head timm may carry
    return out


def to_teacher(sd):
    teacher = {f"backbone.{k}": v for k, v in sd.items() if not k.endswith(("attn.qkv.bias", "bias_mask"))}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(4, 4)
    teacher["ibot_head.last_layer.weight"] = torch.zeros(4, 4)
    return {"teacher": teacher, "iteration": 100}


def _same_output(model_a, sd_b, config_b, x):
    b = VisionTransformer(config_b).eval()
    b.load_state_dict(sd_b)
    with torch.no_grad():
        torch.testing.assert_close(model_a.forward_features(x).patch_tokens, b.forward_features(x).patch_tokens)


def test_filter_dinov3_is_identity_on_our_names(tiny_model):
    sd = tiny_model.state_dict()
    assert detect_format(sd) == "dinov3"
    out, config, fmt = convert_checkpoint(sd)
    assert fmt == "dinov3" and config == tiny_model.config
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_filter_dinov3_adds_bias_mask_and_drops_local_cls_norm(tiny_model):
    sd = {k: v for k, v in tiny_model.state_dict().items() if not k.endswith("bias_mask")}
    sd["blocks.0.attn.qkv.bias"][64:128] = 0
    sd["local_cls_norm.weight"] = torch.ones(64)
    out = filter_dinov3(sd)
    assert "blocks.0.attn.bias_mask" in out and "local_cls_norm.weight" not in out
    assert out["blocks.0.attn.bias_mask"].tolist() == [1.0] * 64 + [0.0] * 64 + [1.0] * 64


@pytest.mark.parametrize("prefix", ["layer.", "model.layer."], ids=["transformers-4.x", "transformers-5.x"])
def test_filter_transformers(tiny_model, prefix):
    hf = to_transformers(tiny_model.state_dict(), prefix)
    assert detect_format(hf) == "transformers"
    sd = filter_transformers(hf)
    assert torch.equal(sd["blocks.1.attn.qkv.weight"], tiny_model.state_dict()["blocks.1.attn.qkv.weight"])
    assert sd["mask_token"].shape == (1, 64)
    out, config, _ = convert_checkpoint(hf, head_dim=32)
    assert config.qkv_bias == "qv" and config.num_heads == 2
    _same_output(tiny_model, out, config, torch.randn(1, 3, 32, 48))


def test_filter_transformers_without_bias():
    model = VisionTransformer(vit_config("vit_tiny", qkv_bias="none")).eval()
    out, config, _ = convert_checkpoint(to_transformers(model.state_dict()), head_dim=32)
    assert config.qkv_bias == "none" and "blocks.0.attn.qkv.bias" not in out
    _same_output(model, out, config, torch.randn(1, 3, 32, 32))


def test_filter_timm(tiny_model):
    timm_sd = to_timm(tiny_model.state_dict())
    assert detect_format(timm_sd) == "timm"
    sd = filter_timm(timm_sd)
    assert "head.weight" not in sd and "storage_tokens" in sd and "blocks.0.ls1.gamma" in sd
    out, config, _ = convert_checkpoint(timm_sd, head_dim=32)
    with torch.no_grad():
        tiny_model.mask_token.zero_()  # timm drops the mask token: it comes back as zeros
    _same_output(tiny_model, out, config, torch.randn(1, 3, 32, 32))


def test_filter_meddinov3_teacher(tmp_path):
    model = VisionTransformer(vit_config("vit_tiny", qkv_bias="none", norm_eps=1e-6, rope_dtype="bf16")).eval()
    ckpt = to_teacher(model.state_dict())
    path = tmp_path / "model.pth"
    torch.save(ckpt, path)
    loaded = read_checkpoint(path)
    assert detect_format(loaded) == "meddinov3_teacher"
    sd = filter_meddinov3_teacher(loaded)
    assert not any(k.startswith(("dino_head", "ibot_head", "backbone.")) for k in sd)
    out, config, fmt = convert_checkpoint(loaded, head_dim=32)
    # MedDINOv3 released weights: no qkv bias, eps 1e-6, bf16 RoPE (the parity knobs of MedDINOv3Core/convert.py)
    assert (config.qkv_bias, config.norm_eps, config.rope_dtype) == ("none", 1e-6, "bf16")
    _same_output(model, out, config, torch.randn(1, 3, 32, 32))


def test_released_periods_are_loaded_not_recomputed(tiny_model):
    sd = tiny_model.state_dict()
    sd["rope_embed.periods"] = sd["rope_embed.periods"].to(torch.bfloat16).float()  # bf16-rounded, as released
    out, config, _ = convert_checkpoint(sd)
    model = VisionTransformer(config)
    model.load_state_dict(out)
    assert torch.equal(model.rope_embed.periods, sd["rope_embed.periods"])


def test_format_mismatch_names_format_and_keys(tiny_model):
    sd = tiny_model.state_dict()
    del sd["blocks.2.mlp.fc1.weight"]
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointFormatError,
        match=r"detected format 'dinov3'.*missing keys \[blocks.2.mlp.fc1.weight\]"
        r".*unexpected keys \[blocks.0.extra.weight\]",
    ):
        convert_checkpoint(sd)
    with pytest.raises(CheckpointFormatError, match="unrecognised checkpoint"):
        detect_format({"fc.weight": torch.zeros(1)})
    with pytest.raises(CheckpointFormatError, match="unexpected keys"):
        filter_transformers({"embeddings.cls_token": torch.zeros(1, 1, 4), "pooler.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        convert_checkpoint(sd, fmt="onnx")


class NotATensor:
    pass


def test_read_checkpoint_refuses_pickled_code_and_bad_files(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"obj": NotATensor()}, evil)
    with pytest.raises(ValueError, match="pickled code are refused"):
        read_checkpoint(evil)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        read_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        read_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        read_checkpoint(junk)

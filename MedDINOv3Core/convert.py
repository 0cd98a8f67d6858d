"""Upstream checkpoint import: pure filter functions, one per format, mapping an upstream state dict to ours.

Supported formats: the DINOv3 official ``.pth`` (flat names, also this project's own), the MedDINOv3 released teacher
checkpoint (``{"teacher": {"backbone.*", ...}}``, arXiv:2509.02379), Hugging Face transformers ``DINOv3ViTModel``
and timm ``Eva`` DINOv3. The format is detected from the keys (``detect_format``), the architecture is inferred from
the weights (``infer_vit_config``) and ``convert_checkpoint`` checks that both fit. Nothing is ever unpickled:
safetensors, or ``torch.load(weights_only=True)``.

A converted backbone is written as a model card by ``MedDINOv3Core.weights.save_model_card``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from MedDINOv3Core.layers.rope import rope_periods
from MedDINOv3Core.models.vit import VisionTransformer, ViTConfig
from MedDINOv3Core.safe_load import load_weights_only


class CheckpointFormatError(ValueError):
    """A checkpoint whose keys do not match the format detected for it."""


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """load_state_dict(strict=True) with an error that names the source and the key differences.

    ``assign=True``: the module takes the state dict's tensors (cast to its own dtypes) instead of copying them, so
    the weights are in memory once (for a state dict that nothing else modifies, e.g. one read from a file)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointFormatError(
            f"weights from {source} do not fit the model: missing keys {_short(missing)}, unexpected keys "
            f"{_short(unexpected)}, shape mismatches {_short(shapes)}"
        )
    if assign:
        state_dict = {k: _own(v.to(own[k].dtype)) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t`` when it is the whole of its storage, else a copy (a parameter must not keep a larger buffer alive, nor
    share it with other parameters)."""
    whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    return t if whole else t.clone()


def _short(items: list[str], n: int = 8) -> str:
    return (
        "[]"
        if not items
        else "[" + ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "") + "]"
    )


# ----------------------------------------------------------------------------------------------- upstream formats


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file without unpickling code: .safetensors, or a torch file with weights_only=True."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint file {p} is empty; download it again")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    return load_weights_only(p, "cpu", "weights-only torch checkpoint")


def detect_format(checkpoint: Mapping[str, Any]) -> str:
    """Name the upstream format of a checkpoint from its keys.

    Returns one of "meddinov3_teacher" (``{"teacher": {"backbone.*", ...}}``), "transformers" (Hugging Face
    DINOv3ViTModel, 4.x or 5.x names), "timm" (Eva), "dinov3" (official flat names, also this project's own).
    """
    keys = set(checkpoint)
    if "teacher" in keys and isinstance(checkpoint["teacher"], Mapping):
        return "meddinov3_teacher"
    if any(k.startswith("embeddings.") for k in keys):
        return "transformers"
    if "reg_token" in keys or any(k.endswith(".gamma_1") for k in keys):
        return "timm"
    if "storage_tokens" in keys or "cls_token" in keys:
        return "dinov3"
    raise CheckpointFormatError(
        "unrecognised checkpoint: expected DINOv3 official keys (cls_token, storage_tokens, blocks.N.*), a MedDINOv3 "
        "teacher checkpoint ({'teacher': {'backbone.*'}}), Hugging Face transformers DINOv3ViTModel keys "
        f"(embeddings.*) or timm Eva keys (reg_token, gamma_1); found keys like {_short(sorted(keys), 5)}"
    )


def _tensors(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _qkv_bias_mask(dim: int) -> torch.Tensor:
    mask = torch.ones(3 * dim)
    mask[dim : 2 * dim] = 0.0
    return mask


def filter_dinov3(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv3 official flat state dict -> ours (same names). Adds ``bias_mask`` when a qkv bias has a zero k part
    but no mask (as in checkpoints saved without buffers); drops the training-only ``local_cls_norm``."""
    out = {k: v for k, v in _tensors(state_dict).items() if not k.startswith("local_cls_norm")}
    for key in [k for k in out if k.endswith("attn.qkv.bias")]:
        mask_key = key.replace("qkv.bias", "bias_mask")
        dim = out[key].shape[0] // 3
        if mask_key not in out and not out[key][dim : 2 * dim].any():
            out[mask_key] = _qkv_bias_mask(dim)
    return out


def filter_meddinov3_teacher(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """MedDINOv3 released ``model.pth``: ``{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}`` -> ours.

    Strips ``backbone.``; the DINO/iBOT projection heads are dropped (they are pretraining-only).
    """
    teacher = checkpoint["teacher"]
    out = {k[len("backbone.") :]: v for k, v in _tensors(teacher).items() if k.startswith("backbone.")}
    if not out:
        raise CheckpointFormatError("MedDINOv3 teacher checkpoint without any 'backbone.*' key")
    return filter_dinov3(out)


_HF_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.up_proj.weight": "mlp.fc1.weight",
    "mlp.up_proj.bias": "mlp.fc1.bias",
    "mlp.down_proj.weight": "mlp.fc2.weight",
    "mlp.down_proj.bias": "mlp.fc2.bias",
}


def filter_transformers(state_dict: Mapping[str, torch.Tensor], rope_base: float = 100.0) -> dict[str, torch.Tensor]:
    """Hugging Face transformers ``DINOv3ViTModel`` (4.x ``layer.N.`` or 5.x ``model.layer.N.``) -> ours.

    q/k/v projections are fused into ``attn.qkv``; a missing k bias becomes zeros plus ``bias_mask``. RoPE periods
    are not stored by transformers: they are recomputed in fp32 (``base ** (4 i / head_dim)``), which is what
    transformers itself uses.
    """
    sd = _tensors(state_dict)
    out: dict[str, torch.Tensor] = {}
    direct = {
        "embeddings.cls_token": "cls_token",
        "embeddings.register_tokens": "storage_tokens",
        "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
        "norm.weight": "norm.weight",
        "norm.bias": "norm.bias",
    }
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        if key in direct:
            out[direct[key]] = value
        elif key == "embeddings.mask_token":
            out["mask_token"] = value.reshape(1, -1)
        elif key.startswith("rope_embeddings."):
            continue  # non-persistent inv_freq when present
        elif m := _HF_LAYER.match(key):
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointFormatError(f"transformers DINOv3 checkpoint: unexpected keys {_short(sorted(unknown))}")
    for i, parts in sorted(blocks.items()):
        p = f"blocks.{i}."
        try:
            out[p + "attn.qkv.weight"] = torch.cat([parts.pop(f"attention.{n}_proj.weight") for n in "qkv"], dim=0)
        except KeyError as exc:
            raise CheckpointFormatError(f"transformers DINOv3 checkpoint: block {i} lacks {exc}") from exc
        biases = {n: parts.pop(f"attention.{n}_proj.bias", None) for n in "qkv"}
        if biases["q"] is not None or biases["v"] is not None:
            dim = out[p + "attn.qkv.weight"].shape[1]
            filled = [b if b is not None else torch.zeros(dim) for b in biases.values()]
            out[p + "attn.qkv.bias"] = torch.cat(filled)
            if biases["k"] is None:
                out[p + "attn.bias_mask"] = _qkv_bias_mask(dim)
        for name, value in parts.items():
            if name not in _HF_RENAMES:
                raise CheckpointFormatError(f"transformers DINOv3 checkpoint: unexpected key in block {i}: {name}")
            out[p + _HF_RENAMES[name]] = value
    out.setdefault("mask_token", torch.zeros(1, out["cls_token"].shape[-1]))
    return out


def filter_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``Eva`` DINOv3 (``vit_*_patch16_dinov3*``) -> ours.

    ``reg_token -> storage_tokens``, ``gamma_1/2 -> ls1/ls2.gamma``; separate ``q_bias``/``v_bias`` are fused into
    ``attn.qkv.bias`` with a zero k part and ``bias_mask``. timm drops the periods (recomputed in fp32 here) and the
    mask token (zeros). A classifier ``head.*`` is dropped.
    """
    out: dict[str, torch.Tensor] = {}
    sd = _tensors(state_dict)
    for key, value in sd.items():
        if key.startswith(("head.", "fc_norm.")) or key.endswith(("attn.q_bias", "attn.k_bias", "attn.v_bias")):
            continue
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[key] = value
    for key in [k for k in sd if k.endswith("attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        q, v = sd[key], sd[prefix + "v_bias"]
        k = sd.get(prefix + "k_bias", torch.zeros_like(q))
        out[prefix + "qkv.bias"] = torch.cat([q, k, v])
        if not k.any():
            out[prefix + "bias_mask"] = _qkv_bias_mask(q.shape[0])
    out.setdefault("mask_token", torch.zeros(1, out["cls_token"].shape[-1]))
    return out


FILTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]] = {
    "dinov3": filter_dinov3,
    "meddinov3_teacher": filter_meddinov3_teacher,
    "transformers": filter_transformers,
    "timm": filter_timm,
}

# Parity knobs that cannot be read from the weights, by upstream format (see ViTConfig in
# MedDINOv3Core/architecture.py).
FORMAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "dinov3": {"norm_eps": 1e-5, "rope_dtype": "fp32"},
    "meddinov3_teacher": {"norm_eps": 1e-6, "rope_dtype": "bf16"},
    "transformers": {"norm_eps": 1e-5, "rope_dtype": "fp32"},
    "timm": {"norm_eps": 1e-5, "rope_dtype": "fp32"},
}


def infer_vit_config(
    state_dict: Mapping[str, torch.Tensor], head_dim: int | None = None, **overrides: Any
) -> ViTConfig:
    """The ViTConfig that fits a state dict in our naming.

    The number of heads is not visible in the weights, but the head dimension is: the RoPE ``periods`` buffer holds
    head_dim / 4 values. Without periods (transformers, timm) the DINOv3 head dimension of 64 is assumed unless
    ``head_dim`` says otherwise. Norm eps and RoPE dtype come from ``overrides`` (see FORMAT_DEFAULTS).
    """
    if head_dim is None:
        periods = state_dict.get("rope_embed.periods")
        head_dim = 4 * periods.numel() if periods is not None else 64
    try:
        dim = state_dict["cls_token"].shape[-1]
        patch = state_dict["patch_embed.proj.weight"].shape[-1]
        in_chans = state_dict["patch_embed.proj.weight"].shape[1]
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointFormatError(f"cannot infer the ViT architecture: missing {exc}") from exc
    n_storage = state_dict["storage_tokens"].shape[1] if "storage_tokens" in state_dict else 0
    if "blocks.0.attn.qkv.bias" not in state_dict:
        qkv_bias = "none"
    elif "blocks.0.attn.bias_mask" in state_dict:
        qkv_bias = "qv"
    else:
        qkv_bias = "qkv"
    config = dict(
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // head_dim),
        mlp_ratio=hidden / dim,
        in_chans=in_chans,
        n_storage_tokens=n_storage,
        qkv_bias=qkv_bias,
        proj_bias="blocks.0.attn.proj.bias" in state_dict,
        ffn_bias="blocks.0.mlp.fc1.bias" in state_dict,
    )
    config.update(overrides)
    return ViTConfig(**config)


def convert_checkpoint(
    checkpoint: Mapping[str, Any], fmt: str | None = None, **config_overrides: Any
) -> tuple[dict[str, torch.Tensor], ViTConfig, str]:
    """Detect (or take) the format, filter to our names, infer the architecture and check that they fit.

    Returns (state_dict, ViTConfig, format). Periods missing from the checkpoint are filled in for the inferred
    config. A mismatch raises CheckpointFormatError naming the format and the missing/unexpected keys.
    """
    fmt = fmt or detect_format(checkpoint)
    if fmt not in FILTERS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {sorted(FILTERS)}")
    state_dict = FILTERS[fmt](checkpoint)
    config = infer_vit_config(state_dict, **{**FORMAT_DEFAULTS[fmt], **config_overrides})
    state_dict.setdefault("rope_embed.periods", rope_periods(config.head_dim, config.rope_base))
    state_dict.setdefault("mask_token", torch.zeros(1, config.embed_dim))
    model = VisionTransformer(config)
    try:
        load_state_dict_strict(model, state_dict, source=f"a {fmt} checkpoint")
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"detected format {fmt!r}, but {exc}") from None
    return state_dict, config, fmt


__all__ = [
    "FILTERS",
    "FORMAT_DEFAULTS",
    "CheckpointFormatError",
    "convert_checkpoint",
    "detect_format",
    "filter_dinov3",
    "filter_meddinov3_teacher",
    "filter_timm",
    "filter_transformers",
    "infer_vit_config",
    "load_state_dict_strict",
    "read_checkpoint",
]

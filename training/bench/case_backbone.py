"""Case ``backbone``: our DINOv3 ViT forward vs transformers' DINOv3ViTModel (issue 3), with the analytic FLOPs and
the fraction of the fp32 matmul peak measured in the same process."""

from __future__ import annotations

import logging

import torch

from training.bench import BenchSettings, Case, Prepared
from training.bench.common import bench_device, matmul_peak_gflops, size, vit_config

log = logging.getLogger(__name__)


def transformers_model(config):
    """transformers' DINOv3ViTModel of the same size (random weights, SDPA attention)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    hf_config = DINOv3ViTConfig(
        hidden_size=config.embed_dim,
        intermediate_size=config.mlp_hidden_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        num_register_tokens=config.n_storage_tokens,
        patch_size=config.patch_size,
        query_bias=config.qkv_bias != "none",
        value_bias=config.qkv_bias != "none",
        key_bias=False,
        layer_norm_eps=config.norm_eps,
        attn_implementation="sdpa",
    )
    return DINOv3ViTModel(hf_config).eval()


def _setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.device import autocast
    from MedDINOv3Core.models.vit import VisionTransformer

    config = vit_config(settings)
    dev = bench_device(settings)
    ours = VisionTransformer(config).eval().to(dev)
    s = size(settings)
    x = torch.randn(1, 3, s, s, device=dev)

    def run(fn):
        def call():
            with torch.inference_mode(), autocast(dev):  # bf16 on GPUs, fp32 on the CPU
                return fn(x)

        return call

    variants = {"ours": run(ours.forward_features)}
    try:
        reference = transformers_model(config).to(dev)
        variants["transformers"] = run(lambda t: reference(pixel_values=t))
    except ImportError:
        log.warning("transformers is not installed: timing ours only")
    peak = matmul_peak_gflops(256 if settings.toy else 2048 if dev.type == "cpu" else 8192, device=dev)
    flops = config.forward_flops(s, s)

    def metrics(outputs, medians):
        ours_gflops = flops / medians["ours"] / 1e9
        return {
            "gflop_per_forward": round(flops / 1e9, 2),
            "ours_gflops": round(ours_gflops, 1),
            "matmul_peak_gflops": round(peak, 1),
            "fraction_of_matmul_peak": round(ours_gflops / peak, 3),
        }

    return Prepared(
        variants,
        reference="transformers" if "transformers" in variants else "ours",
        settings={"input": [1, 3, s, s], "preset_used": "vit_tiny" if settings.toy else settings.preset},
        warmup=lambda: [fn() for fn in variants.values()],
        metrics=metrics,
    )


CASES = (Case("backbone", "ViT forward pass: ours vs Hugging Face transformers, FLOPs and matmul peak", _setup),)

"""Cases ``predict`` (predict_volume plain vs ``--fast``, DSC between the two) and ``decoder`` (the Primus decoder as
GEMMs vs the reference transposed convolutions on the same weights), issue 19."""

from __future__ import annotations

import torch

from training.bench import BenchSettings, Case, Prepared
from training.bench.common import dice_per_label, phantom_ct, segmentation_model, size

ABLATIONS = {
    "fast-no-crop": {"crop_body": False},
    "fast-no-body-tokens": {"body_tokens": False},
    "fast-no-subsample": {"z_spacing": 0.0},
    "fast-with-int8": {"quantize": True},
    "crop-only": {"z_spacing": 0.0, "body_tokens": False},
    "crop-body-tokens-only": {"z_spacing": 0.0},
    "subsample-only": {"crop_body": False},
    "int8-only": {"crop_body": False, "z_spacing": 0.0, "quantize": True},
}


def _predict_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.data.volume import Volume
    from MedDINOv3Core.fast import FastConfig
    from MedDINOv3Core.inference import predict_volume

    model, card = segmentation_model(settings)
    phantom = phantom_ct(settings)
    ct = phantom.ct
    bs = settings.batch_size

    def run(fast):
        def call():
            return predict_volume(model, card, ct, device=settings.device, batch_size=bs, fast=fast).labelmap.array

        return call

    variants = {"plain": run(None), "fast": run(FastConfig())}
    if settings.ablations:
        variants.update({name: run(FastConfig(**changes)) for name, changes in ABLATIONS.items()})
    small = Volume(ct.array[:2].copy(), ct.spacing, ct.origin, ct.direction)

    def warmup():
        predict_volume(model, card, small, device=settings.device, batch_size=bs)
        predict_volume(model, card, small, device=settings.device, batch_size=bs, fast=FastConfig())

    def metrics(outputs, medians):
        plain = outputs["plain"]
        out = {}
        for name, labels in outputs.items():
            if name != "plain":
                dsc = dice_per_label(plain, labels)
                out[f"dsc_{name}_vs_plain"] = dsc
                out[f"min_dsc_{name}_vs_plain"] = min(dsc.values()) if dsc else None
        for name in ("plain", "fast"):
            out[f"dsc_{name}_vs_phantom_truth"] = dice_per_label(phantom.labels.array, outputs[name])
        return out

    return Prepared(
        variants,
        reference="plain",
        settings={
            "volume": list(ct.shape),
            "spacing_xyz_mm": list(ct.spacing),
            "model": card.name,
            "trained": bool(settings.model),
            "fast": FastConfig().to_dict(),
        },
        warmup=warmup,
        metrics=metrics,
        per_item=ct.shape[0],
    )


def _decoder_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.models.segmenter import Segmenter, SegmenterConfig
    from training.bench.common import vit_config

    config = vit_config(settings)
    decoder = Segmenter(config, SegmenterConfig(16)).decoder.eval()
    s = size(settings)
    x = torch.randn(settings.batch_size, decoder.in_channels, s // config.patch_size, s // config.patch_size)

    def reference():  # the transposed convolutions, channels-first, as nn.ConvTranspose2d computes them
        with torch.inference_mode():
            y = x
            for stage in decoder.stages:
                y = stage.act(stage.norm(stage.up(y)))
            return decoder.head(y)

    def ours():
        with torch.inference_mode():
            return decoder(x)

    def metrics(outputs, medians):
        return {"max_abs_difference": float((outputs["gemm"] - outputs["conv_transpose"]).abs().max())}

    return Prepared(
        {"conv_transpose": reference, "gemm": ours},
        reference="conv_transpose",
        settings={"input": list(x.shape)},
        warmup=lambda: (reference(), ours()),
        metrics=metrics,
        per_item=settings.batch_size,
    )


CASES = (
    Case(
        "predict",
        "predict_volume on a CT phantom: plain vs --fast (and --ablations), DSC fast vs plain",
        _predict_setup,
    ),
    Case("decoder", "Primus decoder: GEMM + block-order pixels vs nn.ConvTranspose2d, same weights", _decoder_setup),
)

"""Cases ``pretrain-step`` (one stage-1 DINO + iBOT + KoLeo step, issue 6) and ``finetune-step`` (one full training
step of the segmenter, issue 7), each beside a fixed fp32 matmul whose FLOPs are known (the load-robust reference)."""

from __future__ import annotations

import numpy as np
import torch

from training.bench import BenchSettings, Case, Prepared
from training.bench.common import bench_device, matmul_operands, phantom_ct, preset, size, vit_config


def _matmul(n: int, device: torch.device):
    """A matmul of known FLOPs on ``device`` in the arithmetic of the step (fp32 on CPU, bf16 on CUDA)."""
    a, b = matmul_operands(n, device)
    return lambda: torch.mm(a, b), 2 * n**3


def _pretrain_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.data.masking import sample_view_masks
    from MedDINOv3Core.train.pretrain import PretrainConfig, _Run, train_step, training_flops_per_image

    g, loc = (32, 16) if settings.toy else (224, 96)
    dev = bench_device(settings)
    cfg = PretrainConfig(
        backbone=preset(settings),
        data=("unused",),
        global_sizes=(g,),
        local_sizes=(loc,),
        n_local=1 if settings.toy else 8,
        head_out_dim=64 if settings.toy else 65536,
        **({"head_hidden_dim": 32, "head_bottleneck_dim": 16} if settings.toy else {}),
        batch_size=settings.batch_size,
        total_steps=1000,
        warmup_steps=0,
        freeze_last_layer_steps=0,
        device=str(dev),
        amp=dev.type == "cuda",  # bf16 autocast on GPUs, fp32 on the CPU
    )
    run = _Run(cfg, dev)
    bb = run.backbone_config
    patch = bb.patch_size
    rng = np.random.default_rng(0)
    b = settings.batch_size
    masks = np.concatenate([sample_view_masks((g // patch, g // patch), cfg.n_global, rng) for _ in range(b)], axis=0)
    order = np.arange(b * cfg.n_global).reshape(b, cfg.n_global).T.ravel()  # view-major like the collate
    batch = {
        "global": torch.randn(cfg.n_global * b, 3, g, g),
        "local": torch.randn(cfg.n_local * b, 3, loc, loc),
        "masks": torch.from_numpy(masks[order]),
    }
    batch = {k: v.to(dev) for k, v in batch.items()}  # already on the device, as a pinned loader delivers it
    steps = iter(range(1, 10**6))
    mm, mm_flops = _matmul(256 if settings.toy else 2048 if dev.type == "cpu" else 8192, dev)
    flops = training_flops_per_image(cfg, bb, g, loc) * b

    def metrics(outputs, medians):
        achieved = flops / medians["step"] / 1e9
        return {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "arithmetic": "bf16 autocast" if cfg.amp else "fp32",
            "images_per_s": round(b / medians["step"], 4),
            "achieved_gflops": round(achieved, 2),
            "achieved_tflops": round(achieved / 1000, 3),
            "matmul_gflops_same_process": round(mm_flops / medians["matmul"] / 1e9, 1),
            "fraction_of_matmul": round(achieved / (mm_flops / medians["matmul"] / 1e9), 3),
        }

    return Prepared(
        {"matmul": mm, "step": lambda: train_step(run, batch, next(steps))},
        reference="matmul",
        settings={"crops": f"2 x {g} + {cfg.n_local} x {loc}", "backbone_gflop_per_step": round(flops / 1e9, 2)},
        warmup=lambda: train_step(run, batch, 0),
        metrics=metrics,
        per_item=b,
    )


def _finetune_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.data.augment import AugmentConfig
    from MedDINOv3Core.data.nnunet_data import SliceData, SliceSampler
    from MedDINOv3Core.data.preprocess import PreprocessConfig
    from MedDINOv3Core.device import autocast
    from MedDINOv3Core.losses.segmentation import DiceCELoss
    from MedDINOv3Core.models.segmenter import Segmenter, SegmenterConfig

    s = size(settings)
    p = phantom_ct(settings, z_mm=5.0)
    data = SliceData.from_cases([("c", p.ct, p.labels)], PreprocessConfig.meddinov3_demo(), 8)
    sampler = SliceSampler(data, (s, s), settings.batch_size, augment=AugmentConfig(), seed=0)
    dev = bench_device(settings)
    model = Segmenter(vit_config(settings, drop_path_rate=0.2), SegmenterConfig(8)).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.98), weight_decay=0.05)
    loss_fn = DiceCELoss()
    steps = iter(range(10**6))

    def step():
        x, y = sampler.batch(next(steps))
        with autocast(dev):  # bf16 on GPUs, a no-op on the CPU
            loss = loss_fn(model(x.to(dev, non_blocking=True)), y.to(dev, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        return loss.detach()  # no host round trip inside the timed step: the harness synchronises

    mm, _ = _matmul(256 if settings.toy else 2048, dev)
    return Prepared(
        {"matmul": mm, "step": step},
        reference="matmul",
        settings={"patch": [s, s], "classes": 8, "device": str(dev)},
        warmup=step,
        per_item=settings.batch_size,
    )


CASES = (
    Case("pretrain-step", "one stage-1 pretraining step (student + EMA teacher, DINO/iBOT/KoLeo)", _pretrain_setup),
    Case("finetune-step", "one full finetuning step of the segmenter (augmentation, Dice+CE, AdamW)", _finetune_setup),
)

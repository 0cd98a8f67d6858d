"""Pretraining step benchmark: images/s and achieved FLOP/s of a stage-1 step (default ViT-S/16) on this machine.

One step = teacher forward on the 2 global crops, student forward + backward on 2 global + n local crops, the DINO,
iBOT and KoLeo losses with the recipe's heads (65536 prototypes), AdamW with layer-wise groups, EMA update. Batches
are synthetic tensors already in memory, so the figure is the model's; the data pipeline (crops + masks from the
slice cache) is timed separately, per image, in the same process. FLOPs are the analytic backbone matmul FLOPs
(``training_flops_per_image``: student 3x forward, teacher 1x forward; heads not counted), and are compared with
this machine's fp32 matmul peak measured in the same process.

    python benchmarks/pretrain.py                         # ViT-S/16, 2 x 224 + 8 x 96 crops, batch 4, fp32 CPU
    python benchmarks/pretrain.py --preset vit_tiny --global-size 64 --local-size 32 --batch 8 --steps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedDINOv3Core.data.crops import CropConfig, hu_to_unit, make_views  # noqa: E402
from MedDINOv3Core.data.masking import sample_view_masks  # noqa: E402
from MedDINOv3Core.models.vit import vit_config  # noqa: E402
from MedDINOv3Core.train.pretrain import PretrainConfig, _Run, train_step, training_flops_per_image  # noqa: E402


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def synthetic_batch(cfg: PretrainConfig, batch: int, g: int, loc: int, patch: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    masks = np.concatenate(
        [sample_view_masks((g // patch, g // patch), cfg.n_global, rng) for _ in range(batch)], axis=0
    )
    order = np.arange(batch * cfg.n_global).reshape(batch, cfg.n_global).T.ravel()  # view-major like collate
    return {
        "global": torch.randn(cfg.n_global * batch, 3, g, g),
        "local": torch.randn(cfg.n_local * batch, 3, loc, loc),
        "masks": torch.from_numpy(masks[order]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vit_small", help="backbone preset (default vit_small)")
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--n-local", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="images per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--head-out-dim", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = PretrainConfig(
        backbone=args.preset,
        data=("unused",),
        global_sizes=(args.global_size,),
        local_sizes=(args.local_size,),
        n_local=args.n_local,
        head_out_dim=args.head_out_dim,
        batch_size=args.batch,
        total_steps=1000,
        warmup_steps=0,
        freeze_last_layer_steps=0,
        device="cpu",
        amp=False,
    )
    peak = matmul_peak_gflops()
    torch.manual_seed(0)
    run = _Run(cfg, torch.device("cpu"))
    bb = vit_config(args.preset)
    batch = synthetic_batch(cfg, args.batch, args.global_size, args.local_size, bb.patch_size)
    train_step(run, batch, 0)  # warm-up
    times = []
    for step in range(1, args.steps + 1):
        t = time.perf_counter()
        train_step(run, batch, step)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    flops_img = training_flops_per_image(cfg, bb, args.global_size, args.local_size)

    # The data pipeline: crops + masks of one image from a real-sized (512^2) slice, in this process.
    crops = CropConfig(global_sizes=(args.global_size,), local_sizes=(args.local_size,), n_local=args.n_local)
    slice_hu = np.random.default_rng(0).normal(0, 300, (512, 512)).astype(np.float32)
    t = time.perf_counter()
    n_images = 8
    for i in range(n_images):
        rng = np.random.default_rng(i)
        make_views(hu_to_unit(slice_hu), crops, args.global_size, args.local_size, rng)
        sample_view_masks((args.global_size // bb.patch_size,) * 2, 2, rng)
    data_s = (time.perf_counter() - t) / n_images

    out = {
        "preset": args.preset,
        "crops": f"2 x {args.global_size} + {args.n_local} x {args.local_size}",
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "step_s_median": step_s,
        "step_s_all": times,
        "images_per_s": args.batch / step_s,
        "backbone_gflop_per_image": flops_img / 1e9,
        "achieved_gflops": flops_img * args.batch / step_s / 1e9,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": flops_img * args.batch / step_s / 1e9 / peak,
        "data_pipeline_s_per_image": data_s,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    for k, v in out.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

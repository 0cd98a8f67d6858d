"""Backbone forward benchmark: our DINOv3 ViT vs transformers' DINOv3ViTModel, side by side in one process.

Reports, per input size: median forward time of each implementation (fp32, CPU, eval, no grad), their ratio
(transformers time / ours: >= 1.0 means ours is at least as fast), the analytic FLOP count, achieved GFLOP/s, and
that as a fraction of this machine's fp32 matrix-multiply peak measured in the same process.

    python benchmarks/backbone.py                 # ViT-B/16 at 256 and 512, batch 1
    python benchmarks/backbone.py --sizes 224 --preset vit_small --repeats 5 --json out.json
    python benchmarks/backbone.py --quick         # ViT-S/16 at 224: a 20-second smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from MedDINOv3Core.models.vit import VisionTransformer, vit_config


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of a square matrix multiply (torch.mm), this machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def transformers_model(config):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    hf_config = DINOv3ViTConfig(
        hidden_size=config.embed_dim,
        intermediate_size=config.mlp_hidden_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        num_register_tokens=config.n_storage_tokens,
        query_bias=config.qkv_bias != "none",
        value_bias=config.qkv_bias != "none",
        key_bias=False,
        layer_norm_eps=config.norm_eps,
        attn_implementation="sdpa",
    )
    return DINOv3ViTModel(hf_config).eval()


def time_forward(fn, x, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit_base", help="backbone preset (default vit_base)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square input sizes")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per implementation and size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers reference")
    parser.add_argument("--quick", action="store_true", help="ViT-S/16 at 224, 3 repeats")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.sizes, args.repeats = "vit_small", [224], 3
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = vit_config(args.preset)
    ours = VisionTransformer(config).eval()
    reference = None
    if not args.no_transformers:
        try:
            reference = transformers_model(config)
        except ImportError:
            print("transformers not installed: timing ours only", file=sys.stderr)
    peak = matmul_peak_gflops()
    print(
        f"{args.preset} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
        f"{platform.processor() or platform.machine()} | fp32 matmul peak {peak:.1f} GFLOP/s"
    )
    rows = []
    with torch.inference_mode():
        for size in args.sizes:
            x = torch.randn(args.batch, 3, size, size)
            runs = {"ours": lambda t: ours.forward_features(t)}
            if reference is not None:
                runs["transformers"] = lambda t: reference(pixel_values=t)
            for fn in runs.values():  # warm-up
                fn(x)
            times = {name: [] for name in runs}
            for _ in range(args.repeats):  # interleaved so that machine noise hits both alike
                for name, fn in runs.items():
                    times[name] += time_forward(fn, x, 1)
            flops = args.batch * config.forward_flops(size, size)
            row = {"size": size, "batch": args.batch, "gflop": flops / 1e9, "peak_gflops": peak}
            for name, ts in times.items():
                med = statistics.median(ts)
                row[f"{name}_ms"] = med * 1e3
                row[f"{name}_gflops"] = flops / med / 1e9
            row["fraction_of_peak"] = row["ours_gflops"] / peak
            if reference is not None:
                row["speed_ratio_vs_transformers"] = row["transformers_ms"] / row["ours_ms"]
            rows.append(row)
            line = (
                f"{size}x{size}: ours {row['ours_ms']:.1f} ms ({row['ours_gflops']:.1f} GFLOP/s, "
                f"{100 * row['fraction_of_peak']:.0f}% of peak)"
            )
            if reference is not None:
                line += (
                    f" | transformers {row['transformers_ms']:.1f} ms | ratio {row['speed_ratio_vs_transformers']:.3f}"
                )
            print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"preset": args.preset, "threads": torch.get_num_threads(), "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

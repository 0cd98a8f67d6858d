"""Benchmark predict_volume: slices/s and peak memory; and peak memory against the number of slices (streaming).

Each measurement runs in a fresh child process so that its peak RSS (ru_maxrss) is its own.

    python benchmarks/predict.py throughput --preset vit_base --size 512 --slices 64
    python benchmarks/predict.py streaming --preset vit_tiny --size 512 --slices 20 200

Models have random weights (speed and memory do not depend on them); the volume is random CT-like int16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(preset: str, size: int, slices: int, batch_size: int, threads: int, tile: int) -> dict:
    """One measurement in this process; returns a JSON-ready dict."""
    import numpy as np
    import torch

    from MedDINOv3Core.data.preprocess import PreprocessConfig
    from MedDINOv3Core.data.volume import Volume
    from MedDINOv3Core.inference import InferenceConfig, predict_volume
    from MedDINOv3Core.models.segmenter import new_segmentation_card
    from MedDINOv3Core.models.vit import vit_config
    from MedDINOv3Core.weights import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    labels = [f"organ_{i}" for i in range(1, 16)]  # AMOS-like: 15 organs + background
    card = new_segmentation_card(
        vit_config(preset),
        labels,
        PreprocessConfig.meddinov3_demo(),
        InferenceConfig(tile_size=(tile, tile), batch_size=batch_size),
    )
    model = build_model(card).eval()
    rng = np.random.default_rng(0)
    volume = Volume(rng.integers(-1000, 1500, (slices, size, size), dtype=np.int16), (0.78, 0.78, 2.5))
    baseline = _rss_mb()
    # warm-up on two slices (first-call allocations, thread pools)
    predict_volume(model, card, Volume(volume.array[:2].copy(), volume.spacing), device="cpu")
    start = time.perf_counter()
    pred = predict_volume(model, card, volume, device="cpu")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "preset": preset,
        "size": size,
        "slices": slices,
        "batch_size": batch_size,
        "threads": threads,
        "tile": tile,
        "n_classes": len(labels) + 1,
        "seconds": round(seconds, 2),
        "slices_per_s": round(slices / seconds, 3),
        "rss_after_model_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "input_mb": round(volume.array.nbytes / 2**20, 1),
        "output_mb": round(pred.labelmap.array.nbytes / 2**20, 1),
        "torch": torch.__version__,
    }


def run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "streaming", "child"))
    parser.add_argument("--preset", default="vit_base")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, nargs="+", default=[64])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tile", type=int, default=512)
    args = parser.parse_args(argv)
    common = dict(preset=args.preset, size=args.size, batch_size=args.batch_size, threads=args.threads, tile=args.tile)
    if args.mode == "child":
        print(json.dumps(child(slices=args.slices[0], **common)))
        return 0
    results = [run_child(slices=n, **common) for n in args.slices]
    for r in results:
        print(json.dumps(r))
    if args.mode == "streaming" and len(results) > 1:
        a, b = results[0], results[-1]
        held_a = a["peak_rss_mb"] - a["input_mb"] - a["output_mb"]
        held_b = b["peak_rss_mb"] - b["input_mb"] - b["output_mb"]
        full_logits_mb = b["slices"] * b["n_classes"] * b["size"] ** 2 * 4 / 2**20
        print(
            json.dumps(
                {
                    "peak_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
                    "peak_minus_input_output_ratio": round(held_b / held_a, 3),
                    f"fp32_logits_of_{b['slices']}_slices_mb": round(full_logits_mb, 1),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Finetuning benchmark: few-shot wall time from 3 labelled 512 x 512 slices to a trained head, and `full` step time.

- fewshot: a synthetic phantom CT of 3 axial 512 x 512 slices (0.7 mm), all three labelled, written as an nnU-Net
  dataset; ``run_finetuning`` with the finetune_fewshot.yaml recipe and a ViT-B/16 backbone (random weights: no
  pretrained weights can be downloaded here; the cost does not depend on the values), timed end to end and per
  stage (reading and preprocessing, the backbone features cached once, head training, saving the model cards).
- full: median time of one training step of the ViT-B/16 + Primus segmenter on 512 x 512 patches at batch sizes 1
  and 2: ``python -m training bench finetune-step`` (training/bench/case_train.py).

    python benchmarks/finetune.py                      # both, ViT-B/16
    python benchmarks/finetune.py --quick              # ViT-S/16, fewer steps: a smoke run
    python benchmarks/finetune.py --skip-full --threads 2     # the few-shot figure only
    python benchmarks/finetune.py --skip-fewshot --full-batches 1 --full-steps 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_dataset(root: Path, size: int, n_slices: int) -> Path:
    from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
    from MedDINOv3Core.volume_io import write_volume

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    p = make_phantom((n_slices, size, size), spacing=(0.7, 0.7, 5.0), seed=0)
    write_volume(p.ct, root / "imagesTr" / "case_0000.nii.gz")
    write_volume(p.labels, root / "labelsTr" / "case.nii.gz")
    labels = {"background": 0, **{d["name"]: d["value"] for d in phantom_label_table()}}
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def bench_fewshot(preset: str, size: int, iterations: int) -> dict:
    from MedDINOv3Core.train.finetune import load_finetune_config, run_finetuning

    stamps: dict[str, float] = {}

    def progress(stage: str, done: int, total: int, message: str = "") -> None:
        now = time.perf_counter()
        stamps.setdefault(f"{stage}_start", now)
        stamps[f"{stage}_end"] = now

    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp) / "ds", size, 3)
        recipe = Path(__file__).resolve().parents[1] / "training" / "configs" / "finetune_fewshot.yaml"
        overrides = {"data": str(data), "output": str(Path(tmp) / "out"), "backbone": preset}
        if iterations:
            overrides["iterations_per_epoch"] = iterations
        config = load_finetune_config(recipe, overrides)
        t0 = time.perf_counter()
        result = run_finetuning(config, progress=progress)
        total = time.perf_counter() - t0
    return {
        "backbone": preset,
        "slices": 3,
        "size": size,
        "iterations": config.iterations_per_epoch,
        "pixels_per_step": config.fewshot_pixels,
        "total_s": total,
        "load_s": stamps["features_start"] - t0,
        "features_s": stamps["features_end"] - stamps["features_start"],
        "train_s": stamps["finetune_end"] - stamps["features_end"],
        "save_s": total - (stamps["finetune_end"] - t0),
        "final_loss": result.history[-1]["loss"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ViT-S/16 and fewer steps")
    parser.add_argument("--skip-full", action="store_true", help="only the few-shot benchmark")
    parser.add_argument("--iterations", type=int, default=0, help="few-shot head steps (0: the recipe's)")
    parser.add_argument("--full-batches", type=int, nargs="+", default=[1, 2], help="batch sizes of the full step")
    parser.add_argument("--full-steps", type=int, default=3, help="timed full steps (after one warm-up step)")
    parser.add_argument("--skip-fewshot", action="store_true", help="only the full-step benchmark")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "vit_small" if args.quick else "vit_base"
    out = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if not args.skip_fewshot:
        out["fewshot"] = bench_fewshot(preset, 512, 50 if args.quick else args.iterations)
        print(json.dumps(out["fewshot"]), flush=True)
    if not args.skip_full:
        from training.cli import main as cli

        for b in args.full_batches:  # the full step is the harness's finetune-step case
            bench = ["bench", "finetune-step", "--preset", preset, "--batch-size", str(b), "--repeats"]
            cli([*bench, str(1 if args.quick else args.full_steps)])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())

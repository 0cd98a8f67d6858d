"""`python -m training demo`: the offline demo of the whole product (see training/demo.py)."""

from __future__ import annotations

import argparse

from training.common import (
    Progress,
    UsageError,
    add_progress_argument,
    int_range,
    non_negative_int,
)
from training.outputs import add_output_arguments, output_rule, prepare_output_folder

NAME = "demo"
HELP = (
    "Offline demo: segment a synthetic CT phantom (or your CT) with the embedded model, score it, PCA and similarity "
    "maps, RT Structure Set export, PNG previews and a one-page summary"
)
EXAMPLES = f"""examples:
  python -m training demo --out demo_out                      # phantom + embedded model, seconds on 2 CPU cores
  python -m training demo --out my_demo --input ct.nii.gz     # the same on your own CT (no DSC: no truth)
  python -m training demo --out d --model meddinov3-phantom-tiny --organ spleen --device cpu
  python -m training demo --out demo_out --overwrite          # run again into the same folder

{output_rule(resumable=False)}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; see --overwrite to run again into it)")
    parser.add_argument(
        "--input",
        help="your CT (NIfTI, NRRD, MHA or a DICOM folder; FOLDER::SeriesInstanceUID chooses one series of a folder "
        "holding several) instead of the phantom",
    )
    parser.add_argument(
        "--model", help="segmentation model: card folder, registry name or Hub repo (default: embedded)"
    )
    parser.add_argument("--organ", default="liver", help="structure to click for the similarity map (default liver)")
    parser.add_argument(
        "--shape", type=int_range(16), nargs=3, metavar=("Z", "Y", "X"), help="phantom size (default 48 192 192)"
    )
    parser.add_argument("--seed", type=non_negative_int, help="phantom seed")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    add_output_arguments(parser, resumable=False)
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from training.demo import DEMO_MARKERS, DEMO_OUTPUTS, DEMO_SEED, DEMO_SHAPE, run_demo

    if args.shape and min(args.shape) < 16:
        raise UsageError("--shape sizes must be at least 16 voxels")
    rule = {"command": "demo", "owned": DEMO_OUTPUTS, "markers": DEMO_MARKERS, "option": "--out"}
    prepare_output_folder(args.out, overwrite=args.overwrite, **rule)
    with Progress(args.progress) as progress:
        result = run_demo(
            args.out,
            model=args.model,
            input_path=args.input,
            shape=tuple(args.shape) if args.shape else DEMO_SHAPE,
            seed=DEMO_SEED if args.seed is None else args.seed,
            device=args.device,
            organ=args.organ,
            progress=progress,
        )
    lines = [f"demo written to {result.out} (open summary.md and overview.png)"]
    if result.mean_dice is not None:
        lines.append(
            "DSC " + ", ".join(f"{k} {v:.3f}" for k, v in result.dice.items()) + f" | mean {result.mean_dice:.3f}"
        )
    if result.similarity:
        sim, organ = result.similarity, result.click.get("organ") or "clicked"
        lines.append(
            f"similarity of the {organ} click: inside {sim['inside_organ']:.3f} vs rest {sim['rest_of_body']:.3f}"
        )
    lines.append(f"RT Structure Set {result.files['rtstruct'].name}: {result.rtstruct_validation}")
    lines.append("time (s): " + ", ".join(f"{k} {v}" for k, v in result.timings.items()))
    if args.progress != "json":
        print("\n".join(lines))
    return 0

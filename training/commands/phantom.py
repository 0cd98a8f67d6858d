"""`python -m training phantom`: write labelled synthetic CT phantoms as an nnU-Net v2 raw dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.common import (
    CommandError,
    Progress,
    UsageError,
    add_progress_argument,
    check_output_folder,
    int_range,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from training.outputs import add_output_arguments, output_rule, prepare_output_folder

NAME = "phantom"
HELP = "Write seeded synthetic CT phantoms with organ labels as an nnU-Net v2 raw dataset (for finetuning and tests)"
EXAMPLES = f"""examples:
  python -m training phantom --out data/phantom --cases 8 --shape 48 192 192
  python -m training phantom --out data/phantom_test --cases 2 --seed 100 --test 2   # + imagesTs/, labelsTs/
  python -m training phantom --out data/phantom --cases 4 --overwrite                # write it again

{output_rule()}
"""
PHANTOM_OUTPUTS = ("dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create (see --overwrite to write it again)")
    parser.add_argument("--cases", type=positive_int, default=8, help="number of labelled cases (default 8)")
    parser.add_argument("--shape", type=int_range(16), nargs=3, default=(48, 192, 192), metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first case; case n uses seed + n")
    parser.add_argument("--noise", type=non_negative_float, default=15.0, help="noise sigma in HU (default 15)")
    parser.add_argument(
        "--test",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also write N test cases (imagesTs/, labels in labelsTs/)",
    )
    add_output_arguments(parser)
    add_progress_argument(parser)


def write_phantom_dataset(
    out: Path, cases: int, shape, seed: int = 0, noise: float = 15.0, test: int = 0, progress=None
) -> Path:
    """nnU-Net v2 raw layout: dataset.json, imagesTr/phantom_NNN_0000.nii.gz, labelsTr/phantom_NNN.nii.gz.

    The ``test`` cases go to imagesTs/, their labels to labelsTs/ (the reference for ``python -m training evaluate``).
    """
    from MedDINOv3Core.data.nnunet_dataset import write_dataset_json
    from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
    from MedDINOv3Core.volume_io import write_volume

    if (out / "dataset.json").exists():
        raise CommandError(f"{out} already holds a dataset (dataset.json); choose a new --out")
    table = phantom_label_table()
    total = cases + test
    for n in range(total):
        phantom = make_phantom(shape, seed=seed + n, noise_sigma=noise)
        name = f"phantom_{seed + n:03d}"
        if n < cases:
            write_volume(phantom.ct, out / "imagesTr" / f"{name}_0000.nii.gz")
            write_volume(phantom.labels, out / "labelsTr" / f"{name}.nii.gz")
        else:
            write_volume(phantom.ct, out / "imagesTs" / f"{name}_0000.nii.gz")
            write_volume(phantom.labels, out / "labelsTs" / f"{name}.nii.gz")  # the reference for evaluation
        if progress is not None:
            progress("phantom", n + 1, total, name)
    write_dataset_json(
        out,
        table,
        name="MedDINOv3 synthetic CT phantom",
        description=f"make_phantom(shape={list(shape)}, seeds {seed}..{seed + total - 1}, noise_sigma={noise})",
        num_training=cases,
        file_ending=".nii.gz",
    )
    return out


def run(args: argparse.Namespace) -> int:
    if args.cases < 1 or args.test < 0:
        raise UsageError("--cases must be at least 1 and --test not negative")
    if min(args.shape) < 16:
        raise UsageError("--shape sizes must be at least 16 voxels")
    out = Path(args.out).expanduser()
    check_output_folder("--out", out)
    prepare_output_folder(
        out,
        command="phantom",
        owned=PHANTOM_OUTPUTS,
        markers=("dataset.json", "imagesTr"),
        overwrite=args.overwrite,
        option="--out",
    )
    with Progress(args.progress) as progress:
        write_phantom_dataset(out, args.cases, tuple(args.shape), args.seed, args.noise, args.test, progress)
    if args.progress != "json":
        test = f" and {args.test} test case{'' if args.test == 1 else 's'} (imagesTs/, labelsTs/)" if args.test else ""
        print(f"wrote {args.cases} labelled training phantom{'' if args.cases == 1 else 's'}{test} to {out}")
    return 0

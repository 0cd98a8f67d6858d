"""`python -m training evaluate`: per-case, per-class DSC and NSD of predicted label maps against references.

The evaluation itself lives in MedDINOv3Core/evaluation.py; this command parses, calls it and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from MedDINOv3Core.progress import write_progress_line
from training.common import CommandError, Progress, UsageError, add_progress_argument, check_output_folder
from training.outputs import add_output_arguments, check_output_folder_rule, output_rule, replacing_output

NAME = "evaluate"
HELP = "score predicted label maps against reference label maps: DSC and normalized surface Dice per case and class"
EXAMPLES = """examples:
  python -m training evaluate --pred runs/pred --gt data/labelsTs --out runs/eval --tolerance 2 --tolerance liver=5
  python -m training evaluate --pred pred --gt gt --labels meddinov3-phantom-tiny --out eval
  python -m training evaluate --pred pred --gt gt --labels models/liver-seg --tolerance 2 --out eval --overwrite
  python -m training evaluate --pred pred --gt gt --labels dataset.json --tolerance 1 --tolerance liver=5 \\
      --tolerance 3=2.5 --out eval_vitb --name "MedDINOv3 ViT-B"

Files are matched by name without the image suffix (case_001.nii.gz in --pred matches case_001.nrrd in --gt);
NIfTI, NRRD, MetaImage and Slicer .seg.nrrd files are read. Each prediction must lie on its reference's voxel grid
(same shape, spacing, origin and direction). --labels takes a model card directory or model name (registry name or
Hub repo, as for predict --model), its config.json, an nnU-Net dataset.json or a JSON list of {"value", "name"}
entries; without it the dataset.json beside a labelsTs/ or labelsTr/ --gt folder names the classes, else every
non-zero value found is scored as "label N".
--tolerance: a number sets the NSD tolerance (mm) of every class (default 2.0); NAME=MM or VALUE=MM sets one class.

Writes into --out: per_case.csv (one row per case and class), summary.md (mean DSC and NSD per class and overall, in
percent, shaped like the MedDINOv3 paper's Table 2) and summary.json. Conventions (empty masks, surfaces): see
MedDINOv3Core/metrics.py. A class absent from both the prediction and the reference of a case is left out of the
means (NaN in the CSV).

""" + output_rule()
REPORT_FILES = ("per_case.csv", "summary.json", "summary.md")  # what write_report writes


def _tolerance(text: str) -> str:
    """argparse type of --tolerance: MM or NAME=MM with MM a finite number >= 0 (the class is checked later)."""
    import argparse
    import math

    mm_text = text.rpartition("=")[2]
    try:
        mm = float(mm_text)
    except ValueError:
        mm = float("nan")
    if not (math.isfinite(mm) and mm >= 0):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the tolerance must be a number of millimetres >= 0 (MM or NAME=MM)"
        )
    return text


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
    parser.add_argument("--gt", required=True, metavar="DIR", help="folder of reference label maps")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write per_case.csv and summary.md into")
    parser.add_argument(
        "--labels",
        metavar="PATH|NAME",
        help="class names: a model card directory, config.json or model name, an nnU-Net dataset.json, or a JSON "
        "label list (default: the dataset.json beside a labelsTs/ or labelsTr/ --gt folder)",
    )
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        type=_tolerance,
        metavar="MM|NAME=MM",
        help="NSD tolerance in mm, for every class (a number, default 2.0) or one class (name or value = mm); repeat",
    )
    parser.add_argument(
        "--surface",
        choices=("surfels", "voxels"),
        default="surfels",
        help="NSD surface elements: area-weighted surfels as in Nikolov et al. (default) or boundary voxels (MONAI's "
        "default)",
    )
    parser.add_argument("--name", help="method name for the summary table (default: the --pred folder's name)")
    add_output_arguments(parser)
    add_progress_argument(parser)


def run(args) -> int:
    from MedDINOv3Core.evaluation import EvaluationError, ToleranceError, evaluate_folders, write_report

    pred_dir, gt_dir, out_dir = Path(args.pred).expanduser(), Path(args.gt).expanduser(), Path(args.out).expanduser()
    check_output_folder("--out", out_dir)
    rule = {"command": "evaluate", "owned": REPORT_FILES, "markers": REPORT_FILES, "option": "--out"}
    check_output_folder_rule(out_dir, overwrite=args.overwrite, **rule)  # before the scoring, not after
    try:
        with Progress(args.progress) as progress:
            result = evaluate_folders(
                pred_dir, gt_dir, args.labels, args.tolerance, args.surface, args.name, progress=progress
            )
    except ToleranceError as exc:
        raise UsageError(str(exc)) from None
    except EvaluationError as exc:
        raise CommandError(str(exc)) from None
    with replacing_output(out_dir, REPORT_FILES if args.overwrite else ()):  # the earlier report back on failure
        paths = write_report(result, out_dir)
    if args.progress == "json":
        write_progress_line(sys.stdout, "done", 1, 1, str(out_dir), path=str(out_dir))
    else:
        sys.stdout.write(result.markdown + f"\nwritten: {', '.join(str(p) for p in paths.values())}\n")
    return 0

"""`python -m training export-backbone`: a pretraining checkpoint's teacher backbone -> a model card directory."""

from __future__ import annotations

import sys
from pathlib import Path

from MedDINOv3Core.progress import write_progress_line
from training.common import CommandError, refuse_output_over_input
from training.outputs import add_output_arguments, check_output_folder_rule, output_rule

NAME = "export-backbone"
HELP = "write the (EMA teacher) backbone of a pretraining checkpoint as a model card for finetuning and exploration"
EXAMPLES = """examples:
  python -m training export-backbone runs/stage3/checkpoints/last.pt --output models/meddinov3-mine
  python -m training export-backbone runs/tiny/checkpoints/last.pt --output models/tiny --weights student \\
      --name "tiny CT backbone" --license apache-2.0

The card (config.json + model.safetensors + pretrain_config.json) records the architecture, the pretraining
intensity preprocessing and the provenance (checkpoint, step, git commit). Its directory is printed on stdout.
With --overwrite an earlier card in --output is replaced as a whole, atomically.

""" + output_rule()


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="pretraining checkpoint (output_dir/checkpoints/last.pt)")
    parser.add_argument(
        "--output",
        required=True,
        help="model card directory to write (a new or empty folder; see --overwrite)",
    )
    add_output_arguments(parser)
    parser.add_argument(
        "--weights", choices=("teacher", "student"), default="teacher", help="which backbone (default: the teacher)"
    )
    parser.add_argument("--name", default="", help="model name in the card")
    parser.add_argument("--description", default="", help="description in the card")
    parser.add_argument("--license", default="", help="licence of the weights (e.g. apache-2.0)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="output format")


CARD_FILES = ("config.json", "model.safetensors", "pretrain_config.json")  # what export_backbone writes


def run(args) -> int:
    from MedDINOv3Core.train.pretrain import export_backbone

    output = Path(args.output).expanduser()
    refuse_output_over_input({"--output": output}, {"checkpoint": args.checkpoint}, replaces_folder=True)
    rule = {"command": "export-backbone", "owned": CARD_FILES, "markers": ("config.json",), "option": "--output"}
    check_output_folder_rule(output, overwrite=args.overwrite, **rule)  # export_backbone replaces it atomically
    try:
        path = export_backbone(
            args.checkpoint,
            args.output,
            which=args.weights,
            name=args.name,
            description=args.description,
            license=args.license,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{exc}; pass the checkpoint written by `python -m training pretrain`") from None
    if args.progress == "json":
        write_progress_line(sys.stdout, "done", 1, 1, str(path), path=str(path))
    else:
        sys.stdout.write(f"{path}\n")
    return 0

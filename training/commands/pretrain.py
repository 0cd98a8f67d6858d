"""`python -m training pretrain`: self-supervised pretraining (stages 1-3) on folders of CT volumes."""

from __future__ import annotations

import json
import logging
import os
import sys

from training.common import (
    RECIPES,
    CommandError,
    Progress,
    UsageError,
    add_progress_argument,
    parse_overrides,
    recipe_names,
    recipe_path,
)
from training.outputs import add_output_arguments, output_rule, prepare_output_folder

NAME = "pretrain"
HELP = "self-supervised pretraining of the backbone on unlabeled CT (DINO + iBOT + KoLeo, Gram anchoring, stages 1-3)"
EXAMPLES = f"""examples:
  python -m training pretrain --config tiny_cpu data=/data/ct output_dir=runs/tiny          (a CPU smoke run)
  python -m training pretrain --config tiny_cpu data=/data/ct output_dir=runs/tiny --resume  (continue it)
  python -m training pretrain --config stage1 data=[/data/ct_a,/data/ct_b] init_from=dinov3_vitb16.pth
  python -m training pretrain --config stage2 data=/data/ct init_from=runs/stage1/checkpoints/last.pt \\
      gram_teacher=runs/stage1/checkpoints/last.pt
  python -m training pretrain --config stage3 data=/data/ct init_from=runs/stage2/checkpoints/last.pt \\
      gram_teacher=runs/stage1/checkpoints/last.pt
  torchrun --nproc-per-node 8 -m training pretrain --config stage1 data=/data/ct batch_size=512
  torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m training pretrain --config stage1 data=/data/ct fsdp=true backbone=vit_large

Recipes (--config NAME or a path): {", ".join(recipe_names("pretrain"))} in {RECIPES}.
Any option can be overridden as key=value (lists as [a,b]). batch_size is the GLOBAL batch, split over processes.
The slice cache is built once (resumable) under output_dir/slice_cache unless cache_dir= is given. A rerun with
the same output_dir and --resume continues from output_dir/checkpoints/last.pt exactly; torchrun's restarts of a
failed worker group (TORCHELASTIC_RESTART_COUNT > 0) resume by themselves. --overwrite starts over (one process only:
under torchrun with several processes, remove the folder first).
output_dir gets checkpoints/ (last.pt), metrics.jsonl (per logged step: the losses, lr, weight decay, teacher
temperature and momentum, images/s) and metrics.png (the loss curves).
Then: python -m training export-backbone runs/tiny/checkpoints/last.pt --output models/my-backbone

{output_rule(resumable=True)}
"""
# What run_pretraining writes into output_dir (what --overwrite may replace), and the entries that show a pretraining
# output.
PRETRAIN_OUTPUTS = ("checkpoints", "metrics.jsonl", "metrics.png", "config.json", "slice_cache")
PRETRAIN_MARKERS = ("config.json", "checkpoints", "metrics.jsonl")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config",
        default="stage1",
        help=f"pretraining recipe: {', '.join(recipe_names('pretrain'))} (default: stage1), or a YAML path",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe options to override")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    add_output_arguments(parser, resumable=True)
    add_progress_argument(parser)


def run(args) -> int:
    from MedDINOv3Core.progress import Cancelled, write_progress_line
    from MedDINOv3Core.train import distributed
    from MedDINOv3Core.train.pretrain import load_pretrain_config, run_pretraining

    try:
        config = load_pretrain_config(recipe_path(args.config, kind="pretrain"), parse_overrides(args.overrides))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    if args.print_config:
        sys.stdout.write(json.dumps(config.to_dict(), indent=2) + "\n")
        return 0
    if not config.data or not all(str(d).strip() for d in config.data):
        what = "an empty data=" if config.data else "no pretraining data"
        raise UsageError(f"{what}: give data=/path/to/ct (a folder of NIfTI/NRRD/MHA files or DICOM series)")
    from MedDINOv3Core.data.slice_cache import check_data_roots

    check_data_roots(config.data)  # a missing folder is refused before the output folder is touched
    config = _apply_output_rule(args, config, distributed.rank_from_env())
    mode = args.progress if distributed.rank_from_env() == 0 else "none"
    if distributed.rank_from_env() != 0:  # rank 0 logs; the others only warn
        logging.getLogger().setLevel(logging.WARNING)
    try:
        with Progress(mode) as progress:
            result = run_pretraining(config, progress=progress)
    except Cancelled as exc:
        raise CommandError(str(exc)) from None
    except FloatingPointError as exc:
        raise CommandError(str(exc)) from None
    finally:
        distributed.shutdown()
    if distributed.rank_from_env() == 0:
        last = result.history[-1]["total"] if result.history else float("nan")
        if args.progress == "json":
            message = f"loss {last:.4f}"
            write_progress_line(
                sys.stdout, "done", result.step, config.total_steps, message, checkpoint=str(result.checkpoint)
            )
        else:
            sys.stdout.write(f"{result.checkpoint}\n")
    return 0


def _apply_output_rule(args, config, rank: int):
    """The rerun rule (training.common.OUTPUT_RULE) for output_dir, checked by rank 0; returns the config with
    ``resume`` set to what the rule decided."""
    import dataclasses

    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0  # torchrun restarts resume
    resume = args.resume or restarted
    overwrite = args.overwrite and not restarted
    if overwrite and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise CommandError(f"--overwrite under torchrun with several processes: remove {config.output_dir} first")
    if rank == 0:
        mode = prepare_output_folder(
            config.output_dir,
            command="pretrain",
            owned=PRETRAIN_OUTPUTS,
            markers=PRETRAIN_MARKERS,
            resumable=True,
            overwrite=overwrite,
            resume=resume,
            option="output_dir",
        )
        resume = mode == "resume"
    return dataclasses.replace(config, resume=resume)

"""`python -m training finetune`: train a segmentation model (full, frozen-backbone decoder, or few-shot head)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from MedDINOv3Core.config_utils import OPTION_ALIASES
from training.common import (
    RECIPES,
    CommandError,
    Progress,
    UsageError,
    add_progress_argument,
    parse_overrides,
    recipe_path,
)
from training.outputs import add_output_arguments, output_rule, prepare_output_folder

NAME = "finetune"
HELP = "finetune a segmentation model on labelled CT/MRI (modes: full, decoder = frozen backbone, fewshot)"
EXAMPLES = f"""examples:
  python -m training finetune --config finetune --data /data/nnUNet_raw/Dataset218_AMOS2022 --out runs/amos \\
      --init meddinov3-vitb16-ct3m
  python -m training finetune --config finetune_decoder --data /data/Dataset218_AMOS2022 --out runs/amos-dec \\
      --init dinov3_vitb16_pretrain_lvd1689m.pth
  python -m training finetune --config finetune_fewshot --data painted/ --out runs/fewshot --init runs/backbone
  python -m training explore --model runs/backbone --input painted/imagesTr/case_0000.nii.gz --cache-dir ct-features
  python -m training finetune --config finetune_fewshot --data painted/ --out runs/round1 --init runs/backbone \\
      --features ct-features          (the painted volume's feature cache: no backbone pass)
  python -m training finetune --config finetune_fewshot --data painted/ --out runs/round2 --init runs/round1/best \\
      --features ct-features          (after corrections: the head warm-starts from round 1)
  python -m training finetune --config finetune_tiny_cpu --data phantom/ --out runs/tiny --init random
  python -m training finetune --config finetune --data D --out runs/amos --resume        (continue exactly)
  python -m training finetune --config finetune_tiny_cpu --data phantom/ --out runs/tiny --overwrite   (start over)
  python -m training finetune --config finetune epochs=10 batch_size=4 crop_size=[256,256] --data D --out O

Recipes (--config NAME or a path): {", ".join(sorted(p.stem for p in RECIPES.glob("finetune*.yaml")))} in {RECIPES}.
Any option can be overridden as key=value (lists as [a,b]). --data is an nnU-Net v2 raw dataset folder
(dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz). In fewshot mode only slices with at least
one labelled voxel are used (a volume where you painted 3 slices is a valid training set); with an "ignore" label
in dataset.json (nnU-Net v2: the highest value), voxels of that value are unlabelled and every slice holding another
value is used, so a repainted slice that is all background counts. --features CACHE_DIR (few-shot only) takes the
painted volume's tokens from its feature cache (`python -m training explore --model INIT --input ct.nii.gz
--cache-dir CACHE_DIR`, built from the same image file with the init model); a cache of another model, volume or
preprocessing is an error. --init a previous few-shot model (OUT/best) warm-starts the head: the next round.
The output folder gets best/ and last/ (model cards for predict, explore and Slicer), checkpoint.pt,
history.json (loss and validation DSC per epoch) and history.png (those curves).
Then: python -m training predict --model OUT/best --input ct.nii.gz ...

{output_rule(resumable=True)}
"""
# What run_finetuning writes into --out (what --overwrite may replace), and the entries that show a finetune output.
FINETUNE_OUTPUTS = ("best", "last", "checkpoint.pt", "history.json", "history.png", "finetune_config.json")
FINETUNE_MARKERS = ("checkpoint.pt", "finetune_config.json", "history.json")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config", default="finetune", help="recipe name in training/configs (default: finetune) or a YAML path"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe options to override")
    parser.add_argument("--data", help="nnU-Net v2 raw dataset folder (overrides the recipe's data)")
    parser.add_argument("--out", help="output folder (overrides the recipe's output_dir)")
    parser.add_argument(
        "--init",
        help="start from (overrides the recipe's init_from): random, a model-card folder, a registry name, org/name "
        "on the Hub or a checkpoint file",
    )
    parser.add_argument("--mode", choices=("full", "decoder", "fewshot"), help="override the recipe's mode")
    parser.add_argument("--device", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--features",
        metavar="CACHE_DIR",
        help="few-shot: the painted volume's feature cache (from `explore --cache-dir`): no backbone pass",
    )
    add_output_arguments(parser, resumable=True)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    add_progress_argument(parser)


def run(args) -> int:
    from MedDINOv3Core.data.nnunet_data import DatasetError
    from MedDINOv3Core.feature_cache import FeatureCacheError
    from MedDINOv3Core.progress import Cancelled, write_progress_line
    from MedDINOv3Core.train.finetune import load_finetune_config, run_finetuning

    overrides = parse_overrides(args.overrides)
    options = (("data", args.data), ("output_dir", args.out), ("init_from", args.init), ("mode", args.mode))
    for key, value in options + (("features", args.features),):
        if value is not None:  # the option wins over an override of the same key, in either spelling
            overrides = {k: v for k, v in overrides.items() if OPTION_ALIASES.get(k, k) != key}
            overrides[key] = value
    if args.device is not None:
        overrides["device"] = args.device
    if args.resume:
        overrides["resume"] = True
    try:
        config = load_finetune_config(recipe_path(args.config, "finetune*.yaml"), overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    if args.print_config:
        sys.stdout.write(json.dumps(config.to_dict(), indent=2) + "\n")
        return 0
    if not config.data:
        raise UsageError("no training data: add --data /path/to/nnUNet_raw/DatasetXXX (an nnU-Net v2 raw folder)")
    if not config.output_dir:
        raise UsageError("no output folder: add --out runs/NAME")
    if config.resume and not (Path(config.output_dir).expanduser() / "checkpoint.pt").is_file():
        raise UsageError(f"--resume: no checkpoint.pt in {config.output_dir}; run once without --resume first")
    prepare_output_folder(
        config.output_dir,
        command="finetune",
        owned=FINETUNE_OUTPUTS,
        markers=FINETUNE_MARKERS,
        resumable=True,
        overwrite=args.overwrite,
        resume=config.resume,
        option="--out",
    )
    try:
        with Progress(args.progress) as progress:
            result = run_finetuning(config, progress=progress)
    except (Cancelled, FloatingPointError, DatasetError, FeatureCacheError) as exc:
        raise CommandError(str(exc)) from None
    dsc = result.best_dsc
    message = {
        "held-out cases": f"best validation DSC {dsc:.4f}",
        "training cases": f"best DSC on the training cases {dsc:.4f} (none held out)",
    }.get(result.validation, "no validation: best/ is the last epoch")
    if args.progress == "json":
        total = config.total_steps
        write_progress_line(sys.stdout, "done", total, total, message, model=str(result.best), last=str(result.last))
    else:
        sys.stdout.write(f"{result.best}\n")
    return 0

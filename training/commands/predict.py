"""`python -m training predict`: segment a CT/MRI volume with a segmentation model card."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from MedDINOv3Core.case_folders import (
    OUTPUT_SUFFIXES,
    DuplicateCaseError,
    folder_cases,
    output_suffix,
    plan_cases,
    probability_maps,
)
from training.common import (
    CommandError,
    Progress,
    UsageError,
    add_progress_argument,
    check_cache_folder,
    check_output_folder,
    positive_int,
    refuse_output_over_input,
)
from training.outputs import (
    add_output_arguments,
    check_output_folder_rule,
    output_rule,
    prepare_output_file,
    prepare_output_files,
    replacing_output,
)

NAME = "predict"
HELP = "segment a volume (NIfTI, NRRD, MHA/MHD or a DICOM series folder) with a segmentation model"
EXAMPLES = (
    """examples:
  python -m training predict --model runs/amos-vitb --input ct.nii.gz --output seg.nii.gz
  python -m training predict --model runs/amos-vitb --input dicom/CT_series/ --output seg.seg.nrrd --tta
  python -m training predict --model runs/amos-vitb --input ct.nrrd --output seg.nrrd --device cpu --batch-size 2
  python -m training predict --model runs/amos-vitb --input ct.nii.gz --output seg_fast.nii.gz --fast
  python -m training predict --model runs/amos-vitb --input ct.nii.gz --output seg.nii.gz --overwrite   (run again)
  python -m training predict --model runs/amos-vitb --input ct.mha --output seg.mha --progress json
  python -m training predict --model runs/amos-vitb --input imagesTs/ --output predictions/ --suffix .seg.nrrd
  python -m training explore --model runs/backbone --input ct.nii.gz --cache-dir ct-features    (once per volume)
  python -m training finetune --config finetune_fewshot --data painted/ --out runs/fs --init runs/backbone
  python -m training predict --model runs/fs/best --input ct.nii.gz --output seg_fs.nii.gz --features ct-features

The output has exactly the input's size, spacing, origin and direction. Its format follows the output suffix:
.nii.gz/.nii, .nrrd, .mha/.mhd, or .seg.nrrd (a 3D Slicer segmentation carrying the model's segment names, colours
and terminology). With --probabilities DIR, one float32 probability map per class is written there as NRRD.

A folder of volumes as --input (files ending in .nii.gz, .nii, .nrrd, .mha or .mhd) is segmented case by case
with one model load, nnU-Net style: imagesTs/case_0000.nii.gz -> OUTPUT/case.nii.gz (the input's suffix, or
--suffix). Each case's output appears complete or not at all; a failed case is reported and the others go on.
A folder holding no such files is read as one DICOM series.

--features CACHE_DIR: a few-shot model (finetune_fewshot) segments the volume from its feature cache, the head
alone (no backbone pass: seconds on a CPU); the cache must come from the same volume, the model's backbone and
preprocessing (else a one-line error), and the result equals the plain prediction up to the cache's float16 precision.

A summary follows: the labels found with their volumes in mL (voxels x voxel volume), the time and the device.

"""
    + output_rule()
    + """
Into a folder of cases, the cases' existing outputs (labelmaps, probability folders) are what --overwrite replaces,
each when its case is written; other files in the folder are left alone.
"""
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="segmentation model: a model-card directory, a registry name or org/name"
    )
    parser.add_argument(
        "--input",
        required=True,
        help="input volume file, DICOM series folder, or a folder of volumes (one a case); FOLDER::SeriesInstanceUID "
        "chooses one series of a DICOM folder holding several",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output labelmap (" + ", ".join(OUTPUT_SUFFIXES) + "), or a folder when --input is a folder of volumes",
    )
    parser.add_argument(
        "--suffix", choices=OUTPUT_SUFFIXES, help="output format for a folder of volumes (default: each input's)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    parser.add_argument("--tta", action="store_true", default=None, help="mirroring test-time augmentation (4x time)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="CPU fast mode, approximate (BENCHMARKS.md, issue 19): each batch cropped to the body's bounding box "
        "(CT above -500 HU, one patch of margin; slices without body are background) and, inside it, only the "
        "patches with body run (air patches are background), and only slices about 3 mm apart run (the ones "
        "between get interpolated logits)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="run the model through torch.compile (GPU; the first batch compiles)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="slices per forward pass (default: the model's)"
    )
    parser.add_argument(
        "--probabilities", metavar="DIR", help="also write per-class probability maps into DIR (DIR/CASE/ per case)"
    )
    parser.add_argument("--cache-dir", help="Hugging Face hub cache for models given by name")
    parser.add_argument(
        "--features",
        metavar="CACHE_DIR",
        help="few-shot models: predict from the volume's feature cache (`explore --cache-dir`), no backbone pass",
    )
    add_output_arguments(parser)
    add_progress_argument(parser)


def run(args) -> int:
    source, output = Path(args.input).expanduser(), Path(args.output).expanduser()
    plan = _check_usage(args, source, output)
    probabilities = Path(args.probabilities).expanduser() if args.probabilities else None
    maps = _check_existing(args, output, plan, probabilities)
    quiet = args.progress == "json"
    from MedDINOv3Core.case_folders import write_prediction
    from MedDINOv3Core.progress import Cancelled

    try:
        with Progress(args.progress) as progress:
            model, card = _load(args, progress)
            if plan is not None:
                return _run_folder(model, card, plan, args, progress, quiet)
            prediction = _predict_one(model, card, source, args, progress)
            with replacing_output(probabilities, maps):  # the earlier maps come back if the write fails
                write_prediction(prediction, output, probabilities, progress)
    except Cancelled as exc:
        raise CommandError(str(exc)) from None
    if not quiet:
        print(_summary(prediction, f"{source.name} -> {output}"))
    return 0


def _check_usage(args, source: Path, output: Path):
    """The usage checks; returns the plan of a folder of cases (MedDINOv3Core.case_folders), or None for one volume."""
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    refuse_output_over_input(
        {"--output": output, "--probabilities": args.probabilities}, {"--input": source, "--model": args.model}
    )
    check_cache_folder("--cache-dir", args.cache_dir)
    if args.probabilities:
        check_output_folder("--probabilities", Path(args.probabilities).expanduser())
    cases = folder_cases(source) if source.is_dir() else []
    if source.is_dir() and not cases and not any(source.iterdir()):
        raise CommandError(f"--input {source} is an empty folder; put volumes (case_0000.nii.gz, ...) in it")
    if cases and args.features:
        raise UsageError("--features serves one volume (its feature cache); give one --input file, not a folder")
    if args.features and args.fast:
        raise UsageError("--features and --fast do not combine: the cache already skips the backbone; drop --fast")
    if args.features and args.tta:
        raise UsageError("--features and --tta do not combine: mirrored features are not cached; drop one")
    if not cases:
        if not output_suffix(output):
            raise UsageError(f"--output {output}: unsupported suffix; use one of {', '.join(OUTPUT_SUFFIXES)}")
        if output.is_dir():
            raise UsageError(f"--output {output} is a folder; give a file name ({', '.join(OUTPUT_SUFFIXES)})")
        return None
    if output.is_file():
        raise UsageError(f"--output {output} is a file; with a folder of volumes as --input give an output folder")
    if output_suffix(output) and not output.is_dir():
        raise UsageError(f"--output {output} looks like a file; with a folder as --input give an output folder")
    try:
        return plan_cases(cases, output, args.suffix)
    except DuplicateCaseError as exc:
        raise UsageError(str(exc)) from None


def _check_existing(args, output: Path, plan, probabilities: Path | None) -> tuple[str, ...]:
    """The rerun rule (training/outputs.py) before any work; returns the earlier probability maps --overwrite
    replaces (one volume)."""
    if plan is not None:
        prepare_output_files("--output", output, [case.target for case in plan], args.overwrite)
        if probabilities is not None:
            prepare_output_files(
                "--probabilities", probabilities, [probabilities / c.name for c in plan], args.overwrite
            )
        return ()
    prepare_output_file("--output", output, args.overwrite)
    if probabilities is None:
        return ()
    maps = probability_maps(probabilities)
    rule = {"command": "predict", "owned": maps, "markers": maps, "option": "--probabilities"}
    check_output_folder_rule(probabilities, overwrite=args.overwrite, **rule)
    return maps if args.overwrite else ()


def _load(args, progress):
    from MedDINOv3Core.hub import resolve_model
    from MedDINOv3Core.weights import load_model

    card_dir = resolve_model(args.model, cache_dir=args.cache_dir, progress=progress)
    model, card = load_model(card_dir, device="cpu")
    if card.task != "segmentation":
        raise CommandError(
            f"{args.model} is a {card.task} model, not a segmentation model; fine-tune one with "
            "`python -m training finetune` or pick a segmentation model (`python -m training models`)"
        )
    return model, card


def _predict_one(model, card, source: Path, args, progress):
    """One volume: the model over it (MedDINOv3Core.inference), or with --features the head over its feature cache."""
    from MedDINOv3Core.inference import FastConfig, predict_volume
    from MedDINOv3Core.volume_io import read_volume
    from MedDINOv3Core.weights import domain_warning

    domain_warning(card, source)  # one line when a phantom-trained model meets a real CT
    volume = read_volume(source)
    if getattr(args, "features", None):
        return _predict_from_cache(model, card, volume, args, progress)
    return predict_volume(model, card, volume, device=args.device, batch_size=args.batch_size, tta=args.tta,
                          fast=FastConfig() if args.fast else None, compile=args.compile,
                          return_probabilities=bool(args.probabilities), progress=progress)  # fmt: skip


def _predict_from_cache(model, card, volume, args, progress):
    """The few-shot head on the volume's feature cache (MedDINOv3Core.fewshot_cache); a mismatch is one line."""
    from MedDINOv3Core.feature_cache import FeatureCache, FeatureCacheError
    from MedDINOv3Core.fewshot_cache import predict_from_cache

    batch_size, probabilities = args.batch_size or 2, bool(args.probabilities)
    try:
        cache = FeatureCache.open(args.features)
        return predict_from_cache(model, card, volume, cache, batch_size=batch_size,
                                  return_probabilities=probabilities, progress=progress)  # fmt: skip
    except FeatureCacheError as exc:
        raise CommandError(f"--features: {exc}") from None


def _run_folder(model, card, plan, args, progress, quiet: bool) -> int:
    """Each planned case predicted and written (MedDINOv3Core.case_folders.predict_cases), a line a case, a summary."""
    from MedDINOv3Core.case_folders import predict_cases

    timings = []  # (seconds, device) of each case written

    def on_case(i, case, prediction, error) -> None:
        if prediction is not None:
            timings.append((prediction.seconds, prediction.device))
        if not quiet:
            progress.close()
            if error is not None:
                print(f"[{i + 1}/{len(plan)}] {case.name}: FAILED: {error}", file=sys.stderr)
            else:
                print(f"[{i + 1}/{len(plan)}] " + _summary(prediction, f"{case.source.name} -> {case.target.name}"))

    probs_root = Path(args.probabilities).expanduser() if args.probabilities else None
    predict_one = functools.partial(_predict_one, model, card, args=args, progress=progress)
    failed = predict_cases(plan, predict_one, probs_root, on_case=on_case, progress=progress)
    if not quiet:
        seconds, device = sum(t[0] for t in timings), (timings[-1][1] if timings else "") or args.device
        print(f"{len(plan) - len(failed)} of {len(plan)} cases written to {plan[0].target.parent} "
              f"({seconds:.1f} s on {device})")  # fmt: skip
    if failed:
        names = ", ".join(f.name for f in failed)
        raise CommandError(f"{len(failed)} of {len(plan)} cases failed ({names}); see the messages above")
    return 0


def _summary(prediction, title: str) -> str:
    """Labels found with their volumes (mL), the labels not found, the time and the device."""
    from MedDINOv3Core.inference import structure_volumes

    rows = structure_volumes(prediction.labelmap, prediction.labels)
    found = [r for r in rows if r[2]]
    lines = [f"{title}: {len(found)} of {len(rows)} labels found in {prediction.seconds:.1f} s on {prediction.device}"]
    width = max((len(r[1]) for r in found), default=0)
    lines += [f"  {n:<{width}}  {ml:10.2f} mL  ({count} voxels, label {v})" for v, n, count, ml in found]
    missing = [r[1] for r in rows if not r[2]]
    if missing:
        lines.append("  not found: " + ", ".join(missing))
    return "\n".join(lines)

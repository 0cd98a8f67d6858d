"""`python -m training predict`: segment a CT/MRI volume with a segmentation model card."""

from __future__ import annotations

import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

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

NAME = "predict"
HELP = "segment a volume (NIfTI, NRRD, MHA/MHD or a DICOM series folder) with a segmentation model"
EXAMPLES = """examples:
  python -m training predict --model runs/amos-vitb --input ct.nii.gz --output seg.nii.gz
  python -m training predict --model runs/amos-vitb --input dicom/CT_series/ --output seg.seg.nrrd --tta
  python -m training predict --model runs/amos-vitb --input ct.nrrd --output seg.nrrd --device cpu --batch-size 2
  python -m training predict --model runs/amos-vitb --input ct.nii.gz --output seg.nii.gz --fast
  python -m training predict --model runs/amos-vitb --input ct.mha --output seg.mha --progress json
  python -m training predict --model runs/amos-vitb --input imagesTs/ --output predictions/ --suffix .seg.nrrd
  python -m training explore --model runs/backbone --input ct.nii.gz --cache-dir ct-features    (once per volume)
  python -m training finetune --config finetune_fewshot --data painted/ --out runs/fs --init runs/backbone
  python -m training predict --model runs/fs/best --input ct.nii.gz --output seg.nii.gz --features ct-features

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

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
INPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
log = logging.getLogger(__name__)


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
    add_progress_argument(parser)


def _output_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), "")


def case_name(path: Path) -> tuple[str, str]:
    """(case, suffix) of an input file: nnU-Net's channel tag is dropped (``case_0000.nii.gz`` -> ``case``)."""
    suffix = _input_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)]
    return re.sub(r"_\d{4}$", "", stem), suffix


def _input_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in INPUT_SUFFIXES if name.endswith(s)), "")


def folder_cases(folder: Path) -> list[Path]:
    """The volume files directly in ``folder`` (sorted); hidden files and .seg.nrrd segmentations are skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _input_suffix(p) and not p.name.lower().endswith(".seg.nrrd")
    )


def run(args) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    source = Path(args.input).expanduser()
    output = Path(args.output).expanduser()
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
    if cases:
        if output.is_file():
            raise UsageError(f"--output {output} is a file; with a folder of volumes as --input give an output folder")
        if _output_suffix(output) and not output.is_dir():
            raise UsageError(f"--output {output} looks like a file; with a folder as --input give an output folder")
        plan = _plan_cases(cases, output, args.suffix)
    else:
        suffix = _output_suffix(output)
        if not suffix:
            raise UsageError(f"--output {output}: unsupported suffix; use one of {', '.join(OUTPUT_SUFFIXES)}")
        if output.is_dir():
            raise UsageError(f"--output {output} is a folder; give a file name ({', '.join(OUTPUT_SUFFIXES)})")
        plan = None
    quiet = args.progress == "json"
    from MedDINOv3Core.progress import Cancelled

    try:
        with Progress(args.progress) as progress:
            model, card = _load(args, progress)
            if plan is not None:
                return _run_folder(model, card, plan, args, progress, quiet)
            prediction = _predict_one(model, card, source, args, progress)
            probabilities = Path(args.probabilities).expanduser() if args.probabilities else None
            _write_case(prediction, output, probabilities, progress)
            progress("write", 1, 1, output.name)
    except Cancelled as exc:
        raise CommandError(str(exc)) from None
    if not quiet:
        print(_summary(prediction, f"{source.name} -> {output}"))
    return 0


def _plan_cases(cases: list[Path], output: Path, suffix: str | None) -> list[tuple[str, Path, Path]]:
    """(case, input, output) per input file; two inputs naming the same case is a usage error."""
    plan, seen = [], {}
    for path in cases:
        name, in_suffix = case_name(path)
        out_suffix = suffix or (in_suffix if in_suffix in OUTPUT_SUFFIXES else ".nii.gz")
        if name in seen:
            raise UsageError(
                f"{seen[name].name} and {path.name} are both case {name!r} (one channel per case is supported)"
            )
        seen[name] = path
        plan.append((name, path, output / f"{name}{out_suffix}"))
    return plan


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
    from MedDINOv3Core.inference import FastConfig, predict_volume
    from MedDINOv3Core.volume_io import read_volume
    from MedDINOv3Core.weights import domain_warning

    domain_warning(card, source)  # one line when a phantom-trained model meets a real CT
    if getattr(args, "features", None):
        return _predict_from_cache(model, card, read_volume(source), args, progress)
    return predict_volume(
        model,
        card,
        read_volume(source),
        device=args.device,
        batch_size=args.batch_size,
        tta=args.tta,
        fast=FastConfig() if args.fast else None,
        compile=args.compile,
        return_probabilities=bool(args.probabilities),
        progress=progress,
    )


def _predict_from_cache(model, card, volume, args, progress):
    """The few-shot head on the volume's feature cache (MedDINOv3Core.fewshot_cache); a mismatch is one line."""
    from MedDINOv3Core.feature_cache import FeatureCache, FeatureCacheError
    from MedDINOv3Core.fewshot_cache import predict_from_cache

    try:
        cache = FeatureCache.open(args.features)
        return predict_from_cache(
            model,
            card,
            volume,
            cache,
            batch_size=args.batch_size or 2,
            return_probabilities=bool(args.probabilities),
            progress=progress,
        )
    except FeatureCacheError as exc:
        raise CommandError(f"--features: {exc}") from None


def _write_case(prediction, output: Path, probabilities: Path | None, progress=None) -> None:
    """The probability maps first, the labelmap last (each atomic), so a labelmap that exists is a complete case."""
    from MedDINOv3Core.volume_io import write_segmentation, write_volume

    if progress is not None:
        progress("write", 0, 1, output.name)
    if probabilities is not None:
        _write_probabilities(prediction, probabilities, write_volume)
    if _output_suffix(output) == ".seg.nrrd":
        write_segmentation(prediction.labelmap, output, prediction.labels)
    else:
        write_volume(prediction.labelmap, output)


def _run_folder(model, card, plan, args, progress, quiet: bool) -> int:
    from MedDINOv3Core.atomic import replace_directory
    from MedDINOv3Core.progress import Cancelled

    output = plan[0][2].parent
    output.mkdir(parents=True, exist_ok=True)
    probs_root = Path(args.probabilities).expanduser() if args.probabilities else None
    failed, seconds, device = [], 0.0, ""
    for i, (name, source, target) in enumerate(plan):
        progress("case", i, len(plan), name)
        try:
            prediction = _predict_one(model, card, source, args, progress)
            tmp = None
            if probs_root is not None:
                probs_root.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=probs_root))
            try:
                _write_case(prediction, target, tmp)
                if tmp is not None:
                    replace_directory(tmp, probs_root / name)
            finally:
                if tmp is not None and tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        except Cancelled:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            failed.append(name)
            log.debug("case %s failed", name, exc_info=True)
            if not quiet:
                progress.close()
                print(f"[{i + 1}/{len(plan)}] {name}: FAILED: {exc}", file=sys.stderr)
            continue
        seconds, device = seconds + prediction.seconds, prediction.device
        if not quiet:
            progress.close()
            print(f"[{i + 1}/{len(plan)}] " + _summary(prediction, f"{source.name} -> {target.name}"))
    progress("case", len(plan), len(plan), "")
    done = len(plan) - len(failed)
    if not quiet:
        print(f"{done} of {len(plan)} cases written to {output} ({seconds:.1f} s on {device or args.device})")
    if failed:
        raise CommandError(f"{len(failed)} of {len(plan)} cases failed ({', '.join(failed)}); see the messages above")
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


def _write_probabilities(prediction, folder: Path, write_volume) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = ["background"] + [label.name for label in prediction.labels]
    for c, name in enumerate(names):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        write_volume(prediction.labelmap.with_array(prediction.probabilities[c]), folder / f"{c:02d}_{safe}.nrrd")

"""`python -m training predict`: segment a CT/MRI volume with a segmentation model card."""

from __future__ import annotations

import logging
from pathlib import Path

from training.common import CommandError, Progress, UsageError, add_progress_argument

NAME = "predict"
HELP = "segment a volume (NIfTI, NRRD, MHA/MHD or a DICOM series folder) with a segmentation model"
EXAMPLES = """examples:
  python -m training predict --model runs/amos-vitb --input ct.nii.gz --output seg.nii.gz
  python -m training predict --model runs/amos-vitb --input dicom/CT_series/ --output seg.seg.nrrd --tta
  python -m training predict --model runs/amos-vitb --input ct.nrrd --output seg.nrrd --device cpu --batch-size 2
  python -m training predict --model runs/amos-vitb --input ct.mha --output seg.mha --progress json

The output has exactly the input's size, spacing, origin and direction. Its format follows the output suffix:
.nii.gz/.nii, .nrrd, .mha/.mhd, or .seg.nrrd (a 3D Slicer segmentation carrying the model's segment names, colours
and terminology). With --probabilities DIR, one float32 probability map per class is written there as NRRD.
"""

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="segmentation model: a model-card directory, a registry name or org/name"
    )
    parser.add_argument("--input", required=True, help="input volume file or DICOM series folder")
    parser.add_argument("--output", required=True, help="output labelmap (" + ", ".join(OUTPUT_SUFFIXES) + ")")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    parser.add_argument("--tta", action="store_true", default=None, help="mirroring test-time augmentation (4x time)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the model's)")
    parser.add_argument("--probabilities", metavar="DIR", help="also write per-class probability maps into DIR")
    parser.add_argument("--cache-dir", help="Hugging Face hub cache for models given by name")
    add_progress_argument(parser)


def _output_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), "")


def run(args) -> int:
    from MedDINOv3Core.hub import resolve_model
    from MedDINOv3Core.inference import predict_volume
    from MedDINOv3Core.progress import Cancelled
    from MedDINOv3Core.volume_io import read_volume, write_segmentation, write_volume
    from MedDINOv3Core.weights import load_model

    output = Path(args.output).expanduser()
    suffix = _output_suffix(output)
    if not suffix:
        raise UsageError(f"--output {output}: unsupported suffix; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    with Progress(args.progress) as progress:
        card_dir = resolve_model(args.model, cache_dir=args.cache_dir, progress=progress)
        model, card = load_model(card_dir, device="cpu")
        if card.task != "segmentation":
            raise CommandError(
                f"{args.model} is a {card.task} model, not a segmentation model; fine-tune one with "
                "`python -m training finetune` or pick a segmentation model (`python -m training models`)"
            )
        volume = read_volume(args.input)
        try:
            prediction = predict_volume(
                model,
                card,
                volume,
                device=args.device,
                batch_size=args.batch_size,
                tta=args.tta,
                return_probabilities=bool(args.probabilities),
                progress=progress,
            )
        except Cancelled as exc:
            raise CommandError(str(exc)) from None
        progress("write", 0, 1, output.name)
        if suffix == ".seg.nrrd":
            write_segmentation(prediction.labelmap, output, prediction.labels)
        else:
            write_volume(prediction.labelmap, output)
        if args.probabilities:
            _write_probabilities(prediction, Path(args.probabilities).expanduser(), write_volume)
        progress("write", 1, 1, output.name)
    log.info("wrote %s (%.1f s on %s)", output, prediction.seconds, prediction.device)
    return 0


def _write_probabilities(prediction, folder: Path, write_volume) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = ["background"] + [label.name for label in prediction.labels]
    for c, name in enumerate(names):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        write_volume(prediction.labelmap.with_array(prediction.probabilities[c]), folder / f"{c:02d}_{safe}.nrrd")

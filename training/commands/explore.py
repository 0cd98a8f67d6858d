"""`python -m training explore`: feature cache, PCA colour maps, cosine-similarity maps and previews of a volume."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np

from training.common import (
    CommandError,
    Progress,
    UsageError,
    add_progress_argument,
    check_cache_folder,
    float_range,
    int_range,
    positive_int,
    refuse_output_over_input,
)
from training.outputs import add_output_arguments, output_rule, prepare_output_file

NAME = "explore"
HELP = "explore a model's features on a volume: PCA colour maps, similarity to clicked points, previews"
EXAMPLES = """examples:
  python -m training explore --model models/my-backbone --input ct.nii.gz --pca pca.nrrd --png pca.png
  python -m training explore --model models/my-backbone --input ct.nii.gz --similarity-at 12.5,-30,40 \\
      --out similarity.nrrd --png click.png
  python -m training explore --model runs/amos-vitb --input ct.nrrd --similarity-at 40,50,8 --space ijk \\
      --similarity-at 44,52,8 --combine max --out sim.nii.gz --region region.nrrd --threshold 0.6
  python -m training explore --model models/my-backbone --input ct.nii.gz --cache-dir /tmp/ct-features \\
      --progress json          (only build the feature cache: the Slicer job; clicks then read it with numpy)

The features are extracted once into a float16 cache (default ~/.cache/meddinov3/features/<key>), reused while the
model, the volume, the preprocessing, --layers and --upsample are unchanged. Points are given as X,Y,Z in --space:
ras (3D Slicer world coordinates, the default), lps (DICOM / ITK) or ijk (voxel indices). Output volumes keep the
input's size, spacing, origin and direction: the similarity map as float32, the PCA map as RGB (3 x uint8 per voxel),
the region as a 0/1 labelmap. --png writes an axial slice (through the first point, else the middle) with the maps
overlaid, for a quick look. Write a point with a leading minus as --similarity-at=-12.5,30,40 (with "=").
The feature cache is reused, never an output: the rule below is for --pca, --out, --region and --png.

""" + output_rule()

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="backbone or segmentation model: card directory or registry name"
    )
    parser.add_argument(
        "--input",
        required=True,
        help="input volume file or DICOM series folder; FOLDER::SeriesInstanceUID chooses one series of a folder "
        "holding several",
    )
    parser.add_argument("--pca", metavar="OUT", help="write the PCA colour map (RGB volume: .nrrd, .nii.gz, .mha)")
    parser.add_argument(
        "--similarity-at",
        metavar="X,Y,Z",
        action="append",
        default=[],
        help="a reference point (repeat for several; combined by --combine)",
    )
    parser.add_argument("--space", choices=("ras", "lps", "ijk"), default="ras", help="coordinates of the points")
    parser.add_argument(
        "--scope",
        choices=("volume", "slice"),
        default="volume",
        help="compare with every patch of the volume, or of the point's axial slice only",
    )
    parser.add_argument("--combine", choices=("mean", "max"), default="mean", help="how several points combine")
    parser.add_argument("--out", metavar="OUT", help="write the similarity map (float32 volume)")
    parser.add_argument(
        "--region",
        metavar="OUT",
        help="write the connected region around the first point whose "
        "similarity is at least --threshold (a one-click segmentation labelmap)",
    )
    parser.add_argument(
        "--threshold", type=float_range(-1, 1), default=None, help="similarity threshold for --region, in [-1, 1]"
    )
    parser.add_argument("--png", metavar="PREVIEW", help="write a PNG preview (CT slice, similarity overlay, PCA)")
    parser.add_argument(
        "--layers",
        default=None,
        help="features: 'last' block, 'multiscale' (4 evenly spaced blocks) or block indices like 2,5,8,11 "
        "(default: a segmenter's multi-scale stack, a backbone's last block)",
    )
    parser.add_argument(
        "--upsample", type=int_range(1, 2), default=1, help="1 or 2; 2: finer maps (4x extraction time)"
    )
    parser.add_argument("--cache-dir", help="feature cache directory (default: one per key under ~/.cache/meddinov3)")
    parser.add_argument("--hub-cache-dir", help="Hugging Face hub cache for models given by name")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="slices per forward pass (default: 4; on a GPU sized to its free memory)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the backbone's blocks through torch.compile (GPU; the first batches compile)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="CPU fast extraction: int8 linear layers and only slices about 3 mm apart through the backbone, the "
        "features between interpolated (a separate cache; similarity maps correlate >= 0.98 with plain)",
    )
    add_output_arguments(parser)
    add_progress_argument(parser)


def _point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UsageError(f"--similarity-at {text!r}: give three comma-separated numbers X,Y,Z (finite, not NaN)")
    return values


def _layers(text: str | None):
    if text is None or text in ("last", "multiscale"):
        return text
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--layers {text!r}: use 'last', 'multiscale' or block indices like 2,5,8,11") from None


def _check_suffix(option: str, path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not any(p.name.lower().endswith(s) for s in OUTPUT_SUFFIXES):
        raise UsageError(f"{option} {p}: unsupported suffix; use one of {', '.join(OUTPUT_SUFFIXES)}")
    return p


def run(args) -> int:
    from MedDINOv3Core.explore import pca_map, region_from_similarity, similarity_map
    from MedDINOv3Core.extraction import extract_features
    from MedDINOv3Core.hub import resolve_model
    from MedDINOv3Core.preview import feature_preview, write_png, write_rgb_volume
    from MedDINOv3Core.progress import Cancelled, write_progress_line
    from MedDINOv3Core.volume_io import read_volume, write_volume
    from MedDINOv3Core.weights import domain_warning, load_model

    points = [_point(p) for p in args.similarity_at]
    pca_out = _check_suffix("--pca", args.pca)
    sim_out = _check_suffix("--out", args.out)
    region_out = _check_suffix("--region", args.region)
    if (sim_out or region_out) and not points:
        raise UsageError("--out and --region need at least one --similarity-at point")
    if region_out and args.threshold is None:
        raise UsageError("--region needs --threshold (a similarity in [-1, 1], e.g. 0.6)")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    layers = _layers(args.layers)
    outputs = {"--pca": pca_out, "--out": sim_out, "--region": region_out, "--png": args.png}
    refuse_output_over_input(outputs, {"--input": args.input, "--model": args.model})
    for option, path in outputs.items():
        prepare_output_file(option, path, args.overwrite)
    check_cache_folder("--cache-dir", args.cache_dir)
    check_cache_folder("--hub-cache-dir", args.hub_cache_dir)
    with Progress(args.progress) as progress:
        model, card = load_model(
            resolve_model(args.model, cache_dir=args.hub_cache_dir, progress=progress), device="cpu"
        )
        volume = read_volume(args.input)
        domain_warning(card, args.input)
        try:
            cache = extract_features(
                model,
                card,
                volume,
                cache_dir=args.cache_dir,
                layers=layers,
                upsample=args.upsample,
                batch_size=args.batch_size,
                device=args.device,
                progress=progress,
                fast=args.fast,
                compile=args.compile,
            )
        except Cancelled as exc:
            raise CommandError(str(exc)) from None
        similarity = rgb = None
        if points:
            progress("similarity", 0, 1, f"{len(points)} point(s)")
            similarity = similarity_map(cache, points, space=args.space, scope=args.scope, combine=args.combine)
            progress("similarity", 1, 1, "")
            if sim_out:
                write_volume(volume.with_array(similarity), sim_out)
            if region_out:
                region = region_from_similarity(similarity, points[0], args.threshold, space=args.space, geometry=cache)
                write_volume(volume.with_array(region.astype(np.uint8)), region_out)
                log.info("region around the first point: %d voxels", int(region.sum()))
        if pca_out or args.png:
            progress("pca", 0, 1, "")
            rgb = pca_map(cache)
            progress("pca", 1, 1, "")
            if pca_out:
                write_rgb_volume(rgb, volume, pca_out)
        if args.png:
            write_png(Path(args.png).expanduser(), feature_preview(cache, volume, similarity, rgb, points, args.space))
    if args.progress == "json":
        write_progress_line(sys.stdout, "done", cache=str(cache.path))
    else:
        print(cache.path)
    return 0

"""`python -m training explore`: feature cache, PCA colour maps, cosine-similarity maps and previews of a volume."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from training.common import CommandError, Progress, UsageError, add_progress_argument

NAME = "explore"
HELP = "explore a model's features on a volume: PCA colour maps, similarity to clicked points, previews"
EXAMPLES = """examples:
  python -m training explore --model models/my-backbone --input ct.nii.gz --pca pca.nrrd --png pca.png
  python -m training explore --model models/my-backbone --input ct.nii.gz --similarity-at 12.5,-30,40 \\
      --out similarity.nrrd --png click.png
  python -m training explore --model runs/amos-vitb --input ct.nrrd --similarity-at 128,140,60 --space ijk \\
      --similarity-at 120,150,60 --combine max --out sim.nii.gz --region region.nrrd --threshold 0.6
  python -m training explore --model models/my-backbone --input ct.nii.gz --cache-dir /tmp/ct-features \\
      --progress json          (only build the feature cache: the Slicer job; clicks then read it with numpy)

The features are extracted once into a float16 cache (default ~/.cache/meddinov3/features/<key>), reused while the
model, the volume, the preprocessing, --layers and --upsample are unchanged. Points are given as X,Y,Z in --space:
ras (3D Slicer world coordinates, the default), lps (DICOM / ITK) or ijk (voxel indices). Output volumes keep the
input's size, spacing, origin and direction: the similarity map as float32, the PCA map as RGB (3 x uint8 per voxel),
the region as a 0/1 labelmap. --png writes an axial slice (through the first point, else the middle) with the maps
overlaid, for a quick look. Write a point with a leading minus as --similarity-at=-12.5,30,40 (with "=").
"""

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="backbone or segmentation model: card directory or registry name"
    )
    parser.add_argument("--input", required=True, help="input volume file or DICOM series folder")
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
    parser.add_argument("--threshold", type=float, default=None, help="similarity threshold for --region, in [-1, 1]")
    parser.add_argument("--png", metavar="PREVIEW", help="write a PNG preview (CT slice, similarity overlay, PCA)")
    parser.add_argument(
        "--layers",
        default=None,
        help="features: 'last' block, 'multiscale' (4 evenly spaced blocks) or block indices like 2,5,8,11 "
        "(default: a segmenter's multi-scale stack, a backbone's last block)",
    )
    parser.add_argument("--upsample", type=int, choices=(1, 2), default=1, help="2: finer maps (4x extraction time)")
    parser.add_argument("--cache-dir", help="feature cache directory (default: one per key under ~/.cache/meddinov3)")
    parser.add_argument("--hub-cache-dir", help="Hugging Face hub cache for models given by name")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per forward pass")
    add_progress_argument(parser)


def _point(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UsageError(f"--similarity-at {text!r}: give three comma-separated numbers X,Y,Z")
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


def _resolve(model: str, cache_dir: str | None, progress) -> Path:
    from MedDINOv3Core.weights import is_model_card

    path = Path(model).expanduser()
    if is_model_card(path):
        return path
    from MedDINOv3Core.hub import resolve_model

    return resolve_model(model, cache_dir=cache_dir, progress=progress)


def run(args) -> int:
    from MedDINOv3Core.data.volume import read_volume, write_volume
    from MedDINOv3Core.explore import extract_features, pca_map, region_from_similarity, similarity_map
    from MedDINOv3Core.progress import Cancelled
    from MedDINOv3Core.weights import load_model

    points = [_point(p) for p in args.similarity_at]
    pca_out = _check_suffix("--pca", args.pca)
    sim_out = _check_suffix("--out", args.out)
    region_out = _check_suffix("--region", args.region)
    if (sim_out or region_out) and not points:
        raise UsageError("--out and --region need at least one --similarity-at point")
    if region_out and args.threshold is None:
        raise UsageError("--region needs --threshold (a similarity in [-1, 1], e.g. 0.6)")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    layers = _layers(args.layers)
    with Progress(args.progress) as progress:
        model, card = load_model(_resolve(args.model, args.hub_cache_dir, progress), device="cpu")
        volume = read_volume(args.input)
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
            write_preview(Path(args.png).expanduser(), cache, volume, similarity, rgb, points, args.space)
    if args.progress == "json":
        sys.stdout.write(json.dumps({"stage": "done", "cache": str(cache.path)}) + "\n")
    else:
        print(cache.path)
    return 0


def write_rgb_volume(rgb: np.ndarray, reference, path: Path) -> Path:
    """uint8 (z, y, x, 3) -> an RGB vector image with the reference volume's geometry (atomic write)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True)
    image.SetSpacing(reference.spacing)
    image.SetOrigin(reference.origin)
    image.SetDirection(reference.direction)
    return _atomic_write(image, path)


def _atomic_write(image, path: Path) -> Path:
    import SimpleITK as sitk

    from MedDINOv3Core.atomic import atomic_path

    suffix = next((s for s in (*OUTPUT_SUFFIXES, ".png") if path.name.lower().endswith(s)), path.suffix)
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path


def _heat(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> a black-red-yellow-white colour ramp, float (..., 3) in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None] * 3.0
    return np.clip(np.concatenate([v, v - 1.0, v - 2.0], axis=-1), 0.0, 1.0)


def write_preview(path: Path, cache, volume, similarity, rgb, points, space: str) -> Path:
    """A PNG of one axial slice: the CT (window 400/40 HU), the similarity overlay and the PCA colours side by side.

    Radiological display: anterior up, patient right on the image's left (the axial layout of the preprocess).
    """
    import SimpleITK as sitk

    from MedDINOv3Core.explore import points_to_index

    mapping = cache.mapping
    marker = None
    if points:
        axial = mapping.to_axial_index(points_to_index(cache, points[0], space))[0]
        k, marker = int(axial[0]), (int(axial[1]), int(axial[2]))
    else:
        k = mapping.n_slices // 2
    ct = mapping.axial_view(volume.array)[k].astype(np.float32)
    grey = np.clip((ct - (40.0 - 200.0)) / 400.0, 0.0, 1.0)[..., None].repeat(3, axis=-1)
    panels = [grey]
    if similarity is not None:
        sim = mapping.axial_view(similarity)[k]
        alpha = 0.6 * np.clip(sim, 0.0, 1.0)[..., None]
        overlay = (1 - alpha) * grey + alpha * _heat(sim)
        if marker is not None:
            r, c = marker
            overlay[max(0, r - 3) : r + 4, c] = (0.0, 1.0, 0.0)
            overlay[r, max(0, c - 3) : c + 4] = (0.0, 1.0, 0.0)
        panels.append(overlay)
    if rgb is not None:
        panels.append(np.moveaxis(mapping.axial_view(np.moveaxis(rgb, -1, 0))[:, k], 0, -1) / 255.0)
    separator = np.ones((grey.shape[0], 2, 3))
    image = np.concatenate([p for panel in panels for p in (panel, separator)][:-1], axis=1)
    out = sitk.GetImageFromArray(np.rint(image * 255).astype(np.uint8), isVector=True)
    return _atomic_write(out, path)

"""`python -m training evaluate`: per-case, per-class DSC and NSD of predicted label maps against references."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from training.common import CommandError, Progress, UsageError, add_progress_argument

log = logging.getLogger(__name__)

NAME = "evaluate"
HELP = "score predicted label maps against reference label maps: DSC and normalized surface Dice per case and class"
EXAMPLES = """examples:
  python -m training evaluate --pred runs/pred --gt data/labelsTs --out runs/eval
  python -m training evaluate --pred pred --gt gt --labels models/liver-seg --tolerance 2 --out eval
  python -m training evaluate --pred pred --gt gt --labels dataset.json --tolerance 1 --tolerance liver=5 \\
      --tolerance 3=2.5 --out eval --name "MedDINOv3 ViT-B"

Files are matched by name without the image suffix (case_001.nii.gz in --pred matches case_001.nrrd in --gt);
NIfTI, NRRD, MetaImage and Slicer .seg.nrrd files are read. Each prediction must lie on its reference's voxel grid
(same shape, spacing, origin and direction). --labels takes a model card directory, its config.json, an nnU-Net
dataset.json or a JSON list of {"value", "name"} entries; without it every non-zero value found is scored as
"label N".
--tolerance: a number sets the NSD tolerance (mm) of every class (default 2.0); NAME=MM or VALUE=MM sets one class.

Writes into --out: per_case.csv (one row per case and class), summary.md (mean DSC and NSD per class and overall, in
percent, shaped like the MedDINOv3 paper's Table 2) and summary.json. Conventions (empty masks, surfaces): see
MedDINOv3Core/metrics.py. A class absent from both the prediction and the reference of a case is left out of the
means (NaN in the CSV).
"""

GEOMETRY_TOLERANCE_MM = 1e-3  # NIfTI stores geometry in float32: allow its rounding, nothing a voxel would notice


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
    parser.add_argument("--gt", required=True, metavar="DIR", help="folder of reference label maps")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write per_case.csv and summary.md into")
    parser.add_argument(
        "--labels",
        metavar="PATH",
        help="class names: a model card directory or config.json, an nnU-Net dataset.json, or a JSON label list",
    )
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
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
    add_progress_argument(parser)


# ----------------------------------------------------------------------------------------------- inputs


def _case_files(folder: Path, what: str) -> dict[str, Path]:
    from MedDINOv3Core.data.volume import image_suffix

    if not folder.is_dir():
        raise CommandError(f"{what} folder not found: {folder}; give a folder of label maps (.nii.gz, .nrrd, .mha)")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = image_suffix(path)
        if not path.is_file() or not suffix or path.name.startswith("."):
            continue
        case = path.name[: -len(suffix)]
        if case in cases:
            raise CommandError(
                f"{what} folder {folder} holds two files for case {case!r} ({cases[case].name}, {path.name}); keep one"
            )
        cases[case] = path
    return cases


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"could not read labels from {path}: {exc}") from None


def load_label_names(source: str | os.PathLike) -> dict[int, str]:
    """{value: name} of the classes to score, from a model card, a config.json, a dataset.json or a label list."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CommandError(f"labels file not found: {path}; give a model card folder, config.json or dataset.json")
    data = _read_json(path)
    entries = data.get("labels") if isinstance(data, dict) else data
    names: dict[int, str] = {}
    if isinstance(entries, dict):  # nnU-Net dataset.json: {"background": 0, "liver": 1, "tumour": [1, 2], ...}
        for name, value in entries.items():
            if isinstance(value, list):
                raise CommandError(
                    f"{path}: label {name!r} is a region (a list of values); evaluate regions by merging them first"
                )
            names[int(value)] = str(name)
    elif isinstance(entries, list):
        for entry in entries:
            if not isinstance(entry, dict) or "value" not in entry:
                raise CommandError(f"{path}: every label entry needs a 'value' (and a 'name'); got {entry!r}")
            names[int(entry["value"])] = str(entry.get("name", f"label {entry['value']}"))
    else:
        raise CommandError(f"{path} holds no labels: expected a 'labels' list (model card) or mapping (dataset.json)")
    names.pop(0, None)  # background is not scored
    if not names:
        raise CommandError(f"{path} declares no foreground classes to score")
    return dict(sorted(names.items()))


def parse_tolerances(items: list[str], names: dict[int, str]) -> dict[int, float]:
    """``["2", "liver=5", "3=1.5"]`` -> {value: mm} for every class (a bare number is the default, 2.0 otherwise)."""
    default, per_class = 2.0, {}
    by_name = {name.lower(): value for value, name in names.items()}
    for item in items:
        key, sep, mm_text = item.rpartition("=")
        try:
            mm = float(mm_text)
        except ValueError:
            raise UsageError(f"--tolerance {item!r}: {mm_text!r} is not a number of millimetres") from None
        if not (math.isfinite(mm) and mm >= 0):
            raise UsageError(f"--tolerance {item!r}: the tolerance must be >= 0 mm")
        if not sep:
            default = mm
            continue
        key = key.strip()
        if key.lower() in by_name:
            per_class[by_name[key.lower()]] = mm
        elif key.lstrip("-").isdigit() and int(key) in names:
            per_class[int(key)] = mm
        else:
            known = ", ".join(f"{v}={n}" for v, n in names.items())
            raise UsageError(f"--tolerance {item!r}: no class {key!r}; the classes are {known}")
    return {value: per_class.get(value, default) for value in names}


def _check_geometry(case: str, pred, gt) -> None:
    import numpy as np

    if pred.shape != gt.shape:
        raise CommandError(
            f"case {case!r}: the prediction's shape (z, y, x) {pred.shape} differs from the reference's {gt.shape}; "
            "predict on the reference's grid (or resample the prediction onto it) and evaluate again"
        )
    for what, a, b in (
        ("spacing", pred.spacing, gt.spacing),
        ("origin", pred.origin, gt.origin),
        ("direction", pred.direction, gt.direction),
    ):
        if np.max(np.abs(np.subtract(a, b))) > GEOMETRY_TOLERANCE_MM:
            fmt = ", ".join
            raise CommandError(
                f"case {case!r}: the prediction's {what} ({fmt(f'{v:.6g}' for v in a)}) differs from the "
                f"reference's ({fmt(f'{v:.6g}' for v in b)}); the files do not lie on the same voxel grid: predict on "
                "the reference image itself (or resample the prediction onto it) and evaluate again"
            )


def _label_array(case: str, volume, what: str, declared: set[int] | None):
    import numpy as np

    array = volume.array
    if not np.issubdtype(array.dtype, np.integer):
        if np.any(array != np.round(array)):
            raise CommandError(f"case {case!r}: the {what} holds non-integer values; it is not a label map")
        array = array.astype(np.int32)
    if declared is not None:
        extra = sorted(set(np.unique(array).tolist()) - declared - {0})
        if extra:
            raise CommandError(
                f"case {case!r}: the {what} holds label value(s) {extra[:10]} that --labels does not declare; use the "
                "label table the maps were made with"
            )
    return array


# ----------------------------------------------------------------------------------------------- outputs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pct(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def summary_markdown(method: str, summaries, overall_dice: float, overall_nsd: float, names, tolerances, meta) -> str:
    """The markdown report: one row like the paper's Table 2 (mean DSC and NSD, percent), then the per-class table."""
    lines = [
        f"# Evaluation: {method}",
        "",
        f"{meta['cases']} cases; predictions `{meta['pred']}`, references `{meta['gt']}`; "
        f"NSD surface: {meta['surface']}.",
        "",
        "| Method | DSC (%) | NSD (%) |",
        "|---|---:|---:|",
        f"| {method} | {_pct(overall_dice)} | {_pct(overall_nsd)} |",
        "",
        "Per class: mean ± standard deviation over the cases where the class is in the reference or the prediction "
        "(n); the overall score is the mean of the class means.",
        "",
        "| Class | Value | n | NSD tolerance (mm) | DSC (%) | NSD (%) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {names.get(s.label, f'label {s.label}')} | {s.label} | {s.n} | {tolerances[s.label]:g} | "
            f"{_pct(s.dice_mean, s.dice_std)} | {_pct(s.nsd_mean, s.nsd_std)} |"
        )
    lines.append(f"| **Mean** | | | | **{_pct(overall_dice)}** | **{_pct(overall_nsd)}** |")
    return "\n".join(lines) + "\n"


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = ["case", "label", "name", "dice", "nsd", "tolerance_mm", "gt_volume_ml", "pred_volume_ml"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6f}"


# ----------------------------------------------------------------------------------------------- run


def _read_label_map(path: Path):
    """A label map Volume from a NIfTI / NRRD / MetaImage file or a Slicer .seg.nrrd (its label values)."""
    from MedDINOv3Core.data.volume import image_suffix, read_volume

    if image_suffix(path) == ".seg.nrrd":
        from MedDINOv3Core.data.segfile import read_segmentation

        return read_segmentation(path)[0]
    return read_volume(path)


def run(args) -> int:
    from MedDINOv3Core.metrics import evaluate_case, summarize

    pred_dir, gt_dir, out_dir = Path(args.pred).expanduser(), Path(args.gt).expanduser(), Path(args.out).expanduser()
    gt_files, pred_files = _case_files(gt_dir, "reference"), _case_files(pred_dir, "prediction")
    if not gt_files:
        raise CommandError(f"no label maps (.nii.gz, .nii, .nrrd, .mha, .mhd) in the reference folder {gt_dir}")
    missing = [case for case in gt_files if case not in pred_files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CommandError(
            f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {shown}; predict them (same file "
            "name) or remove them from the reference folder"
        )
    extra = sorted(set(pred_files) - set(gt_files))
    if extra:
        log.warning("%d prediction(s) have no reference and are ignored: %s", len(extra), ", ".join(extra[:5]))

    names = load_label_names(args.labels) if args.labels else None
    declared = set(names) if names is not None else None
    cases = sorted(gt_files)

    def read_case(case: str):
        gt, pred = _read_label_map(gt_files[case]), _read_label_map(pred_files[case])
        _check_geometry(case, pred, gt)
        g = _label_array(case, gt, "reference", declared)
        p = _label_array(case, pred, "prediction", declared)
        return p, g, gt.spacing

    rows: list[dict[str, Any]] = []
    results = []
    with Progress(args.progress) as progress:
        if names is None:  # score every value found: a first pass collects them (arrays are not kept)
            found: set[int] = set()
            for i, case in enumerate(cases):
                progress("scan labels", i, len(cases), case)
                p, g, _ = read_case(case)
                found |= set(_unique(g)) | set(_unique(p))
            names = {v: f"label {v}" for v in sorted(found - {0})}
            if not names:
                raise CommandError("neither the references nor the predictions hold a non-zero label; nothing to score")
        tolerances = parse_tolerances(args.tolerance, names)
        for i, case in enumerate(cases):
            progress("evaluate", i, len(cases), case)
            p, g, spacing = read_case(case)
            scores = evaluate_case(p, g, spacing, tolerances, list(names), method=args.surface)
            results.append(scores)
            rows.extend(
                {
                    "case": case,
                    "label": s.label,
                    "name": names[s.label],
                    "dice": _num(s.dice),
                    "nsd": _num(s.nsd),
                    "tolerance_mm": f"{s.tolerance_mm:g}",
                    "gt_volume_ml": f"{s.gt_volume_mm3 / 1000:.3f}",
                    "pred_volume_ml": f"{s.pred_volume_mm3 / 1000:.3f}",
                }
                for s in scores
            )
        progress("evaluate", len(cases), len(cases), "done")

    summaries, overall_dice, overall_nsd = summarize(results)
    method = args.name or pred_dir.resolve().name
    meta = {"cases": len(cases), "pred": str(pred_dir), "gt": str(gt_dir), "surface": args.surface}
    markdown = summary_markdown(method, summaries, overall_dice, overall_nsd, names, tolerances, meta)
    summary = {
        "method": method,
        **meta,
        "dice": overall_dice,
        "nsd": overall_nsd,
        "classes": [
            {
                "value": s.label,
                "name": names[s.label],
                "tolerance_mm": tolerances[s.label],
                "n": s.n,
                "dice": s.dice_mean,
                "dice_std": s.dice_std,
                "nsd": s.nsd_mean,
                "nsd_std": s.nsd_std,
            }
            for s in summaries
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "per_case.csv", _csv_text(rows))
    _write_atomic(out_dir / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    _write_atomic(out_dir / "summary.md", markdown)
    if args.progress == "json":
        line = {"stage": "done", "done": 1, "total": 1, "message": str(out_dir), "path": str(out_dir)}
        sys.stdout.write(json.dumps(line) + "\n")
    else:
        sys.stdout.write(markdown + f"\nwritten: {out_dir / 'per_case.csv'}, {out_dir / 'summary.md'}\n")
    return 0


def _unique(array) -> list[int]:
    import numpy as np

    return [int(v) for v in np.unique(array)]


def _json_safe(value: Any) -> Any:
    """NaN -> None, so summary.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value

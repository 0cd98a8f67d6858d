"""Evaluation of predicted label maps against references: case matching, label tables, geometry checks, scoring
(DSC and normalized surface Dice, MedDINOv3Core/metrics.py) and the reports (per_case.csv, summary.md, summary.json).

``evaluate_folders`` scores a folder of predictions against a folder of references; ``write_report`` writes the
three report files. `python -m training evaluate` (training/commands/evaluate.py) is a thin front end to both.

- Files are matched by name without the image suffix (case_001.nii.gz matches case_001.nrrd); NIfTI, NRRD,
  MetaImage and Slicer .seg.nrrd files are read.
- Each prediction must lie on its reference's voxel grid (shape, spacing, origin and direction, up to
  ``GEOMETRY_TOLERANCE_MM``).
- Class names come from a model card (a directory or a model name, resolved through MedDINOv3Core.hub), its
  config.json, an nnU-Net dataset.json or a JSON list of ``{"value", "name"}`` entries; without one, from the
  dataset.json beside a labelsTs/ or labelsTr/ reference folder, else every non-zero value found is scored as
  "label N".
- summary.md holds one row shaped like Table 2 of the MedDINOv3 paper (arXiv:2509.02379: mean DSC and NSD in
  percent), then the per-class table.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MedDINOv3Core.atomic import write_json, write_text
from MedDINOv3Core.progress import ProgressCallback, report

log = logging.getLogger(__name__)

GEOMETRY_TOLERANCE_MM = 1e-3  # NIfTI stores geometry in float32: allow its rounding, nothing a voxel would notice
DEFAULT_TOLERANCE_MM = 2.0
CSV_FIELDS = ("case", "label", "name", "dice", "nsd", "tolerance_mm", "gt_volume_ml", "pred_volume_ml")


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (missing cases, label tables, voxel grids); the message says what to do."""


class ToleranceError(EvaluationError):
    """A tolerance specification (``"2"``, ``"liver=5"``, ``"3=1.5"``) that is not valid for the classes."""


# ----------------------------------------------------------------------------------------------- inputs


def case_files(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """{case: path} of the image files in ``folder`` (case = the file name without its image suffix)."""
    from MedDINOv3Core.volume_io import image_suffix

    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{what} folder not found: {folder}; give a folder of label maps (.nii.gz, .nrrd, .mha)")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = image_suffix(path)
        if not path.is_file() or not suffix or path.name.startswith("."):
            continue
        case = path.name[: -len(suffix)]
        if case in cases:
            raise EvaluationError(
                f"{what} folder {folder} holds two files for case {case!r} ({cases[case].name}, {path.name}); keep one"
            )
        cases[case] = path
    return cases


def match_cases(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """{case: (prediction, reference)} for every reference case, sorted by case; every reference needs a prediction
    (predictions without a reference are logged and ignored)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_files, pred_files = case_files(gt_dir, "reference"), case_files(pred_dir, "prediction")
    if not gt_files:
        raise EvaluationError(f"no label maps (.nii.gz, .nii, .nrrd, .mha, .mhd) in the reference folder {gt_dir}")
    missing = [case for case in gt_files if case not in pred_files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise EvaluationError(
            f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {shown}; predict them (same file "
            "name) or remove them from the reference folder"
        )
    extra = sorted(set(pred_files) - set(gt_files))
    if extra:
        log.warning("%d prediction(s) have no reference and are ignored: %s", len(extra), ", ".join(extra[:5]))
    return {case: (pred_files[case], gt_files[case]) for case in sorted(gt_files)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"could not read labels from {path}: {exc}") from None


def _label_file(source: str | os.PathLike) -> Path:
    """The JSON file holding the label table ``source`` names: a file, a model card folder (its config.json), or a
    model reference (registry name, Hub repo ``org/name``) resolved like `predict --model` does."""
    path = Path(source).expanduser()
    if not path.exists():
        text = os.fspath(source)
        looks_like_path = os.sep in text or text.startswith(".") or path.suffix.lower() == ".json"
        if looks_like_path:
            raise EvaluationError(
                f"labels file not found: {path}; give a model card folder, config.json, dataset.json or a model name"
            )
        from MedDINOv3Core.hub import HubError, ModelNotFoundError, resolve_model

        try:
            path = resolve_model(text)
        except ModelNotFoundError:
            raise EvaluationError(
                f"--labels {text!r} is neither a file or folder nor a model name; give a model card folder, "
                "config.json, dataset.json or a registry name (`python -m training models` lists them)"
            ) from None
        except HubError as exc:
            raise EvaluationError(f"--labels {text!r}: {exc}") from None
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise EvaluationError(f"labels file not found: {path}; give a model card folder, config.json or dataset.json")
    return path


def dataset_labels_for(gt_dir: str | os.PathLike) -> Path | None:
    """The nnU-Net ``dataset.json`` beside a reference folder named labels* (labelsTs/, labelsTr/), or None."""
    gt_dir = Path(gt_dir).expanduser().resolve()
    candidate = gt_dir.parent / "dataset.json"
    return candidate if gt_dir.name.lower().startswith("labels") and candidate.is_file() else None


def load_label_names(source: str | os.PathLike) -> dict[int, str]:
    """{value: name} of the classes to score, from a model card (a folder or a model name), a config.json, a
    dataset.json or a label list."""
    path = _label_file(source)
    data = _read_json(path)
    entries = data.get("labels") if isinstance(data, dict) else data
    names: dict[int, str] = {}
    if isinstance(entries, dict):  # nnU-Net dataset.json: {"background": 0, "liver": 1, "tumour": [1, 2], ...}
        for name, value in entries.items():
            if isinstance(value, list):
                raise EvaluationError(
                    f"{path}: label {name!r} is a region (a list of values); evaluate regions by merging them first"
                )
            names[int(value)] = str(name)
    elif isinstance(entries, list):
        for entry in entries:
            if not isinstance(entry, dict) or "value" not in entry:
                raise EvaluationError(f"{path}: every label entry needs a 'value' (and a 'name'); got {entry!r}")
            names[int(entry["value"])] = str(entry.get("name", f"label {entry['value']}"))
    else:
        raise EvaluationError(
            f"{path} holds no labels: expected a 'labels' list (model card) or mapping (dataset.json)"
        )
    names.pop(0, None)  # background is not scored
    if not names:
        raise EvaluationError(f"{path} declares no foreground classes to score")
    return dict(sorted(names.items()))


def parse_tolerances(items: Sequence[str], names: dict[int, str]) -> dict[int, float]:
    """``["2", "liver=5", "3=1.5"]`` -> {value: mm} for every class (a bare number is the default, 2.0 otherwise)."""
    default, per_class = DEFAULT_TOLERANCE_MM, {}
    by_name = {name.lower(): value for value, name in names.items()}
    for item in items:
        key, sep, mm_text = item.rpartition("=")
        try:
            mm = float(mm_text)
        except ValueError:
            raise ToleranceError(f"--tolerance {item!r}: {mm_text!r} is not a number of millimetres") from None
        if not (math.isfinite(mm) and mm >= 0):
            raise ToleranceError(f"--tolerance {item!r}: the tolerance must be >= 0 mm")
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
            raise ToleranceError(f"--tolerance {item!r}: no class {key!r}; the classes are {known}")
    return {value: per_class.get(value, default) for value in names}


def check_geometry(case: str, pred, gt) -> None:
    """Raise EvaluationError unless the prediction Volume lies on the reference Volume's voxel grid."""
    import numpy as np

    if pred.shape != gt.shape:
        raise EvaluationError(
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
            raise EvaluationError(
                f"case {case!r}: the prediction's {what} ({fmt(f'{v:.6g}' for v in a)}) differs from the "
                f"reference's ({fmt(f'{v:.6g}' for v in b)}); the files do not lie on the same voxel grid: predict on "
                "the reference image itself (or resample the prediction onto it) and evaluate again"
            )


# More distinct values than this: an image (a CT, a probability map), not a label map.
MAX_LABEL_VALUES = 255


def label_array(case: str, volume, what: str, declared: set[int] | None, path: str | os.PathLike | None = None):
    """The Volume's array as integer labels; with ``declared``, every non-zero value must be one of them.

    Refused, naming the file (``path``): non-integer values, negative values, more than MAX_LABEL_VALUES distinct
    values (an image, not a label map).
    """
    import numpy as np

    from MedDINOv3Core.labelmaps import NotALabelMap, integer_labels

    where = f"case {case!r}: the {what}" + (f" {path}" if path is not None else "")
    try:
        array = integer_labels(volume.array, np.int32)
    except NotALabelMap:
        raise EvaluationError(
            f"{where} holds non-integer values: it is an image, not a label map; give integer class values"
        ) from None
    values = np.unique(array)
    if len(values) > MAX_LABEL_VALUES + 1:  # + the background
        raise EvaluationError(
            f"{where} holds {len(values)} distinct values: it looks like an image, not a label map (at most "
            f"{MAX_LABEL_VALUES} classes); give the label map"
        )
    if values.size and values[0] < 0:
        negative = [int(v) for v in values[values < 0][:10]]
        raise EvaluationError(f"{where} holds negative label value(s) {negative}; label values must be 0 or more")
    if declared is not None:
        extra = sorted(set(values.tolist()) - declared - {0})
        if extra:
            raise EvaluationError(
                f"case {case!r}: the {what} holds label value(s) {extra[:10]} that --labels does not declare; use the "
                "label table the maps were made with"
            )
    return array


def read_label_map(path: str | os.PathLike):
    """A label map Volume from a NIfTI / NRRD / MetaImage file or a Slicer .seg.nrrd (its label values)."""
    from MedDINOv3Core.volume_io import image_suffix, read_volume

    if image_suffix(Path(path)) == ".seg.nrrd":
        from MedDINOv3Core.volume_io import read_segmentation

        return read_segmentation(path)[0]
    return read_volume(path)


# ----------------------------------------------------------------------------------------------- scoring


@dataclass
class EvaluationReport:
    """The result of ``evaluate_folders``: per-case rows (the CSV), the summary (summary.json) and summary.md."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6f}"


def _unique(array) -> list[int]:
    import numpy as np

    return [int(v) for v in np.unique(array)]


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    tolerances: Sequence[str] = (),
    surface: str = "surfels",
    method: str | None = None,
    progress: ProgressCallback | None = None,
) -> EvaluationReport:
    """Score every reference case in ``gt_dir`` against its prediction in ``pred_dir``.

    ``labels``: a label table source (``load_label_names``), or None: the dataset.json of the nnU-Net dataset
    ``gt_dir`` sits in (labelsTs/ or labelsTr/ beside dataset.json), else every non-zero value found is scored (a
    first pass over the cases collects them). ``tolerances``: NSD tolerance items (``parse_tolerances``).
    ``surface``: the NSD surface elements, "surfels" or "voxels" (MedDINOv3Core/metrics.py). ``method``: the name
    in the summary table (default: the prediction folder's name). Progress stages: "scan labels" (without
    ``labels``), "evaluate".
    """
    from MedDINOv3Core.metrics import evaluate_case, summarize

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    matched = match_cases(pred_dir, gt_dir)
    if not labels:
        labels = dataset_labels_for(gt_dir)
        if labels is not None:
            log.info("class names from %s (the nnU-Net dataset of the references)", labels)
    names = load_label_names(labels) if labels else None
    declared = set(names) if names is not None else None
    cases = list(matched)

    def read_case(case: str):
        pred_path, gt_path = matched[case]
        gt, pred = read_label_map(gt_path), read_label_map(pred_path)
        check_geometry(case, pred, gt)
        g = label_array(case, gt, "reference", declared, gt_path)
        p = label_array(case, pred, "prediction", declared, pred_path)
        return p, g, gt.spacing

    if names is None:  # score every value found: a first pass collects them (arrays are not kept)
        found: set[int] = set()
        for i, case in enumerate(cases):
            report(progress, "scan labels", i, len(cases), case)
            p, g, _ = read_case(case)
            found |= set(_unique(g)) | set(_unique(p))
        names = {v: f"label {v}" for v in sorted(found - {0})}
        if not names:
            raise EvaluationError("neither the references nor the predictions hold a non-zero label; nothing to score")
    tolerance_mm = parse_tolerances(tolerances, names)
    rows: list[dict[str, Any]] = []
    results = []
    for i, case in enumerate(cases):
        report(progress, "evaluate", i, len(cases), case)
        p, g, spacing = read_case(case)
        scores = evaluate_case(p, g, spacing, tolerance_mm, list(names), method=surface)
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
    report(progress, "evaluate", len(cases), len(cases), "done")

    summaries, overall_dice, overall_nsd = summarize(results)
    method = method or pred_dir.resolve().name
    meta = {"cases": len(cases), "pred": str(pred_dir), "gt": str(gt_dir), "surface": surface}
    markdown = summary_markdown(method, summaries, overall_dice, overall_nsd, names, tolerance_mm, meta)
    summary = {
        "method": method,
        **meta,
        "dice": overall_dice,
        "nsd": overall_nsd,
        "classes": [
            {
                "value": s.label,
                "name": names[s.label],
                "tolerance_mm": tolerance_mm[s.label],
                "n": s.n,
                "dice": s.dice_mean,
                "dice_std": s.dice_std,
                "nsd": s.nsd_mean,
                "nsd_std": s.nsd_std,
            }
            for s in summaries
        ],
    }
    return EvaluationReport(rows=rows, summary=summary, markdown=markdown)


# ----------------------------------------------------------------------------------------------- reports


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


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The per-case CSV: one row per case and class (``CSV_FIELDS``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """NaN -> None, so summary.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_report(result: EvaluationReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write per_case.csv, summary.json and summary.md into ``out_dir`` (each atomically); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("per_case.csv", "summary.json", "summary.md")}
    write_text(paths["per_case.csv"], csv_text(result.rows))
    write_json(paths["summary.json"], json_safe(result.summary))
    write_text(paths["summary.md"], result.markdown)
    return paths

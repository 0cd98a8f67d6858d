"""`python -m training export-rtstruct`: a labelmap -> DICOM RT Structure Set referencing a CT series."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from MedDINOv3Core.dicom.series import PATIENT_POSITIONS
from MedDINOv3Core.progress import write_progress_line
from training.common import CommandError, Progress, UsageError, add_progress_argument, check_output_folder
from training.outputs import add_output_arguments, check_output_folder_rule, output_rule, replacing_output

NAME = "export-rtstruct"
HELP = (
    "Export a labelmap as a DICOM RT Structure Set on its CT series (a CT series is written too when the reference "
    "is not DICOM)"
)
EXAMPLES = """examples:
  # labels predicted on a DICOM CT: structures reference the original slices
  python -m training export-rtstruct --labels seg.nii.gz --reference ct_dicom/ --out rt_dicom/ --model models/abdomen
  # reference given as NIfTI: writes rt/CT/ (a new CT series) and rt/RTSTRUCT.dcm; labels 1, 2 and 4 named
  python -m training export-rtstruct --labels seg_1_2_4.nii.gz --reference ct.nii.gz --out rt/ \\
      --names Liver Spleen 4:Kidney --colors 220,120,100 150,80,200 \\
      180,200,80 --patient-name "Doe^Jane" --patient-id 123
  # the same labels again into rt/: the earlier RTSTRUCT.dcm and CT/ are replaced only when all is written
  python -m training export-rtstruct --labels seg_1_2_4.nii.gz --reference ct.nii.gz --out rt/ --names Liver \\
      Spleen 4:Kidney --overwrite

""" + output_rule()

log = logging.getLogger(__name__)
RTSTRUCT_NAME = "RTSTRUCT.dcm"
CT_FOLDER = "CT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, help="labelmap file (NIfTI, NRRD, MHA) on the reference CT's grid")
    parser.add_argument(
        "--reference",
        required=True,
        help="the CT: a folder holding its DICOM series, or a volume file (then a DICOM CT series is written); "
        "FOLDER::SeriesInstanceUID chooses one series of a folder holding several",
    )
    parser.add_argument("--out", required=True, help=f"output folder (gets {RTSTRUCT_NAME}, and {CT_FOLDER}/ if new)")
    add_output_arguments(parser)
    parser.add_argument(
        "--model", help="model whose labels give the ROI names and colours: a model card folder or a registry name"
    )
    parser.add_argument("--cache-dir", help="Hugging Face hub cache for models given by name")
    parser.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help="ROI names for labels 1, 2, ... in order, or VALUE:NAME pairs (override the model card)",
    )
    parser.add_argument(
        "--colors", nargs="+", metavar="R,G,B", help="ROI display colours (0-255), in the order of --names"
    )
    parser.add_argument("--interpreted-type", default="ORGAN", help="RT ROI Interpreted Type of every ROI")
    parser.add_argument("--series-description", default="MedDINOv3 segmentation", help="RTSTRUCT series description")
    parser.add_argument(
        "--structure-set-label",
        default="MedDINOv3",
        help="Structure Set Label (DICOM SH: the first 16 characters; up to 64 go into Structure Set Name)",
    )
    parser.add_argument("--series-uid", help="Series Instance UID to use when the DICOM folder holds several series")
    parser.add_argument("--patient-name", default="", help="Patient Name for a newly written CT (DICOM PN: Last^First)")
    parser.add_argument("--patient-id", default="", help="Patient ID for a newly written CT (generated if empty)")
    parser.add_argument(
        "--patient-position",
        default="HFS",
        type=str.upper,
        choices=PATIENT_POSITIONS,
        metavar="TERM",
        help="Patient Position for a newly written CT, a DICOM defined term: " + ", ".join(PATIENT_POSITIONS),
    )
    add_progress_argument(parser)


def _read_volume(path: Path):
    """A non-DICOM volume file (MedDINOv3Core.volume_io.read_volume)."""
    from MedDINOv3Core.volume_io import read_volume

    return read_volume(path)


def _parse_color(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise UsageError(f"colour {text!r} must be R,G,B with integers 0..255")
    return values


def _card_labels(model: str, cache_dir: str | None = None) -> dict[int, dict]:
    from MedDINOv3Core.card import load_model_card
    from MedDINOv3Core.hub import resolve_model

    card = load_model_card(resolve_model(model, cache_dir=cache_dir))
    if not card.labels:
        raise CommandError(f"model card {model} has no labels; pass --names instead")
    return {int(label["value"]): dict(label) for label in card.labels}


def build_rois(args: argparse.Namespace, present: list[int]) -> list:
    """RoiSpecs for the labels present, from --names/--colors over the model card's labels (names, colours and
    coded terminology, which --names for the same value replaces)."""
    from MedDINOv3Core.dicom.rtstruct import default_color, roi_spec_from_label

    table: dict[int, dict] = _card_labels(args.model, getattr(args, "cache_dir", None)) if args.model else {}
    colors = [_parse_color(c) for c in args.colors or []]
    rgb: dict[int, tuple[int, int, int]] = {}  # --colors, 0..255, over the card's 0..1 colours
    if args.names:
        if len(colors) not in (0, len(args.names)):
            raise UsageError(f"--colors gives {len(colors)} colours for {len(args.names)} --names")
        for i, item in enumerate(args.names):
            value, sep, name = item.partition(":")
            if sep and value.strip().isdigit():
                key, label_name = int(value), name
            else:
                key, label_name = i + 1, item
            table[key] = {"value": key, "name": label_name, "color": table.get(key, {}).get("color")}
            if colors:
                rgb[key] = colors[i]
    elif colors:
        raise UsageError("--colors needs --names (they pair up in order)")
    if not table:
        log.warning("no --names or --model given: ROIs are named 'Label N'")
        table = {v: {"value": v, "name": f"Label {v}"} for v in present}
    missing = [v for v in present if v not in table]
    if missing:
        raise CommandError(
            f"the labelmap holds {len(present)} labels {present} but names cover only {sorted(table)}; labels "
            f"{missing} have no name: pass a name for each (--names or --model)"
        )
    try:
        return [
            roi_spec_from_label(
                label, args.interpreted_type, rgb.get(value) or (None if label.get("color") else default_color(i))
            )
            for i, (value, label) in enumerate(sorted(table.items()))
        ]
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from MedDINOv3Core.dicom.series_reader import SeveralSeriesError, read_series
    from MedDINOv3Core.dicom.structure_set import axial_reoriented, export_structure_set, validate_structure_set
    from MedDINOv3Core.volume_io import split_series_choice

    out = Path(args.out).expanduser()
    check_output_folder("--out", out)
    rule = {"command": "export-rtstruct", "markers": (RTSTRUCT_NAME,), "option": "--out"}
    check_output_folder_rule(out, owned=(RTSTRUCT_NAME, CT_FOLDER), overwrite=args.overwrite, **rule)
    reference, chosen = split_series_choice(args.reference)
    if chosen and args.series_uid and chosen != args.series_uid:
        raise UsageError(f"--reference {args.reference} and --series-uid {args.series_uid} choose different series")
    if not reference.exists():
        raise CommandError(f"reference not found: {reference}; give the CT's DICOM folder or volume file")
    labels = _read_volume(Path(args.labels).expanduser())
    # --overwrite: the earlier output is set aside and put back if this export fails (a CT/ given as the reference
    # stays where it is)
    inside_ct = (out / CT_FOLDER).resolve() in (reference.resolve(), *reference.resolve().parents)
    replaced = (RTSTRUCT_NAME,) if inside_ct else (RTSTRUCT_NAME, CT_FOLDER)
    with Progress(args.progress) as progress, replacing_output(out, replaced if args.overwrite else ()):
        # Everything is checked (grid, axial planes, names) before anything is written.
        if reference.is_dir():
            try:
                ref = read_series(reference, args.series_uid or chosen, progress=progress)
            except SeveralSeriesError as exc:
                raise CommandError(f"{exc}; pass --reference {reference}::<SeriesInstanceUID>") from None
        else:
            ref = axial_reoriented(_read_volume(reference))
        try:
            label_array = validate_structure_set(labels, ref, out, CT_FOLDER)
        except FileExistsError:
            raise CommandError(
                f"{out / CT_FOLDER} already holds files; choose a new --out for the new CT series"
            ) from None
        present = sorted(int(v) for v in np.unique(label_array) if v != 0)
        if not present:
            raise CommandError(f"{args.labels} holds no labelled voxels; nothing to export")
        rois = build_rois(args, present)
        result = export_structure_set(
            label_array,
            ref,
            rois,
            out,
            series_options={
                "patient": {"PatientName": args.patient_name, "PatientID": args.patient_id},
                "patient_position": args.patient_position,
            },
            ct_folder=CT_FOLDER,
            rtstruct_name=RTSTRUCT_NAME,
            series_description=args.series_description,
            structure_set_label=args.structure_set_label,
            progress=progress,
        )
    uid = result.series.series_instance_uid
    if args.progress == "json":
        write_progress_line(sys.stdout, "done", 1, 1, str(result.path), path=str(result.path), series=uid)
    else:
        ct = f"; the CT series written to {result.ct_folder}" if result.ct_folder else ""
        print(f"{result.path}: {len(rois)} structures on series {uid}{ct}")
    return 0

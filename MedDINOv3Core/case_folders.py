"""A folder of cases, nnU-Net style: naming, listing, planning and predicting case by case.

``python -m training predict --input FOLDER`` (training/commands/predict.py) is a thin front end to this module:

- ``case_name``: a case is an input file's name without its suffix and nnU-Net's channel tag
  (``imagesTs/case_0000.nii.gz`` -> ``case``); ``folder_cases`` lists a folder's volume files (hidden files and
  ``.seg.nrrd`` segmentations skipped).
- ``plan_cases``: one ``PlannedCase(name, source, target)`` per input, ``OUTPUT/case<suffix>`` (the input's suffix,
  or the one given); two inputs naming the same case raise ``DuplicateCaseError`` (a ValueError).
- ``write_prediction``: one case's outputs, the probability maps first and the labelmap last, each written
  atomically, so a labelmap that exists belongs to a complete case.
- ``predict_cases``: the loop. Each case's probability maps are written into a temporary folder and renamed into
  place after its labelmap; a case that fails (OSError, ValueError, RuntimeError) leaves no output, is returned
  among the failures, and the others go on. Cancellation (MedDINOv3Core.progress.Cancelled) stops the loop.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from MedDINOv3Core.atomic import replace_directory
from MedDINOv3Core.progress import Cancelled, ProgressCallback, report

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
INPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
log = logging.getLogger(__name__)


class DuplicateCaseError(ValueError):
    """Two input files name the same case (``case_0000.nii.gz`` and ``case_0001.nii.gz``: two channels)."""


class PlannedCase(NamedTuple):
    """One case of a folder: its name, its input file and its output labelmap."""

    name: str
    source: Path
    target: Path


class CaseFailure(NamedTuple):
    """A case that failed, with the error it raised."""

    name: str
    error: BaseException


def output_suffix(path: Path) -> str:
    """The output format ``path`` names (one of OUTPUT_SUFFIXES), or "" for none."""
    name = path.name.lower()
    return next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), "")


def input_suffix(path: Path) -> str:
    """The volume format ``path`` names (one of INPUT_SUFFIXES), or "" for none."""
    name = path.name.lower()
    return next((s for s in INPUT_SUFFIXES if name.endswith(s)), "")


def case_name(path: Path) -> tuple[str, str]:
    """(case, suffix) of an input file: nnU-Net's channel tag is dropped (``case_0000.nii.gz`` -> ``case``)."""
    suffix = input_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)]
    return re.sub(r"_\d{4}$", "", stem), suffix


def folder_cases(folder: Path) -> list[Path]:
    """The volume files directly in ``folder`` (sorted); hidden files and .seg.nrrd segmentations are skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and input_suffix(p) and not p.name.lower().endswith(".seg.nrrd")
    )


def plan_cases(cases: list[Path], output: Path, suffix: str | None = None) -> list[PlannedCase]:
    """(case, input, output) per input file, the output ``output/<case><suffix>`` (default: the input's suffix).

    Raises:
        DuplicateCaseError: two inputs name the same case.
    """
    plan, seen = [], {}
    for path in cases:
        name, in_suffix = case_name(path)
        out_suffix = suffix or (in_suffix if in_suffix in OUTPUT_SUFFIXES else ".nii.gz")
        if name in seen:
            raise DuplicateCaseError(
                f"{seen[name].name} and {path.name} are both case {name!r} (one channel per case is supported)"
            )
        seen[name] = path
        plan.append(PlannedCase(name, path, output / f"{name}{out_suffix}"))
    return plan


def write_prediction(
    prediction, output: Path, probabilities: Path | None = None, progress: ProgressCallback | None = None
) -> None:
    """Write a Prediction (MedDINOv3Core.inference): the probability maps into ``probabilities`` first (one float32
    NRRD per class), the labelmap last (``.seg.nrrd``: with the segment names, colours and terminology), each
    atomically, so a labelmap that exists is a complete case."""
    from MedDINOv3Core.volume_io import write_segmentation, write_volume

    report(progress, "write", 0, 1, output.name)
    if probabilities is not None:
        write_probabilities(prediction, probabilities)
    if output_suffix(output) == ".seg.nrrd":
        write_segmentation(prediction.labelmap, output, prediction.labels)
    else:
        write_volume(prediction.labelmap, output)
    report(progress, "write", 1, 1, output.name)


PROBABILITY_MAP = re.compile(r"^\d{2}_[A-Za-z0-9_-]+\.nrrd$")  # the names write_probabilities gives


def probability_maps(folder: Path) -> tuple[str, ...]:
    """The names of the probability maps (``NN_<class>.nrrd``) already in ``folder`` (none when it is missing)."""
    return tuple(sorted(p.name for p in folder.iterdir() if PROBABILITY_MAP.match(p.name))) if folder.is_dir() else ()


def write_probabilities(prediction, folder: Path) -> None:
    """One float32 NRRD a class in ``folder``: ``00_background.nrrd``, ``01_<label>.nrrd``, ..."""
    from MedDINOv3Core.volume_io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    names = ["background"] + [label.name for label in prediction.labels]
    for c, name in enumerate(names):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        write_volume(prediction.labelmap.with_array(prediction.probabilities[c]), folder / f"{c:02d}_{safe}.nrrd")


def _write_case(prediction, case: PlannedCase, probabilities_root: Path | None) -> None:
    """The case's probability maps in a temporary folder, its labelmap, then the folder renamed into place."""
    if probabilities_root is None:
        write_prediction(prediction, case.target)
        return
    probabilities_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case.name}.tmp-", dir=probabilities_root))
    try:
        write_prediction(prediction, case.target, tmp)
        replace_directory(tmp, probabilities_root / case.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def predict_cases(
    plan: list[PlannedCase],
    predict_one: Callable[[Path], Any],
    probabilities_root: Path | None = None,
    on_case: Callable[[int, PlannedCase, Any, BaseException | None], None] | None = None,
    progress: ProgressCallback | None = None,
) -> list[CaseFailure]:
    """Predict and write each planned case; return the cases that failed.

    Args:
        plan: from ``plan_cases``.
        predict_one: ``predict_one(source) -> Prediction`` for one input file.
        probabilities_root: also write each case's probability maps into ``probabilities_root/<case>/``.
        on_case: called after each case as ``on_case(index, case, prediction, error)``: ``error`` is None for a
            case written, ``prediction`` None for a case that failed.
        progress: a ProgressCallback, told ``("case", index, len(plan), name)`` before each case.

    A case whose prediction or writing raises OSError, ValueError or RuntimeError leaves no output (the labelmap is
    written last, the probability folder renamed into place after it) and the next case goes on; Cancelled stops.
    """
    for folder in dict.fromkeys(case.target.parent for case in plan):
        folder.mkdir(parents=True, exist_ok=True)
    failed: list[CaseFailure] = []
    for i, case in enumerate(plan):
        report(progress, "case", i, len(plan), case.name)
        try:
            prediction = predict_one(case.source)
            _write_case(prediction, case, probabilities_root)
        except Cancelled:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            failed.append(CaseFailure(case.name, exc))
            log.debug("case %s failed", case.name, exc_info=True)
            if on_case is not None:
                on_case(i, case, None, exc)
            continue
        if on_case is not None:
            on_case(i, case, prediction, None)
    report(progress, "case", len(plan), len(plan), "")
    return failed

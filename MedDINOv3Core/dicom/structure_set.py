"""One RT Structure Set export: validate, write a CT series when the reference is not DICOM, write the RTSTRUCT,
and remove that CT series again when the RTSTRUCT fails (a CT series without its structures is not a result).

Used by `python -m training export-rtstruct` (training/commands/export_rtstruct.py), the demo (training/demo.py) and
the Slicer module's core-writer export (MedDINOv3Slicer/MedDINOv3SlicerLib/rtexport.py).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.rtstruct import RoiSpec, align_to_grid, check_axial, check_label_values, write_rtstruct
from MedDINOv3Core.dicom.series import DicomSeries, write_series
from MedDINOv3Core.progress import ProgressCallback

log = logging.getLogger(__name__)

CT_FOLDER = "CT"
RTSTRUCT_NAME = "RTSTRUCT.dcm"


@dataclass
class StructureSetExport:
    """What ``export_structure_set`` wrote: the RTSTRUCT file, the series it references, and the CT series folder
    it wrote (None when it references an existing DICOM series)."""

    path: Path
    series: DicomSeries
    ct_folder: Path | None = None


def axial_reoriented(volume: Volume) -> Volume:
    """An axis-aligned volume stored with coronal/sagittal slices, re-stacked axially (others unchanged), so it can
    be written as an axial CT series for an RT Structure Set."""
    d = volume.direction_matrix
    z_axis = int(np.argmax(np.abs(d[2])))
    if z_axis == 2 or abs(abs(d[2, z_axis]) - 1.0) > 1e-6:
        return volume
    order = [a for a in range(3) if a != z_axis] + [z_axis]  # new ijk axis m = old ijk axis order[m]
    array = np.transpose(volume.array, [2 - order[2 - m] for m in range(3)])
    spacing = tuple(volume.spacing[a] for a in order)
    direction = d[:, order]
    if np.linalg.det(direction) < 0:  # keep rows x columns = slice axis: swap the in-plane axes
        order[0], order[1] = order[1], order[0]
        array = np.transpose(volume.array, [2 - order[2 - m] for m in range(3)])
        spacing, direction = tuple(volume.spacing[a] for a in order), d[:, order]
    log.info("reference volume has non-axial slices; writing it with axial slices (axes %s)", order)
    return Volume(np.ascontiguousarray(array), spacing, volume.origin, tuple(direction.ravel()))


def validate_structure_set(
    labels: Volume | np.ndarray, reference: DicomSeries | Volume, out: str | os.PathLike, ct_folder: str = CT_FOLDER
) -> np.ndarray:
    """Check everything before anything is written; returns the labels on the reference's grid ``(z, y, x)``.

    The reference's image planes must be axial and ``labels`` must lie on its grid (``check_axial``,
    ``align_to_grid``: ValueError otherwise); a non-DICOM reference (a Volume) is written to ``out/ct_folder``,
    which must not hold files yet (FileExistsError otherwise). Fractions, NaN and negative labels are refused
    (``check_label_values``).
    """
    check_axial(reference)
    grid = reference.volume if isinstance(reference, DicomSeries) else reference
    label_array = check_label_values(align_to_grid(labels, grid))
    if not isinstance(reference, DicomSeries):
        folder = Path(out) / ct_folder
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise FileExistsError(f"{folder} already holds files; choose a new output folder for the new CT series")
    return label_array


def export_structure_set(
    labels: Volume | np.ndarray,
    reference: DicomSeries | Volume,
    rois: Iterable[RoiSpec | Sequence],
    out: str | os.PathLike,
    *,
    series_options: Mapping[str, Any] | None = None,
    ct_folder: str = CT_FOLDER,
    rtstruct_name: str = RTSTRUCT_NAME,
    progress: ProgressCallback | None = None,
    **rtstruct_options: Any,
) -> StructureSetExport:
    """Write ``out/rtstruct_name``, an RT Structure Set of ``labels`` on ``reference``.

    Args:
        labels: integer labels on the reference's grid (a ``(z, y, x)`` array, or a Volume with the same voxel
            centres).
        reference: a DICOM series (from ``read_series``: its slices are referenced) or a Volume, first written as
            a CT series into ``out/ct_folder`` with ``write_series(volume, folder, **series_options)``.
        rois: one entry per label value (``write_rtstruct``).
        rtstruct_options: keyword arguments of ``write_rtstruct`` (series_description, structure_set_label, ...).

    The checks of ``validate_structure_set`` run first; when writing the RTSTRUCT fails, the CT series written here
    is removed again and the error propagates.
    """
    out = Path(out)
    label_array = validate_structure_set(labels, reference, out, ct_folder)
    written = None
    if isinstance(reference, DicomSeries):
        series = reference
    else:
        written = out / ct_folder
        series = write_series(reference, written, progress=progress, **dict(series_options or {}))
    try:
        path = write_rtstruct(label_array, series, rois, out / rtstruct_name, progress=progress, **rtstruct_options)
    except BaseException:
        if written is not None:  # a CT series without its structures is not a result
            shutil.rmtree(written, ignore_errors=True)
        raise
    return StructureSetExport(path=path, series=series, ct_folder=written)

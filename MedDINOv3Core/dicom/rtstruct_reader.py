"""Reading DICOM RTSTRUCT files: the ROIs (RoiSpec) and their contours, rasterised onto a CT series' grid."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.contours import polygons_to_mask
from MedDINOv3Core.dicom.rtstruct_rois import (
    CONTOUR_DATA,
    INTERPRETED_TYPES,
    RoiSpec,
    _read_code,
    default_color,
)
from MedDINOv3Core.dicom.series import DicomSeries
from MedDINOv3Core.progress import ProgressCallback

log = logging.getLogger(__name__)


def _contour_points(item) -> np.ndarray:
    """Contour Data ``(N, 3)`` in mm, parsed from the raw bytes when pydicom has not converted them (much faster)."""
    raw = item.get_item(CONTOUR_DATA)
    if raw is None:
        return np.zeros((0, 3))
    if getattr(raw, "is_raw", False) and raw.value is not None:
        text = raw.value.decode("ascii", errors="replace").strip(" \x00")
        values = np.array(text.split("\\"), dtype=np.float64) if text else np.zeros(0)
    else:
        values = np.asarray([float(v) for v in item.ContourData], dtype=np.float64)
    if values.size % 3:
        raise ValueError(f"Contour Data holds {values.size} numbers, not (x, y, z) triplets")
    return values.reshape(-1, 3)


def read_rtstruct_rois(path: str | os.PathLike) -> list[RoiSpec]:
    """The ROIs of an RT Structure Set (value = ROI Number), without contours."""
    import pydicom

    ds = pydicom.dcmread(Path(path).expanduser(), force=True)  # old exports may lack the file header
    return _roi_specs(ds, Path(path))


def _roi_specs(ds, path: Path) -> list[RoiSpec]:
    if ds.get("Modality") != "RTSTRUCT":
        raise ValueError(f"{path} is not an RT Structure Set (Modality {ds.get('Modality')!r})")
    colors = {int(rc.ReferencedROINumber): rc.get("ROIDisplayColor", None) for rc in ds.get("ROIContourSequence", [])}
    observations = {int(o.ReferencedROINumber): o for o in ds.get("RTROIObservationsSequence", [])}
    specs = []
    for i, roi in enumerate(ds.get("StructureSetROISequence", [])):
        number = int(roi.ROINumber)
        color = colors.get(number) or default_color(i)
        obs = observations.get(number, {})
        kind = obs.get("RTROIInterpretedType", "") or "ORGAN"
        name = str(roi.get("ROIName", "") or f"ROI {number}")
        ident = obs.get("RTROIIdentificationCodeSequence", None)
        code = _read_code(ident)
        specs.append(
            RoiSpec(
                number,
                name,
                tuple(int(c) for c in color),
                kind if kind in INTERPRETED_TYPES else "ORGAN",
                code=code,
                category=_read_code(obs.get("SegmentedPropertyCategoryCodeSequence", None)) if code else None,
                modifier=_read_code(ident[0].get("SegmentedPropertyTypeModifierCodeSequence", None)) if code else None,
            )
        )
    return specs


def read_rtstruct(
    path: str | os.PathLike,
    series: DicomSeries,
    *,
    even_odd: bool = True,
    progress: ProgressCallback | None = None,
) -> dict[str, np.ndarray]:
    """Rasterise an RT Structure Set onto a series' grid.

    Contours are mapped to continuous voxel indices and filled with the pixel-centre rule; the contours of one ROI
    on one slice are combined with even-odd (XOR) semantics (``even_odd=False``: union). Contours off every image
    plane by more than a quarter slice are assigned to the nearest slice with a warning; those outside the series
    are skipped with a warning. Non-planar geometric types (POINT, OPEN_*) are ignored.

    Args:
        path: the RTSTRUCT file.
        series: the series it references (its Frame of Reference must match).

    Returns:
        ``{ROI name: (z, y, x) bool mask}`` in ROI order (empty ROIs give all-False masks).

    Raises:
        ValueError: not an RTSTRUCT, or drawn in another frame of reference.
    """
    import pydicom

    path = Path(path).expanduser()
    ds = pydicom.dcmread(path, force=True)
    specs = _roi_specs(ds, path)
    frames = {str(r.ReferencedFrameOfReferenceUID) for r in ds.get("StructureSetROISequence", [])} - {""}
    if series.frame_of_reference_uid and frames and frames != {series.frame_of_reference_uid}:
        raise ValueError(
            f"{path} is drawn in frame of reference {sorted(frames)} but the series is in "
            f"{series.frame_of_reference_uid}; use the CT series the structures were drawn on"
        )
    volume = series.volume
    nz, ny, nx = volume.shape
    contours_by_roi = {int(rc.ReferencedROINumber): rc.get("ContourSequence", []) for rc in ds.ROIContourSequence}
    masks: dict[str, np.ndarray] = {}
    off_plane = outside = 0
    for done, spec in enumerate(specs, start=1):
        per_slice: dict[int, list[np.ndarray]] = {}
        for item in contours_by_roi.get(spec.value, []):
            if item.get("ContourGeometricType", "") != "CLOSED_PLANAR":
                continue
            points = _contour_points(item)
            if len(points) < 3:
                continue
            ijk = volume.physical_to_index(points)
            k = int(np.round(np.mean(ijk[:, 2])))
            if np.max(np.abs(ijk[:, 2] - k)) > 0.25:
                off_plane += 1
            if not 0 <= k < nz:
                outside += 1
                continue
            per_slice.setdefault(k, []).append(ijk[:, :2])
        mask = np.zeros((nz, ny, nx), dtype=bool)
        for k, polygons in per_slice.items():
            if even_odd:
                mask[k] = polygons_to_mask(polygons, (ny, nx))
            else:
                for polygon in polygons:
                    mask[k] |= polygons_to_mask([polygon], (ny, nx))
        name, n = spec.name, 2
        while name in masks:  # names should be unique, but foreign files may repeat one
            name, n = f"{spec.name} ({n})", n + 1
        masks[name] = mask
        if progress is not None:
            progress("read RT structures", done, len(specs), spec.name)
    if off_plane:
        log.warning("%d contours of %s lie between image planes; each was put on its nearest slice", off_plane, path)
    if outside:
        log.warning("%d contours of %s lie outside the series' slices and were skipped", outside, path)
    return masks


def read_rtstruct_labelmap(
    path: str | os.PathLike, series: DicomSeries, *, even_odd: bool = True
) -> tuple[Volume, list[RoiSpec]]:
    """An RT Structure Set as one labelmap on the series' grid (for training labels or round trips).

    Returns:
        ``(labelmap, rois)``: a uint16 Volume with the series' geometry and the RoiSpecs of its values. Each ROI's
        value is its ROI Number (our writer's label value) when those are unique and within 1..65535, else its
        position in the file (1, 2, ...). Where ROIs overlap the later one wins (logged).
    """
    masks = read_rtstruct(path, series, even_odd=even_odd)
    specs = read_rtstruct_rois(path)
    numbers = [s.value for s in specs]
    keep_numbers = len(set(numbers)) == len(numbers) and all(1 <= n <= 65535 for n in numbers)
    labels = np.zeros(series.volume.shape, dtype=np.uint16)
    out_specs = []
    overlap = 0
    for i, (spec, mask) in enumerate(zip(specs, masks.values(), strict=True), start=1):
        value = spec.value if keep_numbers else i
        overlap += int(np.count_nonzero(labels[mask]))
        labels[mask] = value
        out_specs.append(dataclasses.replace(spec, value=value))
    if overlap:
        log.warning("%d voxels belong to more than one ROI in %s; the later ROI was kept", overlap, path)
    return series.volume.with_array(labels), out_specs

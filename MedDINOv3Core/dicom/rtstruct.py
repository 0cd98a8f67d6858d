"""RT Structure Sets: a labelmap on a CT series' grid <-> DICOM RTSTRUCT.

What :func:`write_rtstruct` emits, per ROI (one label value):
- Structure Set ROI Sequence: ROI Number, name, Referenced Frame of Reference UID (the CT's), generation algorithm;
- ROI Contour Sequence: ROI Display Color (0-255 RGB) and one CLOSED_PLANAR contour per boundary on each slice, in
  LPS patient coordinates (mm) on the slice's image plane, each with a Contour Image Sequence naming that slice's
  SOP Instance UID;
- RT ROI Observations Sequence: RT ROI Interpreted Type (ORGAN by default) and, when the ROI has a coded meaning
  (a model card label's terminology, e.g. SNOMED CT), Segmented Property Category Code Sequence and RT ROI
  Identification Code Sequence with its laterality in Segmented Property Type Modifier Code Sequence, so planning
  systems can recognise the structure by code rather than by name;
- and once: Referenced Frame of Reference -> RT Referenced Study -> RT Referenced Series -> Contour Image Sequence
  of every slice.

Contours follow the voxel boundaries (see :mod:`MedDINOv3Core.dicom.contours`): a pixel-centre rasteriser recovers
the labelmap exactly. Islands are separate contours; a hole is a separate contour nested in its outer one, so readers
must combine the contours of a slice with even-odd (XOR) semantics, as most planning systems do (plastimatch: pass
``--xor-contours``). Outer contours run counter-clockwise and holes clockwise in the patient (x, y) plane.

The ROI descriptions (RoiSpec, codes, palette) are in MedDINOv3Core.dicom.rtstruct_rois and the reader in
MedDINOv3Core.dicom.rtstruct_reader; their public names are re-exported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from MedDINOv3Core.atomic import atomic_path
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.compat import write_dicom_file
from MedDINOv3Core.dicom.contours import mask_to_polygons, signed_area
from MedDINOv3Core.dicom.rtstruct_reader import read_rtstruct, read_rtstruct_labelmap, read_rtstruct_rois
from MedDINOv3Core.dicom.rtstruct_rois import (
    CONTOUR_DATA,
    INTERPRETED_TYPES,
    PALETTE,
    Code,
    RoiSpec,
    _code_item,
    as_roi_specs,
    default_color,
    roi_spec_from_label,
)
from MedDINOv3Core.dicom.series import IMPLEMENTATION_CLASS_UID, DicomSeries, format_ds
from MedDINOv3Core.labelmaps import NotALabelMap, integer_labels
from MedDINOv3Core.progress import ProgressCallback

log = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # referenced by RT Referenced Study Sequence items
CHARACTER_SET = "ISO_IR 192"
"""UTF-8, declared only when some text is not ASCII (pydicom then re-encodes every element, which is slower)."""
AXIAL_TOLERANCE = 1e-3
"""Largest |x| or |y| component of the unit slice normal for a series to count as axial (about 0.06 degrees)."""


def check_axial(series: DicomSeries | Volume) -> None:
    """Raise ValueError unless the image planes (rows x columns) are axial (slice normal along patient z)."""
    volume = series.volume if isinstance(series, DicomSeries) else series
    d = volume.direction_matrix
    n = np.cross(d[:, 0], d[:, 1])
    if max(abs(n[0]), abs(n[1])) > AXIAL_TOLERANCE:
        what = f"series {series.series_instance_uid}" if isinstance(series, DicomSeries) else "the reference volume"
        raise ValueError(
            f"{what} is not axial (slice normal {np.round(n, 4).tolist()}); RT Structure Sets are exported on "
            "axial slices: resample the CT and the labelmap to an axial grid first"
        )


def _axis_mapping(src: Volume, dst: Volume, tol: float) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """How ``src``'s (x, y, z) axes map onto ``dst``'s when both grids have the same voxel centres, else None."""
    ds, dd = src.direction_matrix, dst.direction_matrix
    perm, flip = [], []
    for a in range(3):  # dst axis a takes src axis perm[a], reversed when flip[a]
        dots = dd[:, a] @ ds
        b = int(np.argmax(np.abs(dots)))
        if abs(abs(dots[b]) - 1.0) > 1e-4 or abs(src.spacing[b] - dst.spacing[a]) > tol:
            return None
        perm.append(b)
        flip.append(bool(dots[b] < 0))
    if sorted(perm) != [0, 1, 2]:
        return None
    if any(src.shape[2 - perm[a]] != dst.shape[2 - a] for a in range(3)):
        return None
    return tuple(perm), tuple(flip)


def align_to_grid(labelmap: Volume | np.ndarray, grid: Volume, tol: float = 1e-3) -> np.ndarray:
    """The labelmap's values on ``grid``'s voxels, ``(z, y, x)``.

    A Volume may be stored with its axes permuted or reversed relative to ``grid`` (e.g. a feet-first stack read by
    another tool) as long as it has the same voxel centres (within ``tol`` mm); a bare array must have grid's shape.

    Raises:
        ValueError: naming both geometries when the labelmap is on another grid.
    """
    if not isinstance(labelmap, Volume):
        array = np.asarray(labelmap)
        if array.shape != grid.shape:
            raise ValueError(
                f"labelmap shape {array.shape} differs from the reference series' {grid.shape} (z, y, x); the "
                "labelmap must be on the CT series' grid"
            )
        return array
    if labelmap.same_geometry(grid, tol=tol):
        return labelmap.array
    mapping = _axis_mapping(labelmap, grid, tol)
    if mapping is not None:
        perm, flip = mapping
        # numpy axes are reversed (z, y, x): grid array axis (2 - a) comes from labelmap array axis (2 - perm[a]).
        array = np.transpose(labelmap.array, [2 - perm[2 - ax] for ax in range(3)])
        for ax in range(3):
            if flip[2 - ax]:
                array = np.flip(array, axis=ax)
        corner = labelmap.index_to_physical(
            [(labelmap.shape[2 - b] - 1) if flip[a] else 0 for a, b in sorted(enumerate(perm), key=lambda t: t[1])]
        )
        if np.max(np.abs(corner - np.asarray(grid.origin))) <= tol:
            return np.ascontiguousarray(array)
    raise ValueError(
        "labelmap grid does not match the reference series: labelmap shape "
        f"{labelmap.shape} spacing {np.round(labelmap.spacing, 4).tolist()} origin "
        f"{np.round(labelmap.origin, 3).tolist()} direction {np.round(labelmap.direction, 4).tolist()} vs series "
        f"shape {grid.shape} spacing {np.round(grid.spacing, 4).tolist()} origin {np.round(grid.origin, 3).tolist()} "
        f"direction {np.round(grid.direction, 4).tolist()}; resample the labelmap onto the CT (nearest neighbour)"
    )


def check_label_values(labels: np.ndarray) -> np.ndarray:
    """``labels`` as int32 class values; ValueError saying so for fractions, NaN (scores, an image) or negatives."""
    try:
        labels = integer_labels(labels, np.int32, what="labelmap")
    except NotALabelMap:
        raise ValueError(
            f"labelmap holds non-integer values ({np.asarray(labels).dtype}): it is an image or scores, not a label "
            "map; pass integer class values"
        ) from None
    negative = np.unique(labels[labels < 0])
    if negative.size:
        raise ValueError(f"labelmap holds negative values {negative[:10].tolist()}; labels must be 0 or more")
    return labels


def _slice_contours(mask2d: np.ndarray, k: int, volume: Volume, offset: tuple[int, int]) -> list[np.ndarray]:
    """Patient-space ``(N, 3)`` contours of slice ``k``'s mask ``(H, W)`` cropped at column/row ``offset``.

    Outer contours run counter-clockwise, holes clockwise, in the patient (x, y) plane.
    """
    out = []
    for poly in mask_to_polygons(mask2d):
        hole = signed_area(poly) < 0
        points = volume.index_to_physical(np.c_[poly + np.asarray(offset, float), np.full(len(poly), float(k))])
        if (signed_area(points[:, :2]) < 0) != hole:
            points = points[::-1]
        out.append(points)
    return out


def _raw_ds(tag: int, values: np.ndarray):
    """A Decimal String element encoded once by us: pydicom's per-value DS objects and checks cost ~40 us a value,
    which for a CT's contours (about a million coordinates) is most of the export time. ``format_ds`` keeps each
    value within DS rules (at most 16 characters of digits, sign, point and exponent)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    texts = [f"{v:.10g}" for v in np.asarray(values, dtype=np.float64).tolist()]
    texts = [t if len(t) <= 16 else format_ds(float(t)) for t in texts]
    data = "\\".join(texts).encode("ascii")
    if len(data) % 2:
        data += b" "  # values have even length, padded with a space
    return RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True)


def _base_dataset(series: DicomSeries, series_description: str, series_number: int, manufacturer: str):
    """A new RT Structure Set dataset with the patient, study and frame of reference of ``series`` and fresh UIDs."""
    import datetime as dt

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds = Dataset()
    ds.file_meta = meta
    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    for key in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDescription"):
        setattr(ds, key, series.study.get(key, ""))
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, key, series.patient.get(key, ""))
    ds.StudyInstanceUID = series.study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = date, time
    return ds


def _checked_inputs(
    labelmap: Volume | np.ndarray, series: DicomSeries, rois: Iterable[RoiSpec | Sequence], generation_algorithm: str
) -> tuple[np.ndarray, list[RoiSpec]]:
    """Validate the inputs: the labels on ``series``' grid as integers >= 0, and the ROIs that have voxels there."""
    check_axial(series)
    specs = as_roi_specs(rois)
    labels = check_label_values(align_to_grid(labelmap, series.volume))
    present = set(np.unique(labels).tolist()) - {0}
    unnamed = sorted(present - {s.value for s in specs})
    if unnamed:
        raise ValueError(
            f"labelmap holds labels {unnamed} that have no ROI name ({len(present)} labels, {len(specs)} names); "
            "give a name for every label (--names, or a model card with labels)"
        )
    if generation_algorithm not in ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"):
        raise ValueError(f"generation algorithm must be AUTOMATIC, SEMIAUTOMATIC or MANUAL, got {generation_algorithm}")
    kept = []
    for spec in specs:
        if spec.value in present:
            kept.append(spec)
        else:
            log.warning("ROI %r (label %d) has no voxels in the labelmap; it is left out", spec.name, spec.value)
    if not kept:
        raise ValueError("the labelmap has no voxels for any ROI; nothing to export")
    return labels, kept


def _image_ref(series: DicomSeries, k: int):
    """A Contour Image Sequence item naming slice ``k`` of ``series`` (SOP Class and Instance UIDs)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = series.sop_class_uid
    item.ReferencedSOPInstanceUID = series.sop_instance_uids[k]
    return item


def _referenced_frame(series: DicomSeries):
    """The Referenced Frame of Reference item: frame of reference -> study -> series -> every slice of ``series``."""
    from pydicom.dataset import Dataset

    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series.series_instance_uid
    ref_series.ContourImageSequence = [_image_ref(series, k) for k in range(series.volume.shape[0])]
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    ref_study.ReferencedSOPInstanceUID = series.study_instance_uid
    ref_study.RTReferencedSeriesSequence = [ref_series]
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = series.frame_of_reference_uid
    ref_frame.RTReferencedStudySequence = [ref_study]
    return ref_frame


def _header(
    series: DicomSeries, series_description: str, structure_set_label: str, series_number: int, manufacturer: str
):
    """The dataset without its ROIs: identity from ``series``, the structure set label and the referenced slices."""
    ds = _base_dataset(series, series_description, series_number, manufacturer)
    ds.StructureSetLabel = structure_set_label[:16]
    ds.StructureSetName = structure_set_label[:64]
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(series)]
    return ds


def _structure_set_roi(spec: RoiSpec, series: DicomSeries, generation_algorithm: str):
    """The Structure Set ROI Sequence item of one ROI (ROI Number = label value, so a read back restores it)."""
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = spec.value
    roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
    roi.ROIName = spec.name
    roi.ROIGenerationAlgorithm = generation_algorithm
    return roi


def _contour_item(points: np.ndarray, number: int, series: DicomSeries, k: int):
    """A Contour Sequence item: one CLOSED_PLANAR contour ``(N, 3)`` on slice ``k``, its Contour Data encoded once."""
    from pydicom.charset import default_encoding
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ContourNumber = number
    item.ContourImageSequence = [_image_ref(series, k)]
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item[CONTOUR_DATA] = _raw_ds(CONTOUR_DATA, np.round(points, 4).ravel())
    # Declared as already encoded like the file, pydicom writes the raw element as it is.
    item.set_original_encoding(False, True, default_encoding)
    return item


def _roi_contour(labels: np.ndarray, spec: RoiSpec, box: tuple[slice, ...], series: DicomSeries):
    """The ROI Contour Sequence item of one ROI: its colour and its contours on each slice of its bounding ``box``."""
    from pydicom.dataset import Dataset

    zs, ys, xs = box
    contours = []
    for k in range(zs.start, zs.stop):
        mask = labels[k, ys, xs] == spec.value
        if not mask.any():
            continue
        for points in _slice_contours(mask, k, series.volume, offset=(xs.start, ys.start)):
            contours.append(_contour_item(points, len(contours) + 1, series, k))
    rc = Dataset()
    rc.ROIDisplayColor = list(spec.color)
    rc.ContourSequence = contours
    rc.ReferencedROINumber = spec.value
    return rc


def _roi_observation(spec: RoiSpec):
    """The RT ROI Observations Sequence item of one ROI: its interpreted type and, when known, its codes."""
    from pydicom.dataset import Dataset

    obs = Dataset()
    obs.ObservationNumber = spec.value
    obs.ReferencedROINumber = spec.value
    if spec.category is not None:
        obs.SegmentedPropertyCategoryCodeSequence = [_code_item(spec.category)]
    if spec.code is not None:
        ident = _code_item(spec.code)
        if spec.modifier is not None:
            ident.SegmentedPropertyTypeModifierCodeSequence = [_code_item(spec.modifier)]
        obs.RTROIIdentificationCodeSequence = [ident]
    obs.RTROIInterpretedType = spec.interpreted_type
    obs.ROIInterpreter = ""
    return obs


def _add_rois(
    ds,
    labels: np.ndarray,
    kept: list[RoiSpec],
    series: DicomSeries,
    generation_algorithm: str,
    progress: ProgressCallback | None,
) -> None:
    """Add the three ROI sequences to ``ds``: per ROI its Structure Set ROI, ROI Contour and Observations items."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels, max_label=max(s.value for s in kept))  # labels are >= 0 here
    roi_items, contour_items, observation_items = [], [], []
    for done, spec in enumerate(kept, start=1):
        roi_items.append(_structure_set_roi(spec, series, generation_algorithm))
        contour_items.append(_roi_contour(labels, spec, boxes[spec.value - 1], series))
        observation_items.append(_roi_observation(spec))
        log.debug("ROI %d %r: %d contours", spec.value, spec.name, len(contour_items[-1].ContourSequence))
        if progress is not None:
            progress("write RT structures", done, len(kept), spec.name)
    ds.StructureSetROISequence = roi_items
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = observation_items


def _declare_character_set(ds, series: DicomSeries, kept: list[RoiSpec], *texts: str) -> None:
    """Declare UTF-8 (``CHARACTER_SET``) on ``ds`` when some identity, ROI name or other text is not ASCII."""
    texts = (*series.patient.values(), *series.study.values(), *(s.name for s in kept), *texts)
    if not all(str(t).isascii() for t in texts):
        ds.SpecificCharacterSet = CHARACTER_SET


def _write(ds, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` atomically (temporary file + rename, ``MedDINOv3Core.atomic.atomic_path``)."""
    out = Path(path).expanduser()
    with atomic_path(out) as tmp:
        write_dicom_file(tmp, ds)
    return out


def write_rtstruct(
    labelmap: Volume | np.ndarray,
    series: DicomSeries,
    rois: Iterable[RoiSpec | Sequence],
    path: str | os.PathLike,
    *,
    series_description: str = "MedDINOv3 segmentation",
    structure_set_label: str = "MedDINOv3",
    generation_algorithm: str = "AUTOMATIC",
    series_number: int = 901,
    manufacturer: str = "MedDINOv3",
    progress: ProgressCallback | None = None,
) -> Path:
    """Write an RT Structure Set for ``labelmap`` referencing ``series`` (atomically: temp file + rename).

    Args:
        labelmap: integer labels on the series' grid: a ``(z, y, x)`` array or a Volume with the same voxel centres.
        series: the axial CT series the structures are drawn on (from :func:`read_series` or :func:`write_series`).
        rois: one entry per label value (RoiSpec or ``(value, name[, color[, interpreted_type]])``). Every nonzero
            value in the labelmap must be listed; listed ROIs without voxels are skipped with a warning.
        path: the output file (its folder is created).
        series_description, structure_set_label, generation_algorithm, series_number, manufacturer: DICOM attributes
            (generation algorithm AUTOMATIC, SEMIAUTOMATIC or MANUAL).
        progress: optional callback ``(stage, done, total, message)``, one step per ROI.

    Returns:
        The written path.

    Raises:
        ValueError: non-axial series, labelmap on another grid, labels without an ROI, or nothing to write.
    """
    labels, kept = _checked_inputs(labelmap, series, rois, generation_algorithm)
    ds = _header(series, series_description, structure_set_label, series_number, manufacturer)
    _add_rois(ds, labels, kept, series, generation_algorithm, progress)
    _declare_character_set(ds, series, kept, series_description, structure_set_label, manufacturer)
    out = _write(ds, path)
    log.info("wrote RT Structure Set with %d ROIs to %s", len(kept), out)
    return out


__all__ = [
    "AXIAL_TOLERANCE",
    "CHARACTER_SET",
    "INTERPRETED_TYPES",
    "PALETTE",
    "RT_STRUCTURE_SET_STORAGE",
    "Code",
    "RoiSpec",
    "align_to_grid",
    "as_roi_specs",
    "check_axial",
    "default_color",
    "read_rtstruct",
    "read_rtstruct_labelmap",
    "read_rtstruct_rois",
    "roi_spec_from_label",
    "write_rtstruct",
]

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
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from MedDINOv3Core.atomic import atomic_path
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.compat import write_dicom_file
from MedDINOv3Core.dicom.contours import mask_to_polygons, polygons_to_mask, signed_area
from MedDINOv3Core.dicom.series import IMPLEMENTATION_CLASS_UID, DicomSeries, format_ds

log = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # referenced by RT Referenced Study Sequence items
INTERPRETED_TYPES = (
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "OAR", "BOLUS", "AVOIDANCE", "ORGAN", "MARKER",
    "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP",
    "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT",
)  # fmt: skip
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0),
)  # fmt: skip
CONTOUR_DATA = 0x30060050
CHARACTER_SET = "ISO_IR 192"
"""UTF-8, declared only when some text is not ASCII (pydicom then re-encodes every element, which is slower)."""
AXIAL_TOLERANCE = 1e-3
"""Largest |x| or |y| component of the unit slice normal for a series to count as axial (about 0.06 degrees)."""

ProgressCallback = Callable[[str, int, int, str], None]
Code = tuple[str, str, str]
"""A coded concept (coding scheme designator, code value, code meaning), e.g. ("SCT", "10200004", "Liver")."""


def _as_code(value, what: str) -> Code | None:
    """A Code from (scheme, value, meaning) or {"scheme"/"code"/"meaning"} (model-card terminology); None passes."""
    from MedDINOv3Core.data.segfile import coded_concept

    if value is None:
        return None
    try:
        items = tuple(v.strip() for v in coded_concept(value))
    except (TypeError, ValueError):
        items = ()
    if len(items) != 3 or not all(items):
        raise ValueError(f"{what} must be (coding scheme, code value, code meaning), all non-empty; got {value!r}")
    if len(items[0]) > 16 or len(items[1]) > 64 or len(items[2]) > 64:
        raise ValueError(f"{what} {items!r}: scheme <= 16, code value and meaning <= 64 characters (DICOM SH/LO)")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class RoiSpec:
    """One structure: the label ``value`` in the labelmap and its DICOM description.

    ``color`` is RGB in 0..255; ``interpreted_type`` one of :data:`INTERPRETED_TYPES`. ``code`` (what the structure
    is, e.g. SNOMED CT "Kidney"), ``category`` (e.g. "Anatomical Structure") and ``modifier`` (e.g. "Left") are
    optional coded concepts, each (scheme, value, meaning); ``roi_spec_from_label`` fills them from a model-card label.
    """

    value: int
    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    interpreted_type: str = "ORGAN"
    code: Code | None = None
    category: Code | None = None
    modifier: Code | None = None

    def __post_init__(self) -> None:
        for field_name in ("code", "category", "modifier"):
            object.__setattr__(self, field_name, _as_code(getattr(self, field_name), f"ROI {self.name!r} {field_name}"))
        if (self.category or self.modifier) and not self.code:
            raise ValueError(f"ROI {self.name!r}: a category or modifier needs a code (what the structure is)")
        object.__setattr__(self, "value", int(self.value))
        object.__setattr__(self, "name", str(self.name).strip())
        object.__setattr__(self, "interpreted_type", str(self.interpreted_type or "ORGAN").strip().upper())
        color = tuple(int(round(float(c))) for c in self.color)
        if len(color) != 3 or min(color) < 0 or max(color) > 255:
            raise ValueError(f"ROI {self.name!r}: color must be three integers 0..255, got {self.color!r}")
        object.__setattr__(self, "color", color)
        if not self.name or len(self.name) > 64 or "\\" in self.name:
            raise ValueError(f"ROI name {self.name!r} must be 1..64 characters without backslashes")
        if self.interpreted_type not in INTERPRETED_TYPES:
            raise ValueError(
                f"ROI {self.name!r}: RT ROI Interpreted Type {self.interpreted_type!r} not in {INTERPRETED_TYPES}"
            )
        if self.value <= 0:
            raise ValueError(f"ROI {self.name!r}: label value must be a positive integer, got {self.value}")


def roi_spec_from_label(label: dict, interpreted_type: str = "ORGAN", color=None) -> RoiSpec:
    """A RoiSpec from a model-card label ({"value", "name", "color" 0..1 RGB, "terminology"}).

    The terminology's ``type`` becomes the ROI code, ``category`` its category and ``typeModifier`` its laterality
    modifier (model-card or slicerio form); a label without terminology gets a name and colour only.
    """
    term = label.get("terminology") or {}
    if color is None and label.get("color") is not None:
        color = tuple(int(round(255 * float(c))) for c in label["color"])
    return RoiSpec(
        int(label["value"]),
        str(label["name"]),
        color if color is not None else default_color(int(label["value"]) - 1),
        interpreted_type,
        code=term.get("type"),
        category=term.get("category") if term.get("type") else None,
        modifier=term.get("typeModifier") if term.get("type") else None,
    )


def _code_item(code: Code):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[1], code[0], code[2]
    return item


def _read_code(seq) -> Code | None:
    if not seq:
        return None
    item = seq[0]
    code = (
        str(item.get("CodingSchemeDesignator", "")),
        str(item.get("CodeValue", "")),
        str(item.get("CodeMeaning", "")),
    )
    return code if all(code) else None


def default_color(index: int) -> tuple[int, int, int]:
    """A distinct display colour for the ``index``-th structure (0-based)."""
    return PALETTE[index % len(PALETTE)]


def as_roi_specs(rois: Iterable[RoiSpec | Sequence]) -> list[RoiSpec]:
    """Normalise ROIs given as :class:`RoiSpec` or tuples ``(value, name[, color[, interpreted_type]])``."""
    specs = []
    for i, roi in enumerate(rois):
        if isinstance(roi, RoiSpec):
            specs.append(roi)
            continue
        roi = tuple(roi)
        if not 2 <= len(roi) <= 4:
            raise ValueError(f"ROI {roi!r} must be (value, name[, color[, interpreted type]])")
        color = roi[2] if len(roi) > 2 and roi[2] is not None else default_color(i)
        specs.append(RoiSpec(roi[0], roi[1], color, roi[3] if len(roi) > 3 else "ORGAN"))
    values = [s.value for s in specs]
    names = [s.name.lower() for s in specs]
    if len(set(values)) != len(values):
        raise ValueError(f"two ROIs share a label value: {values}")
    if len(set(names)) != len(names):
        raise ValueError(f"two ROIs share a name (ignoring case): {[s.name for s in specs]}")
    return specs


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
    from pydicom.charset import default_encoding
    from pydicom.dataset import Dataset
    from scipy import ndimage

    check_axial(series)
    specs = as_roi_specs(rois)
    labels = align_to_grid(labelmap, series.volume)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    elif not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError(f"labelmap holds non-integer values ({labels.dtype}); pass a label image, not scores")
        labels = labels.astype(np.int32)
    present = set(np.unique(labels).tolist()) - {0}
    if any(v < 0 for v in present):
        raise ValueError(f"labelmap holds negative values {sorted(v for v in present if v < 0)}; labels must be >= 0")
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

    volume = series.volume
    ds = _base_dataset(series, series_description, series_number, manufacturer)
    ds.StructureSetLabel = structure_set_label[:16]
    ds.StructureSetName = structure_set_label[:64]

    def image_ref(k: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = series.sop_class_uid
        item.ReferencedSOPInstanceUID = series.sop_instance_uids[k]
        return item

    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series.series_instance_uid
    ref_series.ContourImageSequence = [image_ref(k) for k in range(volume.shape[0])]
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    ref_study.ReferencedSOPInstanceUID = series.study_instance_uid
    ref_study.RTReferencedSeriesSequence = [ref_series]
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = series.frame_of_reference_uid
    ref_frame.RTReferencedStudySequence = [ref_study]
    ds.ReferencedFrameOfReferenceSequence = [ref_frame]

    boxes = ndimage.find_objects(labels, max_label=max(s.value for s in kept))  # labels are >= 0 here
    roi_items, contour_items, observation_items = [], [], []
    for done, spec in enumerate(kept, start=1):
        number = spec.value  # ROI Number = label value: a read back restores the same values
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        roi.ROIName = spec.name
        roi.ROIGenerationAlgorithm = generation_algorithm
        roi_items.append(roi)

        zs, ys, xs = boxes[spec.value - 1]
        contours, count = [], 0
        for k in range(zs.start, zs.stop):
            mask = labels[k, ys, xs] == spec.value
            if not mask.any():
                continue
            for points in _slice_contours(mask, k, volume, offset=(xs.start, ys.start)):
                count += 1
                item = Dataset()
                item.ContourNumber = count
                item.ContourImageSequence = [image_ref(k)]
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item[CONTOUR_DATA] = _raw_ds(CONTOUR_DATA, np.round(points, 4).ravel())
                # Declared as already encoded like the file, pydicom writes the raw element as it is.
                item.set_original_encoding(False, True, default_encoding)
                contours.append(item)
        rc = Dataset()
        rc.ROIDisplayColor = list(spec.color)
        rc.ContourSequence = contours
        rc.ReferencedROINumber = number
        contour_items.append(rc)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        if spec.category is not None:
            obs.SegmentedPropertyCategoryCodeSequence = [_code_item(spec.category)]
        if spec.code is not None:
            ident = _code_item(spec.code)
            if spec.modifier is not None:
                ident.SegmentedPropertyTypeModifierCodeSequence = [_code_item(spec.modifier)]
            obs.RTROIIdentificationCodeSequence = [ident]
        obs.RTROIInterpretedType = spec.interpreted_type
        obs.ROIInterpreter = ""
        observation_items.append(obs)
        log.debug("ROI %d %r: %d contours", number, spec.name, count)
        if progress is not None:
            progress("write RT structures", done, len(kept), spec.name)
    texts = [*series.patient.values(), *series.study.values(), *(s.name for s in kept)]
    if not all(str(t).isascii() for t in [*texts, series_description, structure_set_label, manufacturer]):
        ds.SpecificCharacterSet = CHARACTER_SET
    ds.StructureSetROISequence = roi_items
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = observation_items

    out = Path(path).expanduser()
    with atomic_path(out) as tmp:
        write_dicom_file(tmp, ds)
    log.info("wrote RT Structure Set with %d ROIs to %s", len(kept), out)
    return out


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

"""DICOM image series in and out: a CT/MR series <-> :class:`~MedDINOv3Core.data.volume.Volume` plus its identity.

Reading keeps what an RT Structure Set must reference: per slice the SOP Instance UID and Image Position (Patient),
and the Study, Series and Frame of Reference UIDs and the patient and study attributes.

Geometry: slices are sorted by their position along the slice normal ``n = row x column`` (ascending), as GDCM and
SimpleITK do, so the Volume's direction columns are (row direction, column direction, n) and volume slice ``k``
is ``DicomSeries.sop_instance_uids[k]``. Writing accepts any Volume with orthonormal axes; its slice axis may be
``+n`` or ``-n`` (feet-first stacks of a head-first reading), and a written series remembers the Volume as given.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MedDINOv3Core.atomic import atomic_directory
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.progress import ProgressCallback

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1"}
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription")
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"
# Patient Position (0018,5100): the DICOM defined terms (PS3.3 C.7.3.1.1.2), head/feet first, supine/prone/decubitus
PATIENT_POSITIONS = ("HFP", "HFS", "HFDR", "HFDL", "FFDR", "FFDL", "FFP", "FFS", "LFP", "LFS", "RFP", "RFS", "AFDR",
                     "AFDL", "PFDR", "PFDL")  # fmt: skip


def check_patient_position(value: str) -> str:
    """``value`` if it is a DICOM defined term of Patient Position, else ValueError naming the terms."""
    if value not in PATIENT_POSITIONS:
        raise ValueError(
            f"Patient Position {value!r} is not a DICOM defined term; use one of {', '.join(PATIENT_POSITIONS)} "
            "(HFS: head first, supine)"
        )
    return value


"""pydicom's implementation root; pydicom generates our UIDs too."""


@dataclass
class DicomSeries:
    """One image series: voxels, geometry and the identity an RT Structure Set references.

    Attributes:
        volume: ``(z, y, x)`` voxels (rescaled to modality values, e.g. HU) with LPS geometry.
        sop_instance_uids: SOP Instance UID of volume slice ``k``, for ``k`` in ``range(volume.shape[0])``.
        positions: ``(z, 3)`` Image Position (Patient) of each slice in mm (LPS).
        sop_class_uid: the slices' SOP Class UID (CT or MR Image Storage).
        study_instance_uid, series_instance_uid, frame_of_reference_uid: the series' UIDs.
        modality: "CT", "MR", ...
        patient: Patient module attributes by keyword (PatientName, PatientID, PatientBirthDate, PatientSex).
        study: General Study attributes by keyword (StudyDate, StudyTime, StudyID, AccessionNumber, ...).
        series_description, series_number: General Series attributes.
        files: the slice files in volume order (empty when unknown).
    """

    volume: Volume
    sop_instance_uids: tuple[str, ...]
    positions: np.ndarray
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str = "CT"
    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)
    series_description: str = ""
    series_number: int | None = None
    files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        self.sop_instance_uids = tuple(str(u) for u in self.sop_instance_uids)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        if len(self.sop_instance_uids) != self.volume.shape[0] or len(self.positions) != self.volume.shape[0]:
            raise ValueError(
                f"a series of {self.volume.shape[0]} slices needs as many SOP Instance UIDs and positions, got "
                f"{len(self.sop_instance_uids)} and {len(self.positions)}"
            )


def _str(value) -> str:
    return "" if value is None else str(value)


def format_ds(value: float) -> str:
    """A Decimal String (at most 16 characters) for ``value``."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot format {value} as a DICOM decimal string")


def _to_stored(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Voxel values -> (int16 stored values, slope, intercept) with value = stored * slope + intercept."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.int16)
    finite = a if np.issubdtype(a.dtype, np.integer) else a[np.isfinite(a)]
    if finite.size != a.size:
        raise ValueError("the volume holds NaN or infinite values, which a DICOM image cannot store")
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if np.issubdtype(a.dtype, np.integer) or np.all(a == np.round(a)):
        if lo >= -32768 and hi <= 32767:
            return a.astype(np.int16), 1.0, 0.0
        if hi - lo <= 65535:
            intercept = float(np.floor((lo + hi) / 2))
            return (a - intercept).astype(np.int16), 1.0, intercept
    intercept = float(format_ds((lo + hi) / 2))
    slope = float(format_ds(max((hi - lo) / 65000.0, 1e-12)))
    stored = np.clip(np.round((a.astype(np.float64) - intercept) / slope), -32768, 32767)
    log.info(
        "volume values %.6g..%.6g stored as int16 with rescale slope %s and intercept %s", lo, hi, slope, intercept
    )
    return stored.astype(np.int16), slope, intercept


def _orthonormal_axes(volume: Volume) -> np.ndarray:
    """The volume's direction matrix, checked to be orthonormal with its slice axis normal to the image plane."""
    d = volume.direction_matrix
    if np.max(np.abs(d.T @ d - np.eye(3))) > 1e-4:
        raise ValueError(
            f"volume direction {volume.direction} is not orthonormal; DICOM images need orthogonal unit axes "
            "(resample the volume first)"
        )
    if abs(abs(float(np.dot(np.cross(d[:, 0], d[:, 1]), d[:, 2]))) - 1.0) > 1e-4:
        raise ValueError(f"volume direction {volume.direction} has a slice axis that is not normal to its rows")
    return d


def _dicom_now() -> tuple[str, str]:
    """Today's date and the time now as DICOM DA and TM strings."""
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _empty_target(folder: str | os.PathLike) -> Path:
    """The output folder, which must not exist yet or be empty."""
    target = Path(folder).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty folder; choose a new folder for the CT series")
    return target


def _patient_and_study(
    patient: Mapping[str, str] | None, study: Mapping[str, str] | None, date: str, time: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Patient and General Study attributes as given, else empty (new PatientID, StudyDate/Time now, StudyID 1)."""
    from pydicom.uid import generate_uid

    patient_attrs = {k: "" for k in PATIENT_KEYWORDS}
    patient_attrs.update({k: _str(v) for k, v in (patient or {}).items()})
    if not patient_attrs["PatientID"]:
        patient_attrs["PatientID"] = "MEDDINO-" + generate_uid().rsplit(".", 1)[-1][-10:]
    study_attrs = {k: "" for k in STUDY_KEYWORDS}
    study_attrs.update({"StudyDate": date, "StudyTime": time})
    study_attrs.update({k: _str(v) for k, v in (study or {}).items()})
    study_attrs["StudyID"] = study_attrs["StudyID"] or "1"
    return patient_attrs, study_attrs


def _new_uids(
    n_slices: int, study_instance_uid: str | None, frame_of_reference_uid: str | None
) -> tuple[str, str, str, list[str]]:
    """The study, series and frame of reference UIDs (the given ones or fresh) and a fresh SOP Instance UID a slice."""
    from pydicom.uid import generate_uid

    study_uid = study_instance_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    return study_uid, series_uid, frame_uid, [generate_uid() for _ in range(n_slices)]


def _identity_attributes(
    patient_attrs: Mapping[str, str],
    study_attrs: Mapping[str, str],
    uids: tuple[str, str, str],
    date: str,
    time: str,
    *,
    series_description: str,
    series_number: int,
    patient_position: str,
    manufacturer: str,
) -> dict[str, object]:
    """Every slice's SOP class, patient, study, series (``uids``), equipment and frame of reference, by keyword."""
    study_uid, series_uid, frame_uid = uids
    return {
        "SpecificCharacterSet": "ISO_IR 192",
        "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
        "SOPClassUID": CT_IMAGE_STORAGE,
        **study_attrs,
        "SeriesDate": date,
        "SeriesTime": time,
        "ContentDate": date,
        "ContentTime": time,
        "Modality": "CT",
        "Manufacturer": manufacturer,
        "SeriesDescription": series_description,
        "Laterality": "",
        **patient_attrs,
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "SeriesNumber": int(series_number),
        "PatientPosition": patient_position,
        "FrameOfReferenceUID": frame_uid,
        "PositionReferenceIndicator": "",
        "KVP": "",
        "AcquisitionNumber": 1,
    }


def _image_attributes(volume: Volume, axes: np.ndarray, slope: float, intercept: float) -> dict[str, object]:
    """Every slice's orientation, pixel spacing, thickness, pixel format, rescale and 1-99 percentile window."""
    spacing = volume.spacing
    window_lo, window_hi = np.percentile(volume.array, [1, 99]) if volume.array.size else (0, 1)
    return {
        "ImageOrientationPatient": [format_ds(v) for v in np.r_[axes[:, 0], axes[:, 1]]],
        "PixelSpacing": [format_ds(spacing[1]), format_ds(spacing[0])],
        "SliceThickness": format_ds(spacing[2]),
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": volume.shape[1],
        "Columns": volume.shape[2],
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 1,
        "RescaleIntercept": format_ds(intercept),
        "RescaleSlope": format_ds(slope),
        "RescaleType": "HU",
        "WindowCenter": format_ds(float(window_lo + window_hi) / 2),
        "WindowWidth": format_ds(max(float(window_hi - window_lo), 1.0)),
    }


def _slice_dataset(
    shared: Mapping[str, object], k: int, sop_uid: str, position: np.ndarray, normal: np.ndarray, pixels: np.ndarray
):
    """The CT Image Storage dataset of slice ``k``: the ``shared`` attributes, its UID, number, position, pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds = Dataset()
    ds.file_meta = meta
    for key, value in shared.items():
        setattr(ds, key, value)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [format_ds(v) for v in position]
    ds.SliceLocation = format_ds(float(position @ normal))
    ds.PixelData = np.ascontiguousarray(pixels).astype("<i2").tobytes()
    return ds


def _write_slices(
    target: Path,
    shared: Mapping[str, object],
    sop_uids: Sequence[str],
    positions: np.ndarray,
    normal: np.ndarray,
    stored: np.ndarray,
    progress: ProgressCallback | None,
) -> list[Path]:
    """Write one file a slice into a temporary folder renamed to ``target`` at the end; returns the final paths."""
    from MedDINOv3Core.dicom.compat import write_dicom_file

    files = []
    with atomic_directory(target) as tmp:
        for k, sop_uid in enumerate(sop_uids):
            name = f"CT{k + 1:05d}.dcm"
            write_dicom_file(tmp / name, _slice_dataset(shared, k, sop_uid, positions[k], normal, stored[k]))
            files.append(target / name)
            if progress is not None:
                progress("write CT series", k + 1, len(sop_uids), name)
    return files


def write_series(
    volume: Volume,
    folder: str | os.PathLike,
    *,
    patient: Mapping[str, str] | None = None,
    study: Mapping[str, str] | None = None,
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "MedDINOv3 reference CT",
    series_number: int = 900,
    patient_position: str = "HFS",
    manufacturer: str = "MedDINOv3",
    progress: ProgressCallback | None = None,
) -> DicomSeries:
    """Write a Volume as a CT Image Storage series (one file a slice), with fresh UIDs.

    The folder is created complete or not at all (files go to a temporary folder that is renamed). Values are stored
    as int16 with Rescale Slope/Intercept, so HU round-trip exactly for integral inputs.

    Args:
        volume: ``(z, y, x)`` voxels with orthonormal LPS axes (any orientation; axial for RT export).
        folder: a new (or empty) directory.
        patient: Patient module attributes by keyword (PatientName, PatientID, PatientBirthDate, PatientSex);
            missing ones are written empty. PatientID defaults to a generated "MEDDINO-..." id.
        study: General Study attributes (StudyDate, StudyTime, StudyID, AccessionNumber, ReferringPhysicianName,
            StudyDescription); StudyDate/Time default to now.
        study_instance_uid, frame_of_reference_uid: reuse an existing study / frame of reference (fresh by default).
        series_description, series_number: General Series attributes.
        patient_position: Patient Position, one of the DICOM defined terms :data:`PATIENT_POSITIONS` (else
            ValueError); a non-DICOM volume does not carry it, so HFS, the usual CT position, is assumed unless given.
        manufacturer: General Equipment Manufacturer.
        progress: optional callback ``(stage, done, total, message)``.

    Returns:
        The written :class:`DicomSeries` (its ``volume`` is the input volume, slice ``k`` = file ``k``).
    """
    check_patient_position(patient_position)
    target = _empty_target(folder)
    axes = _orthonormal_axes(volume)
    stored, slope, intercept = _to_stored(volume.array)
    date, time = _dicom_now()
    patient_attrs, study_attrs = _patient_and_study(patient, study, date, time)
    study_uid, series_uid, frame_uid, sop_uids = _new_uids(volume.shape[0], study_instance_uid, frame_of_reference_uid)
    positions = np.asarray([volume.index_to_physical((0.0, 0.0, float(k))) for k in range(volume.shape[0])])
    identity = _identity_attributes(
        patient_attrs,
        study_attrs,
        (study_uid, series_uid, frame_uid),
        date,
        time,
        series_description=series_description,
        series_number=series_number,
        patient_position=patient_position,
        manufacturer=manufacturer,
    )
    shared = {**identity, **_image_attributes(volume, axes, slope, intercept)}
    files = _write_slices(target, shared, sop_uids, positions, np.cross(axes[:, 0], axes[:, 1]), stored, progress)
    log.info("wrote CT series %s (%d slices) to %s", series_uid, len(sop_uids), target)
    return DicomSeries(
        volume=volume,
        sop_instance_uids=tuple(sop_uids),
        positions=positions,
        sop_class_uid=CT_IMAGE_STORAGE,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_uid,
        modality="CT",
        patient=patient_attrs,
        study=study_attrs,
        series_description=series_description,
        series_number=int(series_number),
        files=tuple(files),
    )

"""The DICOM identity of a volume node: its patient, study, series and slices, as the subject hierarchy records them.

Slicer's DICOM loader (DICOMLib ``DICOMPlugin.addSeriesInSubjectHierarchy`` and the scalar volume plugin) records
where a volume came from:

- the volume's own subject-hierarchy item (the *series* item): item UID ``DICOM`` = Series Instance UID, item UID
  ``DICOMInstanceUID`` = the slices' SOP Instance UIDs (file order), attribute ``DICOM.FrameOfReferenceUID``;
- its *Study* ancestor: item UID ``DICOM`` = Study Instance UID, attributes ``DICOM.StudyID``,
  ``DICOM.StudyDescription``, ``DICOM.StudyDate``, ``DICOM.StudyTime`` (and ``DICOM.StudyInstanceUID``);
- its *Patient* ancestor: attributes ``DICOM.PatientName``, ``DICOM.PatientID``, ``DICOM.PatientSex``,
  ``DICOM.PatientBirthDate``, ``DICOM.PatientComments``;
- the volume node's attribute ``DICOM.instanceUIDs``: the SOP Instance UIDs in the volume's slice order.

An RT Structure Set exported from that volume must keep this identity (the same patient, study and frame of
reference, and reference the same images), or a planning system files it under another patient. This module reads the
identity (:func:`node_dicom_identity`), finds the source series' files (:func:`source_series`, with a lookup
``SOP Instance UID -> file`` such as ``slicer.dicomDatabase.fileForInstance``) and maps the identity onto the tags of
SlicerRT's exportables (:func:`slicerrt_tags`, :func:`apply_slicerrt_tags`). Only a volume with no DICOM identity at
all gets made-up patient values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Names as in Slicer's vtkMRMLSubjectHierarchyConstants (Testing/slicer_lib/test_slicer_dicom_identity.py checks them).
DICOM_UID_NAME = "DICOM"
INSTANCE_UID_NAME = "DICOMInstanceUID"
ATTRIBUTE_PREFIX = "DICOM."
LEVEL_PATIENT, LEVEL_STUDY = "Patient", "Study"
PATIENT_TAGS = ("PatientName", "PatientID", "PatientSex", "PatientBirthDate", "PatientComments")
STUDY_TAGS = ("StudyID", "StudyDescription", "StudyDate", "StudyTime")
FRAME_OF_REFERENCE_ATTRIBUTE = "DICOM.FrameOfReferenceUID"
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
"""Volume node attribute written by Slicer's DICOM scalar volume plugin: SOP Instance UIDs in slice order."""
# Placeholders Slicer's loader writes for empty source values; the source had none, so none is exported.
LOADER_PLACEHOLDERS = {"PatientName": "No name", "StudyDescription": "No study description"}
FALLBACK_PATIENT = {"PatientName": "MedDINOv3^Patient", "PatientID": "MEDDINOV3"}
FALLBACK_STUDY = {"StudyID": "1"}

FileLookup = Callable[[str], "str | os.PathLike | None"]


@dataclass(frozen=True)
class DicomIdentity:
    """Where a volume came from in DICOM; empty strings where the subject hierarchy records nothing.

    Attributes:
        patient: Patient attributes by DICOM keyword (PatientName, PatientID, PatientSex, PatientBirthDate,
            PatientComments), as the source files had them.
        study: General Study attributes by keyword (StudyID, StudyDescription, StudyDate, StudyTime).
        study_instance_uid, series_instance_uid, frame_of_reference_uid: the source series' UIDs.
        instance_uids: SOP Instance UIDs of the volume's slices (slice ``k`` first when known).
    """

    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    instance_uids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        """True when the volume has any DICOM identity (a patient or study attribute, or a UID)."""
        values = [*self.patient.values(), *self.study.values(), self.study_instance_uid, self.series_instance_uid]
        return any(values) or bool(self.instance_uids)


def _attributes(sh, item: int, tags: Iterable[str]) -> dict[str, str]:
    if not item:
        return {}
    out = {}
    for tag in tags:
        value = (sh.GetItemAttribute(item, ATTRIBUTE_PREFIX + tag) or "").strip()
        out[tag] = "" if value == LOADER_PLACEHOLDERS.get(tag) else value
    return out if any(out.values()) else {}


def node_dicom_identity(volume_node, subject_hierarchy=None) -> DicomIdentity:
    """The DICOM identity of ``volume_node`` from its subject-hierarchy items and its ``DICOM.instanceUIDs``.

    The patient and study are the items found with ``GetItemAncestorAtLevel`` (the volume may sit in a folder under
    its study). Returns an empty (false) identity for a volume that did not come from DICOM.
    """
    import slicer

    sh = subject_hierarchy or slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    item = sh.GetItemByDataNode(volume_node) if sh is not None else 0
    instance_uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not item:
        return DicomIdentity(instance_uids=tuple(instance_uids))
    patient_item = sh.GetItemAncestorAtLevel(item, LEVEL_PATIENT)
    study_item = sh.GetItemAncestorAtLevel(item, LEVEL_STUDY)
    study_uid = ""
    if study_item:
        study_uid = sh.GetItemUID(study_item, DICOM_UID_NAME) or sh.GetItemAttribute(
            study_item, ATTRIBUTE_PREFIX + "StudyInstanceUID"
        )
    patient = _attributes(sh, patient_item, PATIENT_TAGS)
    if patient and study_uid and patient.get("PatientID") == f"Patient-{study_uid}":
        patient["PatientID"] = ""  # Slicer's loader made this up for a source without Patient ID
    if not instance_uids:  # file order, which is the slice order of most loads
        instance_uids = (sh.GetItemUID(item, INSTANCE_UID_NAME) or "").split()
    return DicomIdentity(
        patient=patient,
        study=_attributes(sh, study_item, STUDY_TAGS),
        study_instance_uid=(study_uid or "").strip(),
        series_instance_uid=(sh.GetItemUID(item, DICOM_UID_NAME) or "").strip(),
        frame_of_reference_uid=(sh.GetItemAttribute(item, FRAME_OF_REFERENCE_ATTRIBUTE) or "").strip(),
        instance_uids=() if "Unknown" in instance_uids else tuple(instance_uids),  # "Unknown": a file without UID
    )


def dicom_database_lookup() -> FileLookup | None:
    """``slicer.dicomDatabase.fileForInstance`` in the application; None where there is no DICOM database."""
    try:
        import slicer
    except ImportError:
        return None
    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not getattr(database, "isOpen", True):
        return None
    return lambda uid: database.fileForInstance(uid) or None


def source_series(identity: DicomIdentity, grid, file_for_instance: FileLookup | None):
    """The volume's source CT/MR series read from its files, when they can be found and still fit the volume.

    Args:
        identity: the volume's identity (its ``instance_uids`` name the files).
        grid: the volume's geometry (a core Volume): the source series must have the same voxel centres (its axes
            may be stored in another order), else the volume was resampled, cropped or moved since it was loaded.
        file_for_instance: ``SOP Instance UID -> file path`` (None or "" when unknown).

    Returns:
        The :class:`~MedDINOv3Core.dicom.series.DicomSeries`, or None (logged) when any file is missing or the files
        are not the volume's series or grid.
    """
    from MedDINOv3Core.dicom.rtstruct import align_to_grid
    from MedDINOv3Core.dicom.series_reader import read_series

    if not identity.instance_uids or file_for_instance is None:
        return None
    files = []
    for uid in identity.instance_uids:
        path = file_for_instance(uid)
        if not path or not Path(path).is_file():
            log.info("source file of instance %s not found; a CT series is written with the export", uid)
            return None
        files.append(Path(path))
    try:
        series = read_series(files, identity.series_instance_uid or None)
        if set(series.sop_instance_uids) != set(identity.instance_uids):
            raise ValueError("the files hold other instances than the volume's slices")
        align_to_grid(grid, series.volume)
    except (ValueError, FileNotFoundError) as exc:
        log.warning("the volume no longer matches its source series (%s); a CT series is written with it", exc)
        return None
    return series


def write_series_identity(
    identity: DicomIdentity, patient: Mapping[str, str] | None = None, keep_frame: bool = True
) -> dict:
    """Keyword arguments of :func:`~MedDINOv3Core.dicom.series.write_series` that give a newly written CT series
    the volume's patient, study and (``keep_frame``: the volume is still in its source's coordinates) frame of
    reference; ``patient`` only for a volume without DICOM identity."""
    if not identity:
        return {"patient": dict(patient or {})}
    return {
        "patient": dict(identity.patient),
        "study": dict(identity.study),
        "study_instance_uid": identity.study_instance_uid or None,
        "frame_of_reference_uid": (identity.frame_of_reference_uid or None) if keep_frame else None,
    }


def slicerrt_tags(identity: DicomIdentity, patient: Mapping[str, str] | None = None) -> dict[str, str]:
    """The patient and study tags to set on every SlicerRT exportable.

    SlicerRT's ``examineForExport`` fills only the series tags (Modality, SeriesDescription, ...); its exporter takes
    the patient and study tags from the exportables and the Study Instance UID from the study item. A volume with a
    DICOM identity keeps its own values (``patient`` is ignored); one without gets ``patient`` over made-up values.
    """
    if not identity:
        return {**FALLBACK_PATIENT, **FALLBACK_STUDY, **{k: str(v) for k, v in (patient or {}).items()}}
    tags = {tag: identity.patient.get(tag, "") for tag in PATIENT_TAGS}
    tags.update({tag: identity.study.get(tag, "") for tag in STUDY_TAGS})
    tags["StudyInstanceUID"] = identity.study_instance_uid
    return tags


def apply_slicerrt_tags(exportables: Iterable, tags: Mapping[str, str], directory: str | os.PathLike) -> None:
    """Set the output ``directory`` and ``tags`` on each exportable (``qSlicerDICOMExportable``: ``setTag``)."""
    for exportable in exportables:
        exportable.directory = str(directory)
        for tag, value in tags.items():
            exportable.setTag(tag, value)


__all__ = [
    "DicomIdentity",
    "apply_slicerrt_tags",
    "dicom_database_lookup",
    "node_dicom_identity",
    "slicerrt_tags",
    "source_series",
    "write_series_identity",
]

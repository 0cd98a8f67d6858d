"""RT export keeps the source's DICOM identity: a CT series written by the core writer, loaded into a real MRML scene
with the subject hierarchy built as Slicer's DICOM loader builds it, segmented and exported again."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
import vtk

slicer = pytest.importorskip("slicer")

from MedDINOv3Core.data.phantom import make_phantom  # noqa: E402
from MedDINOv3Core.dicom.rtstruct import read_rtstruct_labelmap  # noqa: E402
from MedDINOv3Core.dicom.series import write_series  # noqa: E402
from MedDINOv3Core.dicom.series_reader import read_series  # noqa: E402
from MedDINOv3SlicerLib import dicom_identity as di  # noqa: E402
from MedDINOv3SlicerLib.geometry import add_volume_node  # noqa: E402
from MedDINOv3SlicerLib.logic import MedDINOv3Logic  # noqa: E402
from MedDINOv3SlicerLib.segmentation import labelmap_to_segmentation  # noqa: E402

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-42", "PatientSex": "F", "PatientBirthDate": "19700101"}
STUDY = {"StudyID": "S7", "StudyDescription": "Abdomen CT", "StudyDate": "20240102", "StudyTime": "101500"}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((6, 64, 64), seed=3)


@pytest.fixture
def source(phantom, tmp_path):
    """A CT series on disk with a known identity, read back as Slicer's loader would find it."""
    written = write_series(phantom.ct, tmp_path / "source", patient=PATIENT, study=STUDY, series_description="CT")
    return read_series(written.files)


def load_like_slicer(scene, series, folder_under_study: bool = False):
    """A volume node + subject hierarchy as DICOMLib's addSeriesInSubjectHierarchy and the scalar volume plugin
    make them (series item UIDs and attributes, patient/study items with DICOM.* attributes, DICOM.instanceUIDs)."""
    node = add_volume_node(scene, series.volume, "CT")
    node.SetAttribute("DICOM.instanceUIDs", " ".join(series.sop_instance_uids))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.CreateItem(sh.GetSceneItemID(), node)
    sh.SetItemUID(item, "DICOM", series.series_instance_uid)
    sh.SetItemUID(item, "DICOMInstanceUID", " ".join(sorted(series.sop_instance_uids)))  # file order
    sh.SetItemAttribute(item, "DICOM.FrameOfReferenceUID", series.frame_of_reference_uid)
    sh.SetItemAttribute(item, "DICOM.Modality", "CT")
    patient_id = series.patient["PatientID"] or f"Patient-{series.study_instance_uid}"
    slicer.vtkSlicerSubjectHierarchyModuleLogic.InsertDicomSeriesInHierarchy(
        sh, patient_id, series.study_instance_uid, series.series_instance_uid
    )
    patient_item = sh.GetItemByUID("DICOM", patient_id)
    for tag in di.PATIENT_TAGS:
        value = patient_id if tag == "PatientID" else series.patient.get(tag, "")
        sh.SetItemAttribute(patient_item, "DICOM." + tag, value or ("No name" if tag == "PatientName" else ""))
    study_item = sh.GetItemByUID("DICOM", series.study_instance_uid)
    sh.SetItemAttribute(study_item, "DICOM.StudyInstanceUID", series.study_instance_uid)
    for tag in di.STUDY_TAGS:
        sh.SetItemAttribute(study_item, "DICOM." + tag, series.study.get(tag, ""))
    if folder_under_study:  # users organise series in folders: the study is an ancestor, not the parent
        sh.SetItemParent(item, sh.CreateFolderItem(study_item, "my folder"))
    return node


def _segment(scene, phantom, series, node):
    labelmap = series.volume.with_array(phantom.labels.array)
    return labelmap_to_segmentation(scene, labelmap, phantom.label_table, node, "segmentation")


def _referenced_series(ds):
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    return study, series, [item.ReferencedSOPInstanceUID for item in series.ContourImageSequence]


def _assert_same_identity(ds, series):
    for key in ("PatientName", "PatientID", "PatientSex", "PatientBirthDate", *STUDY):
        assert str(ds.get(key, "")) == (PATIENT | STUDY)[key], key
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert {str(r.ReferencedFrameOfReferenceUID) for r in ds.StructureSetROISequence} == {ds.FrameOfReferenceUID}


def test_names_match_slicers_subject_hierarchy_constants():
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    assert di.DICOM_UID_NAME == constants.GetDICOMUIDName()
    assert di.INSTANCE_UID_NAME == constants.GetDICOMInstanceUIDName()
    assert di.ATTRIBUTE_PREFIX == constants.GetDICOMAttributePrefix()
    assert (di.LEVEL_PATIENT, di.LEVEL_STUDY) == (constants.GetDICOMLevelPatient(), constants.GetDICOMLevelStudy())
    assert di.PATIENT_TAGS == tuple(constants.GetDICOMPatientTagNames())
    assert ("StudyInstanceUID", *di.STUDY_TAGS) == tuple(constants.GetDICOMStudyTagNames())
    assert di.FRAME_OF_REFERENCE_ATTRIBUTE == constants.GetDICOMFrameOfReferenceUIDAttributeName()


def test_identity_is_read_from_the_patient_and_study_ancestors(scene, source):
    node = load_like_slicer(scene, source, folder_under_study=True)
    identity = di.node_dicom_identity(node)
    assert identity and identity.patient == PATIENT | {"PatientComments": ""}
    assert identity.study == STUDY
    assert identity.study_instance_uid == source.study_instance_uid
    assert identity.series_instance_uid == source.series_instance_uid
    assert identity.frame_of_reference_uid == source.frame_of_reference_uid
    assert identity.instance_uids == source.sop_instance_uids  # the node's slice order, not the file order


def test_loader_placeholders_are_not_exported_as_values(scene, source):
    source.patient.update(PatientName="", PatientID="")  # a source without name and ID: Slicer makes both up
    identity = di.node_dicom_identity(load_like_slicer(scene, source))
    assert identity.patient["PatientName"] == "" and identity.patient["PatientID"] == ""
    assert identity.patient["PatientSex"] == "F"


def test_a_volume_not_from_dicom_has_no_identity_and_gets_made_up_tags(scene, phantom):
    node = add_volume_node(scene, phantom.ct, "plain")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    sh.CreateItem(sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "p"), "s"), node)
    identity = di.node_dicom_identity(node)
    assert not identity
    assert di.slicerrt_tags(identity) == {"PatientName": "MedDINOv3^Patient", "PatientID": "MEDDINOV3", "StudyID": "1"}
    assert di.slicerrt_tags(identity, {"PatientID": "X1"})["PatientID"] == "X1"
    assert di.write_series_identity(identity, {"PatientID": "X1"}) == {"patient": {"PatientID": "X1"}}


class Exportable:
    """Stands in for qSlicerDICOMExportable (a plain data holder: directory and tag/setTag)."""

    def __init__(self, **tags):
        self.directory, self.tags = "", dict(tags)

    def tag(self, name):
        return self.tags.get(name, "")

    def setTag(self, name, value):  # noqa: N802 - the Qt class' name
        self.tags[name] = value


def test_slicerrt_exportables_get_the_source_identity(scene, source, tmp_path):
    identity = di.node_dicom_identity(load_like_slicer(scene, source))
    tags = di.slicerrt_tags(identity, {"PatientName": "ignored^for a DICOM volume"})
    assert tags == PATIENT | {"PatientComments": ""} | STUDY | {"StudyInstanceUID": source.study_instance_uid}
    # what examineForExport fills for the CT and the segmentation
    exportables = [
        Exportable(Modality="CT", SeriesDescription="No series description", SeriesNumber="1"),
        Exportable(Modality="RTSTRUCT", SeriesDescription="No series description", SeriesNumber="1"),
    ]
    di.apply_slicerrt_tags(exportables, tags, tmp_path)
    for exportable, modality in zip(exportables, ("CT", "RTSTRUCT"), strict=True):
        assert exportable.directory == str(tmp_path)
        assert exportable.tag("Modality") == modality and exportable.tag("SeriesNumber") == "1"
        assert {k: exportable.tag(k) for k in tags} == tags
        assert exportable.tag("PatientName") != "MedDINOv3^Patient"


def test_core_export_references_the_source_series(scene, phantom, source, tmp_path, dciodvfy):
    node = load_like_slicer(scene, source, folder_under_study=True)
    seg = _segment(scene, phantom, source, node)
    files = dict(zip(source.sop_instance_uids, map(str, source.files), strict=True))
    logic = MedDINOv3Logic(scene, work_dir=tmp_path / "work", user_dir=tmp_path / "user")
    path = logic.export_rtstruct(node, seg, tmp_path / "rt", use_slicerrt=False, file_for_instance=files.get)
    assert not (tmp_path / "rt" / "CT").exists()  # no new CT: the original slices are referenced
    ds = pydicom.dcmread(path)
    _assert_same_identity(ds, source)
    study, series, contour_images = _referenced_series(ds)
    assert study.ReferencedSOPInstanceUID == source.study_instance_uid
    assert series.SeriesInstanceUID == source.series_instance_uid
    assert contour_images == list(source.sop_instance_uids)
    assert dciodvfy(path) == []
    labels, _ = read_rtstruct_labelmap(path, source)  # the contours land on the source's voxels
    np.testing.assert_array_equal(labels.array, phantom.labels.array)


def test_core_export_without_the_source_files_writes_the_ct_in_the_same_study(
    scene, phantom, source, tmp_path, dciodvfy
):
    node = load_like_slicer(scene, source)
    seg = _segment(scene, phantom, source, node)
    logic = MedDINOv3Logic(scene, work_dir=tmp_path / "work", user_dir=tmp_path / "user")
    path = logic.export_rtstruct(node, seg, tmp_path / "rt", use_slicerrt=False, file_for_instance=lambda uid: None)
    ct = read_series(tmp_path / "rt" / "CT")
    assert ct.series_instance_uid != source.series_instance_uid
    assert (ct.patient, ct.study_instance_uid, ct.frame_of_reference_uid) == (
        source.patient,
        source.study_instance_uid,
        source.frame_of_reference_uid,
    )
    assert {k: ct.study[k] for k in STUDY} == STUDY
    ds = pydicom.dcmread(path)
    _assert_same_identity(ds, source)
    assert _referenced_series(ds)[1].SeriesInstanceUID == ct.series_instance_uid
    assert dciodvfy(path) == [] and dciodvfy(ct.files[0]) == []


def test_a_moved_volume_no_longer_references_its_source(scene, phantom, source, tmp_path, caplog):
    node = load_like_slicer(scene, source)
    seg = _segment(scene, phantom, source, node)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.5)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    seg.SetAndObserveTransformNodeID(transform.GetID())
    files = dict(zip(source.sop_instance_uids, map(str, source.files), strict=True))
    logic = MedDINOv3Logic(scene, work_dir=tmp_path / "work", user_dir=tmp_path / "user")
    with caplog.at_level(logging.WARNING):
        path = logic.export_rtstruct(node, seg, tmp_path / "rt", use_slicerrt=False, file_for_instance=files.get)
    assert "no longer matches its source series" in caplog.text
    ct = read_series(tmp_path / "rt" / "CT")
    ds = pydicom.dcmread(path)
    assert ds.PatientID == PATIENT["PatientID"] and ds.StudyInstanceUID == source.study_instance_uid
    # moved: other coordinates than the source's frame of reference
    assert ct.frame_of_reference_uid == ds.FrameOfReferenceUID != source.frame_of_reference_uid
    assert _referenced_series(ds)[1].SeriesInstanceUID == ct.series_instance_uid

"""RT Structure Set export from the scene: SlicerRT's exporter when installed, else the core writer.

Both keep the volume's DICOM identity (``dicom_identity``): the patient, study and frame of reference of a volume
loaded from DICOM. ``MedDINOv3Logic.export_rtstruct`` chooses between them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from MedDINOv3SlicerLib.geometry import volume_from_node
from MedDINOv3SlicerLib.segmentation import segmentation_to_labelmap

log = logging.getLogger(__name__)


def slicerrt_available() -> bool:
    """True inside a Slicer that has SlicerRT's DICOM RT import/export plugin."""
    try:
        import slicer

        plugins = getattr(getattr(slicer, "modules", None), "dicomPlugins", None)
        return bool(plugins) and "DicomRtImportExportPlugin" in plugins
    except Exception:  # noqa: BLE001 - any failure to look means "not available"
        return False


def export_with_core_writer(
    volume_node,
    segmentation_node,
    out: Path,
    patient: dict[str, str] | None = None,
    series_description: str = "MedDINOv3 segmentation",
    file_for_instance: Callable[[str], str | os.PathLike | None] | None = None,
) -> Path:
    """MedDINOv3Core.dicom: reference the source series when its files are found and still fit the volume, else
    write the volume as a CT series of the same patient and study (removed again if the structure set fails)."""
    from MedDINOv3Core.dicom.rtstruct import roi_spec_from_label
    from MedDINOv3Core.dicom.structure_set import export_structure_set
    from MedDINOv3SlicerLib.dicom_identity import (
        dicom_database_lookup,
        node_dicom_identity,
        source_series,
        write_series_identity,
    )

    volume = volume_from_node(volume_node)
    labelmap, labels = segmentation_to_labelmap(segmentation_node, volume_node)
    identity = node_dicom_identity(volume_node)
    lookup = file_for_instance if file_for_instance is not None else dicom_database_lookup()
    series = source_series(identity, volume.geometry_only(), lookup) if identity else None
    out.mkdir(parents=True, exist_ok=True)
    series_options = None
    if series is None:
        moved = volume_node.GetParentTransformNode() is not None  # world coordinates: not the source frame
        series_options = write_series_identity(identity, patient, keep_frame=not moved)
    rois = [roi_spec_from_label(label) for label in labels]
    result = export_structure_set(
        labelmap,
        series if series is not None else volume,
        rois,
        out,
        series_options=series_options,
        series_description=series_description,
    )
    log.info("wrote %s (%d ROIs) on series %s", result.path, len(rois), result.series.series_instance_uid)
    return result.path


def export_with_slicerrt(scene, volume_node, segmentation_node, out: Path, patient: dict[str, str]) -> Path:
    """SlicerRT's exporter on the volume's study, with the source's patient and study tags on every exportable."""
    import slicer

    from MedDINOv3SlicerLib.dicom_identity import apply_slicerrt_tags, node_dicom_identity, slicerrt_tags

    if not slicerrt_available():
        raise RuntimeError("SlicerRT is not installed; install it (Extensions Manager) or use use_slicerrt=False")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    scene_item = sh.GetSceneItemID()
    volume_item = sh.GetItemByDataNode(volume_node) or sh.CreateItem(scene_item, volume_node)
    identity = node_dicom_identity(volume_node, sh)
    # SlicerRT exports one study (its Study Instance UID is the study item's): the CT and the segmentation in it
    study = sh.GetItemAncestorAtLevel(volume_item, "Study")
    if not study:
        subject = sh.CreateSubjectItem(scene_item, patient.get("PatientName", "MedDINOv3 patient"))
        study = sh.CreateStudyItem(subject, "MedDINOv3 study")
        sh.SetItemParent(volume_item, study)
    segmentation_item = sh.GetItemByDataNode(segmentation_node) or sh.CreateItem(scene_item, segmentation_node)
    if sh.GetItemAncestorAtLevel(segmentation_item, "Study") != study:
        sh.SetItemParent(segmentation_item, study)
    plugin = slicer.modules.dicomPlugins["DicomRtImportExportPlugin"]()
    exportables = []
    for item in (volume_item, segmentation_item):
        exportables += list(plugin.examineForExport(item) or [])
    if not exportables:
        raise RuntimeError("SlicerRT found nothing to export for this volume and segmentation")
    out.mkdir(parents=True, exist_ok=True)
    # examineForExport fills only series tags: the patient and study are the source's (made up only without one)
    apply_slicerrt_tags(exportables, slicerrt_tags(identity, patient), out)
    error = plugin.export(exportables)
    if error:
        raise RuntimeError(f"SlicerRT RTSTRUCT export failed: {error}")
    return out


__all__ = ["export_with_core_writer", "export_with_slicerrt", "slicerrt_available"]

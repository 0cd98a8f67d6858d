"""Region from a click -> segment: the similarity region around the clicked point becomes a segment (Qt-free).

The similarity map of the click (from the feature cache, numpy) is thresholded and the 6-connected component that
holds the click (``MedDINOv3Core.explore.region_from_similarity``) is added as a NEW segment of the working
segmentation node, on the volume's grid: a one-click start the user then corrects and trains on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from MedDINOv3SlicerLib.geometry import ras_to_lps_point, update_volume_node, volume_from_node

log = logging.getLogger(__name__)

REGION_COLOR = (0.95, 0.75, 0.2)


def _new_segmentation(scene, volume_node, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    return node


def region_to_segment(
    logic,
    volume_node,
    segmentation_node,
    ras_point: Sequence[float],
    threshold: float,
    name: str | None = None,
    color: Sequence[float] = REGION_COLOR,
):
    """Add the similarity region around world RAS ``ras_point`` as a new segment.

    Args:
        logic: the MedDINOv3Logic (the volume's feature cache; the similarity overlay is updated to this click).
        volume_node: the volume the features were computed on.
        segmentation_node: the working segmentation (None: a new one, "<volume> segmentation").
        ras_point: the clicked point, world RAS.
        threshold: the similarity threshold in [-1, 1] (the threshold slider's value).
        name: the segment's name (default "Region N").

    Returns:
        (segmentation node, segment id, number of voxels).

    Raises:
        ValueError: the click's own similarity is below the threshold (empty region): lower the threshold.
    """
    import slicer

    from MedDINOv3Core.explore import region_from_similarity
    from MedDINOv3SlicerLib.segmentation import ensure_converter_rules, list_segment_ids, remove_node

    similarity = logic.similarity_volume(volume_node, ras_point)
    lps = ras_to_lps_point(np.asarray(ras_point, dtype=np.float64))
    region = region_from_similarity(similarity.array, lps, float(threshold), space="lps", geometry=similarity)
    voxels = int(np.count_nonzero(region))
    if not voxels:
        raise ValueError(f"the clicked point's similarity is below the threshold {threshold:.2f}; lower it")
    ensure_converter_rules()
    if segmentation_node is None:
        segmentation_node = _new_segmentation(logic.scene, volume_node, f"{volume_node.GetName()} segmentation")
    segmentation = segmentation_node.GetSegmentation()
    name = name or f"Region {segmentation.GetNumberOfSegments() + 1}"
    before = set(list_segment_ids(segmentation_node))
    # the region is on the volume's voxel array: a labelmap on the node's own grid, under its transform
    temp = logic.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    try:
        update_volume_node(temp, volume_from_node(volume_node, world=False).with_array(region.astype(np.uint8)))
        temp.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(temp, segmentation_node)
    finally:
        remove_node(logic.scene, temp)
    added = [sid for sid in list_segment_ids(segmentation_node) if sid not in before]
    if not ok or len(added) != 1:
        raise RuntimeError(f"Slicer could not add the region to segmentation '{segmentation_node.GetName()}'")
    segment = segmentation.GetSegment(added[0])
    segment.SetName(name)
    segment.SetColor(*[float(c) for c in color])
    segment_id = added[0]
    log.info("region around the click: %d voxels -> segment '%s'", voxels, name)
    return segmentation_node, segment_id, voxels


__all__ = ["REGION_COLOR", "region_to_segment"]

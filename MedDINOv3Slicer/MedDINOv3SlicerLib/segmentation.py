"""Labelmap Volumes <-> segmentation nodes, with the model card's names, colours and terminology.

- ``labelmap_to_segmentation``: one segment per label value present in the labelmap, named and coloured from the
  card's label table, with its terminology as Slicer's serialised terminology entry (the tag string
  ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier``, each code
  ``scheme^value^meaning``), on the reference volume's geometry.
- ``segmentation_to_labelmap``: the segments rasterised on the reference volume's grid as one labelmap with values
  1..n in segment order, plus the matching label table (for fine-tuning and RT export).

Both go through Slicer's own import/export (``vtkSlicerSegmentationsModuleLogic``), so the result is what Slicer's
Segmentations module would give; geometry crosses the RAS/LPS boundary only in ``geometry``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.labelmaps import NotALabelMap, integer_labels
from MedDINOv3Core.terminology import ANATOMIC_CONTEXT, SLICER_CONTEXT, coded_concept
from MedDINOv3SlicerLib.geometry import update_volume_node, volume_from_node

log = logging.getLogger(__name__)

_CODE_FIELDS = ("category", "type", "typeModifier")
_REGION_FIELDS = ("anatomicRegion", "anatomicRegionModifier")


class SegmentationError(ValueError):
    """A segmentation that cannot be converted; the message says what to do."""


# ------------------------------------------------------------------------------------------------- terminology


def terminology_tag(terminology: Mapping[str, Any] | None) -> str | None:
    """A card label's terminology -> Slicer's serialised terminology entry string, or None without category/type.

    Accepts the card / slicerio form (``"type": [scheme, code, meaning]``) and coded-concept mappings
    (``{"scheme", "code", "meaning"}``).
    """
    if not terminology or terminology.get("category") is None or terminology.get("type") is None:
        return None

    def code(key: str) -> str:
        value = terminology.get(key)
        return "^".join(coded_concept(value)) if value is not None else "^^"

    parts = [str(terminology.get("contextName", SLICER_CONTEXT))]
    parts += [code(k) for k in _CODE_FIELDS]
    parts.append(str(terminology.get("anatomicContextName", ANATOMIC_CONTEXT)))
    parts += [code(k) for k in _REGION_FIELDS]
    return "~".join(parts)


def parse_terminology_tag(tag: str | None) -> dict[str, Any] | None:
    """Slicer's serialised terminology entry -> the card form (empty codes left out), or None when it has no type."""
    if not tag:
        return None
    parts = tag.split("~")
    if len(parts) < 4:
        return None
    parts += [""] * (7 - len(parts))
    out: dict[str, Any] = {"contextName": parts[0]}
    for key, text in zip(_CODE_FIELDS, parts[1:4]):
        code = text.split("^")
        if len(code) == 3 and any(code):
            out[key] = code
    if parts[4]:
        out["anatomicContextName"] = parts[4]
    for key, text in zip(_REGION_FIELDS, parts[5:7]):
        code = text.split("^")
        if len(code) == 3 and any(code):
            out[key] = code
    return out if "type" in out and "category" in out else None


def _set_terminology(segment, tag: str) -> None:
    if hasattr(segment, "SetTerminology"):  # Slicer >= 5.8
        segment.SetTerminology(tag)
    else:
        segment.SetTag(segment.GetTerminologyEntryTagName(), tag)


def _get_terminology(segment) -> str | None:
    if hasattr(segment, "GetTerminology"):
        tag = segment.GetTerminology()
        if tag:
            return tag
    import vtk

    value = vtk.reference("")
    if segment.GetTag(segment.GetTerminologyEntryTagName(), value):
        return str(value)
    return None


def remove_node(scene, node) -> None:
    """Remove a node and its display and storage nodes from the scene."""
    if node is None or scene is None:
        return
    extra = []
    for getter in ("GetNumberOfDisplayNodes", "GetNumberOfStorageNodes"):
        if hasattr(node, getter):
            nth = node.GetNthDisplayNode if "Display" in getter else node.GetNthStorageNode
            extra += [nth(i) for i in range(getattr(node, getter)())]
    scene.RemoveNode(node)
    for other in extra:
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)


# ---------------------------------------------------------------------------------------------- converter rules


def ensure_converter_rules() -> None:
    """Register the segmentation representation converters (as Slicer does at start-up), once per process.

    Inside the Slicer application they are registered already; slicer-core alone starts with none.
    """
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {type(rule).__name__ for rule in factory.GetConverterRules()}
    for name in (
        "vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "vtkClosedSurfaceToBinaryLabelmapConversionRule",
        "vtkClosedSurfaceToFractionalLabelmapConversionRule",
        "vtkFractionalLabelmapToClosedSurfaceConversionRule",
    ):
        cls = getattr(slicer, name, None)
        if cls is not None and name not in present:
            factory.RegisterConverterRule(cls())


# ------------------------------------------------------------------------------------------------ labelmap -> seg


def _label_table(labels: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    table = {}
    for label in labels:
        value = int(label["value"])
        if value <= 0:
            continue
        table[value] = label
    return table


def _color(label: Mapping[str, Any] | None, value: int) -> tuple[float, float, float]:
    if label is not None and label.get("color") is not None:
        c = [float(v) for v in label["color"]]
        if max(c) > 1.0:  # 0..255 given
            c = [v / 255.0 for v in c]
        return (c[0], c[1], c[2])
    rng = np.random.default_rng(value)
    return tuple(float(v) for v in rng.uniform(0.2, 1.0, 3))


def labelmap_to_segmentation(
    scene,
    labelmap: Volume,
    labels: Sequence[Mapping[str, Any]],
    reference_node,
    name: str,
    segmentation_node=None,
):
    """Import an integer labelmap as a segmentation node (one segment per label value present).

    Args:
        scene: the MRML scene.
        labelmap: integer (z, y, x) labelmap with its LPS geometry (normally the reference volume's grid).
        labels: the card's label table: ``{"value", "name", "color" (0..1 RGB), "terminology"}`` per label.
            Values present in the labelmap but missing from the table get "Label <value>" and a fixed colour.
        reference_node: the volume node whose geometry the segmentation refers to (its source geometry).
        name: the segmentation node's name.
        segmentation_node: a node to reuse (its segments are replaced); None creates one.

    Returns:
        the vtkMRMLSegmentationNode, with display nodes, segments in increasing label value.
    """
    import slicer

    ensure_converter_rules()
    try:
        array = integer_labels(labelmap.array)
    except NotALabelMap:
        raise SegmentationError("the labelmap holds non-integer values; give an integer label volume") from None
    array = array.astype(np.int32 if array.min(initial=0) < 0 or array.max(initial=0) > 255 else np.uint8)
    if array.min(initial=0) < 0:
        raise SegmentationError("the labelmap holds negative values; labels must be 0 (background) or positive")
    table = _label_table(labels)
    present = [int(v) for v in np.unique(array) if v > 0]

    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    else:
        segmentation_node.SetName(name)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    if reference_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    if not present:
        log.warning("segmentation '%s': the labelmap is empty (no label > 0)", name)
        return segmentation_node

    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labelmap")
    try:
        update_volume_node(temp, labelmap.with_array(array))
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(temp, segmentation_node)
    finally:
        remove_node(scene, temp)
    if not ok:
        raise SegmentationError(f"Slicer could not import the labelmap into segmentation '{name}'")
    by_value = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        by_value[int(segment.GetLabelValue())] = segment
    missing = sorted(set(present) - set(by_value))
    if missing:
        raise SegmentationError(f"label values {missing} were not imported into segmentation '{name}'")
    for value in present:
        segment = by_value[value]
        label = table.get(value)
        segment.SetName(str(label["name"]) if label is not None and label.get("name") else f"Label {value}")
        segment.SetColor(*_color(label, value))
        tag = terminology_tag(label.get("terminology")) if label is not None else None
        if tag:
            _set_terminology(segment, tag)
    return segmentation_node


# ------------------------------------------------------------------------------------------------ seg -> labelmap


def list_segment_ids(segmentation_node) -> list[str]:
    """The segment ids of a segmentation node, in segment order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def segmentation_to_labelmap(
    segmentation_node, reference_node, segment_ids: Sequence[str] | None = None
) -> tuple[Volume, list[dict[str, Any]]]:
    """Rasterise segments on the reference volume's grid: (labelmap Volume, label table).

    Args:
        segmentation_node: the segmentation.
        reference_node: the volume whose grid (shape and exact geometry) the labelmap takes.
        segment_ids: the segments to export, in this order (default: all, in segment order).

    Returns:
        (uint8 labelmap (z, y, x) with values 1..n in the order of ``segment_ids`` (uint16 for n > 255), label table
        ``[{"value", "name", "color" (0..1), "terminology" (when the segment has one)}]``). Where segments overlap,
        the later segment wins (Slicer's export rule).
    """
    import slicer
    import vtk

    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise SegmentationError("no segmentation node given; select (or create) a segmentation first")
    ensure_converter_rules()
    ids = list(segment_ids) if segment_ids is not None else list_segment_ids(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    unknown = [i for i in ids if segmentation.GetSegment(i) is None]
    if unknown:
        raise SegmentationError(f"segmentation '{segmentation_node.GetName()}' has no segment(s) {unknown}")
    if not ids:
        raise SegmentationError(f"segmentation '{segmentation_node.GetName()}' has no segments to export")
    reference = volume_from_node(reference_node)
    scene = segmentation_node.GetScene()
    labels: list[dict[str, Any]] = []
    for value, sid in enumerate(ids, start=1):
        segment = segmentation.GetSegment(sid)
        entry: dict[str, Any] = {"value": value, "name": segment.GetName(), "color": list(segment.GetColor())}
        terminology = parse_terminology_tag(_get_terminology(segment))
        if terminology is not None:
            entry["terminology"] = terminology
        labels.append(entry)
    id_array = vtk.vtkStringArray()
    for sid in ids:
        id_array.InsertNextValue(sid)
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__meddinov3_export")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, id_array, temp, reference_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not ok:
            raise SegmentationError(
                f"Slicer could not export segmentation '{segmentation_node.GetName()}' on the grid of "
                f"'{reference_node.GetName()}'"
            )
        exported = volume_from_node(temp)
    finally:
        remove_node(scene, temp)
    if exported.shape != reference.shape:
        raise SegmentationError(f"exported labelmap shape {exported.shape} differs from the reference's")
    dtype = np.uint8 if len(ids) <= 255 else np.uint16
    # the export keeps each segment's label value order 1..n; geometry is the reference's, bit for bit
    return reference.with_array(exported.array.astype(dtype)), labels


def unique_names(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make label dicts' names unique in place ("liver", "liver 2", ...; classes are matched by name); returns them."""
    seen: dict[str, int] = {}
    for label in labels:
        base = label["name"] or f"Label {label['value']}"
        seen[base] = seen.get(base, 0) + 1
        label["name"] = base if seen[base] == 1 else f"{base} {seen[base]}"
    return labels


__all__ = [
    "SegmentationError",
    "ensure_converter_rules",
    "labelmap_to_segmentation",
    "parse_terminology_tag",
    "remove_node",
    "list_segment_ids",
    "segmentation_to_labelmap",
    "terminology_tag",
    "unique_names",
]

"""Labelmap <-> segmentation node on a real MRML scene: voxels, geometry, names, colours, terminology."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedDINOv3Core.data.phantom import make_phantom  # noqa: E402
from MedDINOv3Core.data.volume import Volume  # noqa: E402
from MedDINOv3SlicerLib.geometry import add_volume_node  # noqa: E402
from MedDINOv3SlicerLib.segmentation import (  # noqa: E402
    labelmap_to_segmentation,
    list_segment_ids,
    parse_terminology_tag,
    segmentation_to_labelmap,
    terminology_tag,
)

OBLIQUE = (0.9553, -0.2955, 0.0, 0.2955, 0.9553, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def phantom():
    """A small oblique phantom (anisotropic spacing): ct, labels and the card-format label table."""
    direction = np.asarray(OBLIQUE).reshape(3, 3)
    u, _, vt = np.linalg.svd(direction)  # exactly orthonormal
    return make_phantom((12, 40, 48), seed=3, direction=tuple((u @ vt).ravel()), noise_sigma=5.0)


def _segments(node):
    seg = node.GetSegmentation()
    return [seg.GetSegment(i) for i in list_segment_ids(node)]


def test_terminology_tag_round_trip():
    term = {
        "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": {"scheme": "SCT", "code": "64033007", "meaning": "Kidney"},
        "typeModifier": ["SCT", "7771000", "Left"],
    }
    tag = terminology_tag(term)
    assert tag == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
        "~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^"
    )
    back = parse_terminology_tag(tag)
    assert back["type"] == ["SCT", "64033007", "Kidney"] and back["typeModifier"] == ["SCT", "7771000", "Left"]
    assert "anatomicRegion" not in back
    assert terminology_tag({"type": ["SCT", "1", "x"]}) is None  # no category
    # Slicer's own terminology logic reads the string
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(tag, entry)
    assert entry.GetTypeObject().GetCodeValue() == "64033007"
    assert entry.GetTypeModifierObject().GetCodeMeaning() == "Left"


def test_labelmap_to_segmentation_and_back_is_exact(scene, phantom):
    ct_node = add_volume_node(scene, phantom.ct, "ct")
    seg_node = labelmap_to_segmentation(scene, phantom.labels, phantom.label_table, ct_node, "ct segmentation")
    present = [int(v) for v in np.unique(phantom.labels.array) if v > 0]
    segments = _segments(seg_node)
    table = {label["value"]: label for label in phantom.label_table}
    assert [s.GetName() for s in segments] == [table[v]["name"] for v in present]
    for segment, value in zip(segments, present):
        np.testing.assert_allclose(segment.GetColor(), table[value]["color"])
        term = parse_terminology_tag(segment.GetTerminology())
        assert term["type"] == list(table[value]["terminology"]["type"])
    assert seg_node.GetDisplayNode() is not None

    labelmap, labels = segmentation_to_labelmap(seg_node, ct_node)
    assert labelmap.same_geometry(phantom.ct)  # exact
    # values 1..n in segment order: map back to the phantom's values
    remap = np.zeros(len(labels) + 1, dtype=np.uint8)
    remap[1:] = present
    np.testing.assert_array_equal(remap[labelmap.array], phantom.labels.array)
    assert [label["name"] for label in labels] == [table[v]["name"] for v in present]
    assert labels[0]["terminology"]["type"] == list(table[present[0]]["terminology"]["type"])
    np.testing.assert_allclose(labels[0]["color"], table[present[0]]["color"])


def test_segment_subset_order_and_reuse(scene, phantom):
    ct_node = add_volume_node(scene, phantom.ct, "ct")
    seg_node = labelmap_to_segmentation(scene, phantom.labels, phantom.label_table, ct_node, "seg")
    ids = list_segment_ids(seg_node)
    chosen = [ids[2], ids[0]]
    labelmap, labels = segmentation_to_labelmap(seg_node, ct_node, chosen)
    names = [seg_node.GetSegmentation().GetSegment(i).GetName() for i in chosen]
    assert [label["name"] for label in labels] == names and [label["value"] for label in labels] == [1, 2]
    present = [int(v) for v in np.unique(phantom.labels.array) if v > 0]
    np.testing.assert_array_equal(labelmap.array == 1, phantom.labels.array == present[2])
    np.testing.assert_array_equal(labelmap.array == 2, phantom.labels.array == present[0])

    # reusing the node replaces its segments (no new node)
    n_nodes = scene.GetNumberOfNodes()
    small = phantom.labels.with_array((phantom.labels.array == 1).astype(np.uint8) * 7)
    again = labelmap_to_segmentation(scene, small, [], ct_node, "seg v2", segmentation_node=seg_node)
    assert again is seg_node and scene.GetNumberOfNodes() == n_nodes
    assert [s.GetName() for s in _segments(seg_node)] == ["Label 7"]
    back, _ = segmentation_to_labelmap(seg_node, ct_node)
    np.testing.assert_array_equal(back.array, phantom.labels.array == 1)


def test_segmentation_painted_on_the_reference_grid(scene):
    """A segment painted with updateSegmentBinaryLabelmapFromArray-style import lands on the reference grid."""
    geometry = Volume(np.zeros((4, 5, 6), np.int16), (0.5, 0.7, 2.0), (3.0, -4.0, 5.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1))
    ct_node = add_volume_node(scene, geometry, "ct")
    mask = np.zeros(geometry.shape, np.uint8)
    mask[1:3, 2:4, 1:5] = 1
    seg_node = labelmap_to_segmentation(scene, geometry.with_array(mask), [{"value": 1, "name": "x"}], ct_node, "s")
    labelmap, labels = segmentation_to_labelmap(seg_node, ct_node)
    assert labelmap.same_geometry(geometry) and labels[0]["name"] == "x"
    # without a card terminology the segment keeps Slicer's default entry (generic "Tissue")
    assert labels[0].get("terminology", {}).get("type", ["SCT", "85756007"])[1] == "85756007"
    np.testing.assert_array_equal(labelmap.array, mask)

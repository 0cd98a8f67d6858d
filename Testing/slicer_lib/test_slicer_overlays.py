"""Similarity and PCA overlays: one node reused across updates, exact geometry, display settings."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedDINOv3Core.data.volume import Volume  # noqa: E402
from MedDINOv3SlicerLib.geometry import volume_from_node  # noqa: E402
from MedDINOv3SlicerLib.overlays import GENERATED_COLOR_NAME, PcaOverlay, SimilarityOverlay  # noqa: E402

GEOMETRY = Volume(np.zeros((6, 10, 12), np.int16), (0.8, 0.9, 2.5), (-10.0, 20.0, 30.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))


def test_similarity_overlay_reuses_one_node(scene):
    overlay = SimilarityOverlay(scene, threshold=0.2)
    rng = np.random.default_rng(0)
    node = None
    counts = []
    for _ in range(5):
        sim = rng.uniform(-0.5, 1.0, GEOMETRY.shape).astype(np.float32)
        out = overlay.update(GEOMETRY.with_array(sim))
        node = node or out
        assert out is node
        counts.append(scene.GetNumberOfNodes())
        back = volume_from_node(node)
        assert back.array.dtype == np.float32 and back.same_geometry(GEOMETRY)
        np.testing.assert_array_equal(back.array, sim)
        display = node.GetDisplayNode()
        assert not display.GetAutoWindowLevel()
        assert display.GetWindowLevelMin() == pytest.approx(0.2)
        assert display.GetWindowLevelMax() == pytest.approx(float(sim.max()))
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.2)
    assert len(set(counts)) == 1  # no node per update
    color = node.GetDisplayNode().GetColorNode()
    assert color.GetName() == GENERATED_COLOR_NAME and color.GetNumberOfColors() == 256
    r0, r1 = [0.0] * 4, [0.0] * 4
    color.GetColor(0, r0)
    color.GetColor(255, r1)
    assert r0[2] > r0[1] and r1[1] > r1[2]  # dark purple -> yellow


def test_similarity_overlay_prefers_slicer_viridis_and_recreates_deleted_node(scene):
    node_id = slicer.vtkMRMLColorLogic.GetFileColorNodeID("Viridis.txt")  # the id Slicer gives its Viridis table
    viridis = scene.AddNewNodeByClassWithID("vtkMRMLColorTableNode", "Viridis", node_id)
    viridis.SetNumberOfColors(2)
    assert scene.GetNodeByID("vtkMRMLColorTableNodeFileViridis.txt") is not None
    overlay = SimilarityOverlay(scene, threshold=None)
    node = overlay.update(GEOMETRY.with_array(np.ones(GEOMETRY.shape, np.float32)))
    assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileViridis.txt"
    assert not node.GetDisplayNode().GetApplyThreshold()
    scene.RemoveNode(node)
    again = overlay.update(GEOMETRY.with_array(np.zeros(GEOMETRY.shape, np.float32)))
    assert again is not node and scene.IsNodePresent(again)
    overlay.remove()
    assert overlay.node is None


def test_pca_overlay_is_rgb_uint8_and_reused(scene):
    overlay = PcaOverlay(scene)
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(5):
        rgb = rng.integers(0, 256, (*GEOMETRY.shape, 3)).astype(np.uint8)
        node = overlay.update(rgb, GEOMETRY)
        counts.append(scene.GetNumberOfNodes())
        assert node.IsA("vtkMRMLVectorVolumeNode")
        image = node.GetImageData()
        assert image.GetNumberOfScalarComponents() == 3 and image.GetScalarTypeAsString() == "unsigned char"
        assert image.GetDimensions() == GEOMETRY.shape[::-1]
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), rgb)
    assert len(set(counts)) == 1
    with pytest.raises(ValueError, match=r"\(z, y, x, 3\)"):
        overlay.update(np.zeros(GEOMETRY.shape, np.uint8), GEOMETRY)


def test_similarity_updates_write_in_place(scene):
    """Per click: the same vtkImageData and VTK array are overwritten (no new VTK objects); a map computed into
    ``buffer()`` (the node's own memory) needs no copy; a new shape or a NaN falls back correctly."""
    overlay = SimilarityOverlay(scene, threshold=None)
    assert overlay.buffer(GEOMETRY.shape) is None  # no node yet
    first = np.full(GEOMETRY.shape, 0.25, np.float32)
    node = overlay.update(GEOMETRY.with_array(first))
    image, scalars = node.GetImageData(), node.GetImageData().GetPointData().GetScalars()
    before = scalars.GetMTime()
    buffer = overlay.buffer(GEOMETRY.shape)
    assert buffer is not None and buffer.shape == GEOMETRY.shape
    buffer[...] = np.linspace(-1, 1, buffer.size, dtype=np.float32).reshape(buffer.shape)
    buffer[0, 0, 0] = np.nan
    overlay.update(GEOMETRY.with_array(buffer))
    assert node.GetImageData() is image and node.GetImageData().GetPointData().GetScalars() is scalars
    assert scalars.GetMTime() > before  # views are told the voxels changed
    back = volume_from_node(node).array
    assert np.isnan(back[0, 0, 0]) and back.ravel()[-1] == pytest.approx(1.0)
    assert node.GetDisplayNode().GetWindowLevelMin() == pytest.approx(float(np.nanmin(buffer)))  # NaN ignored
    other = Volume(np.zeros((3, 10, 12), np.int16), GEOMETRY.spacing, GEOMETRY.origin, GEOMETRY.direction)
    assert overlay.buffer(other.shape) is None
    overlay.update(other.with_array(np.ones(other.shape, np.float32)))  # another shape: new image data
    assert node.GetImageData() is not image and volume_from_node(node).shape == other.shape

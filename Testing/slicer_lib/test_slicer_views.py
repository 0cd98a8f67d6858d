"""What the slice and 3D views show (MedDINOv3SlicerLib.views and the logic that calls it), on a real MRML scene.

A node added to the scene is shown in no slice view: these tests check that the logic puts the overlays and the
segmentation into every slice view (composite nodes), that the controls (opacity, threshold, hide) act on the
existing nodes, and, with Slicer's slice compositing (``render.SceneViews.slice_rgb``, no OpenGL), that the threshold
hides low similarities in what the user sees.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from render import SceneViews  # noqa: E402

from MedDINOv3Core.data.phantom import make_phantom  # noqa: E402
from MedDINOv3Core.data.volume import Volume  # noqa: E402
from MedDINOv3SlicerLib import views  # noqa: E402
from MedDINOv3SlicerLib.geometry import add_volume_node, ijk_to_ras_array, volume_from_node  # noqa: E402
from MedDINOv3SlicerLib.logic import MedDINOv3Logic  # noqa: E402
from MedDINOv3SlicerLib.overlays import SimilarityOverlay  # noqa: E402
from MedDINOv3SlicerLib.segmentation import labelmap_to_segmentation  # noqa: E402

MODEL = "meddinov3-phantom-tiny"
LIVER = 1


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((8, 96, 96), seed=5)


@pytest.fixture(scope="module")
def feature_dir(phantom, tmp_path_factory):
    """ONE real explore job for the module; each test attaches its cache to the same phantom in a fresh scene."""
    scene = slicer.vtkMRMLScene()
    logic = MedDINOv3Logic(scene, work_dir=tmp_path_factory.mktemp("explore-work"))
    target = tmp_path_factory.mktemp("features")
    try:
        ct = add_volume_node(scene, phantom.ct, "CT")
        logic.explore_job(ct, MODEL, device="cpu", cache_dir=target).start().wait()
    finally:
        logic.cleanup()
        scene.Clear(1)
    return target


@pytest.fixture
def shown(scene):
    """The scene's Red/Yellow/Green slice views (their composite nodes), as the application's layout has them."""
    return SceneViews(scene, size=96)


@pytest.fixture
def ct_node(scene, phantom):
    return add_volume_node(scene, phantom.ct, "phantom CT")


@pytest.fixture
def logic(scene, tmp_path, ct_node, feature_dir):
    lg = MedDINOv3Logic(scene, work_dir=tmp_path / "work", user_dir=tmp_path / "user")
    lg.attach_features(ct_node, feature_dir)
    yield lg
    lg.cleanup()


def _liver_ras(phantom) -> np.ndarray:
    zyx = np.argwhere(phantom.labels.array == LIVER)
    z, y, x = zyx[len(zyx) // 2]
    return (ijk_to_ras_array(phantom.ct) @ np.array([x, y, z, 1.0]))[:3]


def _layers(shown) -> list[tuple[str | None, str | None, float]]:
    return [
        (c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity())
        for c in (shown.composite_node(name) for name in shown.names)
    ]


# ------------------------------------------------------------------------------------------------ views alone


def test_show_overlay_sets_every_slice_view(scene, shown, ct_node):
    overlay = add_volume_node(scene, volume_from_node(ct_node), "overlay")
    assert views.show_overlay(scene, ct_node, overlay, 0.4) == 3
    assert _layers(shown) == [(ct_node.GetID(), overlay.GetID(), pytest.approx(0.4))] * 3
    assert views.shown_overlay_ids(scene) == {overlay.GetID()}
    with pytest.raises(ValueError, match="no overlay"):
        views.show_overlay(scene, ct_node, None)
    assert views.show_overlay(slicer.vtkMRMLScene(), ct_node, overlay) == 0  # no slice view: nothing to do


def test_opacity_and_hide_act_only_where_the_overlay_is_shown(scene, shown, ct_node):
    mine = add_volume_node(scene, volume_from_node(ct_node), "mine")
    other = add_volume_node(scene, volume_from_node(ct_node), "other")
    views.show_overlay(scene, ct_node, mine, 0.5)
    shown.composite_node("Green").SetForegroundVolumeID(other.GetID())  # the user put another volume there
    assert views.set_overlay_opacity(scene, mine, 2.0) == 2  # clamped to 1
    assert [layer[2] for layer in _layers(shown)] == [1.0, 1.0, 0.5]
    assert views.hide_overlay(scene, mine) == 2
    assert [layer[1] for layer in _layers(shown)] == [None, None, other.GetID()]
    assert all(layer[0] == ct_node.GetID() for layer in _layers(shown))  # the volume stays
    assert views.hide_overlay(scene, None) == 0
    with pytest.raises(ValueError, match="NaN"):
        views.set_overlay_opacity(scene, mine, float("nan"))


def test_show_segmentation_in_2d_and_3d(scene, shown, ct_node, phantom):
    seg = labelmap_to_segmentation(scene, phantom.labels, phantom.label_table, ct_node, "seg")
    display = seg.GetDisplayNode()
    display.SetVisibility2DOutline(False)
    assert views.show_segmentation(scene, ct_node, seg, fill_opacity=0.3) == 3
    assert all(layer[0] == ct_node.GetID() for layer in _layers(shown))
    assert display.GetVisibility() and display.GetVisibility2D() and display.GetVisibility3D()
    assert display.GetVisibility2DFill() and display.GetVisibility2DOutline()
    assert display.GetOpacity2DFill() == pytest.approx(0.3)
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")  # what the 3D view draws


def test_similarity_threshold_hides_low_values_in_the_slice_view(scene, shown, ct_node):
    """A ramp map: voxels below the threshold show the CT (gray), above it the colour map; moving the threshold
    changes the view without touching the map (no new node, same voxels)."""
    ct = volume_from_node(ct_node)
    ramp = np.broadcast_to(np.linspace(-1.0, 1.0, ct.shape[2], dtype=np.float32), ct.shape).copy()
    overlay = SimilarityOverlay(scene, threshold=0.0)
    node = overlay.update(Volume(ramp, ct.spacing, ct.origin, ct.direction))
    views.show_overlay(scene, ct_node, node, 1.0)
    shown.fit()
    sim_at = shown.sample("Red", Volume(ramp, ct.spacing, ct.origin, ct.direction), outside=np.nan)
    n_nodes = scene.GetNumberOfNodes()
    for threshold in (0.0, 0.5, -0.5):
        assert overlay.set_threshold(threshold) is node
        rgb = shown.slice_rgb("Red").astype(int)
        coloured = np.ptp(rgb, axis=2) > 12  # the colour map; the CT below is gray (R = G = B)
        inside = np.isfinite(sim_at)
        above, below = inside & (sim_at > threshold + 0.1), inside & (sim_at < threshold - 0.1)
        assert coloured[above].mean() > 0.95, threshold
        assert coloured[below].mean() < 0.05, threshold
    assert scene.GetNumberOfNodes() == n_nodes
    np.testing.assert_array_equal(volume_from_node(node).array, ramp)
    assert overlay.set_threshold(None) is node and not node.GetDisplayNode().GetApplyThreshold()


# ------------------------------------------------------------------------------------------------ the logic


def test_show_similarity_puts_the_overlay_in_every_slice_view(scene, shown, logic, ct_node, phantom):
    node = logic.show_similarity(ct_node, _liver_ras(phantom))
    assert _layers(shown) == [(ct_node.GetID(), node.GetID(), pytest.approx(logic.similarity_overlay.opacity))] * 3
    logic.set_overlay_opacity(0.25)
    assert [layer[2] for layer in _layers(shown)] == [pytest.approx(0.25)] * 3
    logic.hide_overlays()
    assert [layer[:2] for layer in _layers(shown)] == [(ct_node.GetID(), None)] * 3
    again = logic.show_similarity(ct_node, _liver_ras(phantom))  # the next click shows it again, same opacity
    assert again is node and _layers(shown) == [(ct_node.GetID(), node.GetID(), pytest.approx(0.25))] * 3


def test_second_click_keeps_one_overlay_node(scene, shown, logic, ct_node, phantom):
    first = logic.show_similarity(ct_node, _liver_ras(phantom))
    n_nodes = scene.GetNumberOfNodes()
    second = logic.show_similarity(ct_node, _liver_ras(phantom) + np.array([20.0, 10.0, 0.0]))
    assert second is first and scene.GetNumberOfNodes() == n_nodes
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 2  # the CT and the one overlay
    assert {layer[1] for layer in _layers(shown)} == {first.GetID()}


def test_similarity_threshold_from_the_logic(scene, shown, logic, ct_node, phantom):
    assert logic.set_similarity_threshold(0.3) is None  # before the first click: remembered
    node = logic.show_similarity(ct_node, _liver_ras(phantom))
    display = node.GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.3)
    before = volume_from_node(node).array.copy()
    assert logic.set_similarity_threshold(0.6) is node
    assert display.GetLowerThreshold() == pytest.approx(0.6) and display.GetWindowLevelMin() >= 0.6 - 1e-6
    np.testing.assert_array_equal(volume_from_node(node).array, before)  # not recomputed


def test_show_pca_replaces_the_similarity_overlay(scene, shown, logic, ct_node, phantom):
    sim = logic.show_similarity(ct_node, _liver_ras(phantom))
    pca = logic.show_pca(ct_node)
    assert _layers(shown) == [(ct_node.GetID(), pca.GetID(), pytest.approx(logic.pca_overlay.opacity))] * 3
    logic.hide_overlays()
    assert views.shown_overlay_ids(scene) == set() and scene.IsNodePresent(sim) and scene.IsNodePresent(pca)

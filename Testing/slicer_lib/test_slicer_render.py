"""What the user sees, drawn by Slicer's own rendering code offscreen, after the REAL logic and background jobs.

One phantom at the embedded model's training size is segmented (one predict job) and its features extracted (one
explore job) for the whole module. The Red/Yellow/Green slice views are composited by ``vtkMRMLSliceLogic`` (no
OpenGL: always asserted); the segmentation's fill and outline, the click's markup and the 3D view come from Slicer's
displayable managers in an offscreen render window (EGL here; those tests skip, saying why, where offscreen OpenGL is
unavailable). Renders are written to ``tmp_path`` only (``make_screenshots.py`` writes the module's screenshots).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from render import SceneViews, gl_unavailable_reason, save_montage  # noqa: E402
from scipy import ndimage  # noqa: E402

from MedDINOv3Core.data.phantom import LABEL_VALUES, make_phantom  # noqa: E402
from MedDINOv3SlicerLib.geometry import add_volume_node, ijk_to_ras_array  # noqa: E402
from MedDINOv3SlicerLib.logic import MedDINOv3Logic  # noqa: E402
from MedDINOv3SlicerLib.segmentation import segmentation_to_labelmap  # noqa: E402

MODEL = "meddinov3-phantom-tiny"
SHAPE = (48, 192, 192)  # the model's training size
SEED = 3
SIZE = 192  # pixels per view


def organ_ras(phantom, name: str) -> np.ndarray:
    """The world RAS point of the voxel in the middle of an organ's (ground-truth) voxels."""
    zyx = np.argwhere(phantom.labels.array == LABEL_VALUES[name])
    z, y, x = np.median(zyx, axis=0).round().astype(int)
    if phantom.labels.array[z, y, x] != LABEL_VALUES[name]:
        z, y, x = zyx[len(zyx) // 2]
    return (ijk_to_ras_array(phantom.ct) @ np.array([x, y, z, 1.0]))[:3]


def _layers(shown):
    return [
        (c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity())
        for c in (shown.composite_node(n) for n in shown.names)
    ]


def _need_gl() -> None:
    reason = gl_unavailable_reason()
    if reason is not None:
        pytest.skip(f"offscreen OpenGL unavailable ({reason}); the slice compositing is asserted without it")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A scene with slice + 3D views, the phantom CT segmented by the real logic (what the views showed right after
    Segment is recorded), then its features extracted; the similarity and PCA tests click on it."""
    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    phantom = make_phantom(SHAPE, seed=SEED)
    shown = SceneViews(scene, size=SIZE)
    ct = add_volume_node(scene, phantom.ct, "phantom CT")
    work = tmp_path_factory.mktemp("render-logic")
    logic = MedDINOv3Logic(scene, work_dir=work / "work", user_dir=work / "user")
    seg = logic.segment(ct, MODEL, device="cpu")
    shown.fit()
    liver = organ_ras(phantom, "liver")
    shown.jump_to(liver)
    after_segment = SimpleNamespace(
        layers=_layers(shown),
        rgb={name: shown.slice_rgb(name) for name in shown.names},
        gl=None if gl_unavailable_reason() else shown.render_all(),
    )
    logic.explore_job(ct, MODEL, device="cpu").start().wait()
    yield SimpleNamespace(
        scene=scene, phantom=phantom, shown=shown, ct=ct, logic=logic, seg=seg, liver=liver, after_segment=after_segment
    )
    logic.cleanup()
    scene.Clear(1)
    slicer.mrmlScene = previous


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------------------------------- Segment


def test_segment_shows_the_ct_as_background_of_every_slice_view(world):
    """Right after Segment, every slice view composites the input CT as its background (no OpenGL needed)."""
    after = world.after_segment
    assert [layer[0] for layer in after.layers] == [world.ct.GetID()] * 3
    for name, rgb in after.rgb.items():
        hu = world.shown.sample(name, world.phantom.ct, outside=-32768)
        inside = hu > -32768
        assert inside.mean() > 0.3, name  # the view is on the volume
        gray = rgb.astype(np.float64).mean(axis=2)
        assert np.ptp(rgb[inside].astype(int), axis=1).max() <= 1, name  # a gray-scale image: the CT
        assert _correlation(gray[inside], np.clip(hu[inside], -1000, 1000)) > 0.9, name


def test_segment_fill_and_outline_lie_over_the_organs(world, tmp_path):
    """The segmentation displayable manager draws each segment's fill (half opacity) and outline (opaque) where the
    segmentation labels the organ: liver-coloured pixels cover the liver's projection and stay inside it."""
    _need_gl()
    after, shown = world.after_segment, world.shown
    save_montage(list(after.gl.values()), tmp_path / "segment.png")
    labelmap, labels = segmentation_to_labelmap(world.seg, world.ct)
    liver_value = next(label["value"] for label in labels if label["name"] == "liver")
    liver_rgb = 255.0 * np.asarray(next(label["color"] for label in labels if label["name"] == "liver"))
    for name in shown.names:
        plain, drawn = after.rgb[name].astype(float), after.gl[name].astype(float)
        # outside every segment the GL view is exactly the composited CT (the image itself is not resampled)
        segments = shown.sample(name, labelmap) > 0
        near = ndimage.binary_dilation(segments, iterations=2)
        changed = np.abs(drawn - plain).sum(axis=2) > 6
        assert changed.any(), name
        assert (changed & ~near).mean() < 0.002, name  # nothing drawn away from the segments
        hu = shown.sample(name, world.phantom.ct, outside=-32768)
        ct_shown = ~near & (hu > -32768)
        assert _correlation(drawn[ct_shown].mean(axis=1), np.clip(hu[ct_shown], -1000, 1000)) > 0.9, name
        liver = shown.sample(name, labelmap) == liver_value
        if liver.sum() < 50:
            continue
        interior = ndimage.binary_erosion(liver, iterations=2)
        fill = 0.5 * plain + 0.5 * liver_rgb  # what the half-opaque liver fill gives over the CT
        fill_ok = np.abs(drawn - fill).max(axis=2) < 12
        assert fill_ok[interior].mean() > 0.9, name
        assert (fill_ok & ~ndimage.binary_dilation(liver, iterations=2)).sum() < 0.02 * liver.sum(), name
        # the opaque outline: pixels of the liver's own colour along its border
        outline = np.abs(drawn - liver_rgb).max(axis=2) < 12
        border = liver & ~ndimage.binary_erosion(liver)
        ring = ndimage.binary_dilation(border, iterations=2)
        assert outline.sum() > 0.5 * border.sum(), name
        assert (outline & ring).sum() > 0.9 * outline.sum(), name


def test_segment_surfaces_in_the_3d_view(world, tmp_path):
    """The 3D view shows the segments' closed surfaces in their colours (and is empty without them)."""
    assert world.seg.GetSegmentation().ContainsRepresentation("Closed surface")
    _need_gl()
    image = world.after_segment.gl["3D"]
    save_montage([image], tmp_path / "segment_3d.png")
    rgb = image.astype(int)
    drawn = rgb.sum(axis=2) > 30
    assert drawn.mean() > 0.05
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    liver_like = drawn & (r > g + 30) & (g > b) & (r > 80)  # liver (and kidneys): orange-brown
    spleen_like = drawn & (b > g + 20) & (r > g + 20)  # spleen: purple
    assert liver_like.mean() > 0.01 and spleen_like.mean() > 0.001, (liver_like.mean(), spleen_like.mean())
    display = world.seg.GetDisplayNode()
    display.SetVisibility3D(False)
    try:
        assert (world.shown.render_3d().astype(int).sum(axis=2) > 30).mean() < 0.001
    finally:
        display.SetVisibility3D(True)


# ------------------------------------------------------------------------------------------------- similarity


@pytest.fixture
def clicked(world):
    """A click (markups fiducial) inside the liver, the similarity shown for it; the segmentation hidden meanwhile."""
    scene, logic = world.scene, world.logic
    click = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "click")
    click.CreateDefaultDisplayNodes()
    click.AddControlPoint(*world.liver)
    world.seg.GetDisplayNode().SetVisibility(False)
    world.shown.jump_to(world.liver)
    node = logic.show_similarity(world.ct, world.liver)
    yield SimpleNamespace(node=node, click=click)
    logic.hide_overlays()
    world.seg.GetDisplayNode().SetVisibility(True)
    scene.RemoveNode(click)


def test_similarity_is_brighter_inside_the_clicked_organ(world, clicked):
    """After a click in the liver, the overlay is in every slice view and brighter over the liver than over the rest
    of the body (slice compositing only)."""
    assert (
        _layers(world.shown)
        == [(world.ct.GetID(), clicked.node.GetID(), pytest.approx(world.logic.similarity_overlay.opacity))] * 3
    )
    for name in world.shown.names:
        labels = world.shown.sample(name, world.phantom.labels)
        hu = world.shown.sample(name, world.phantom.ct, outside=-1000)
        liver = labels == LABEL_VALUES["liver"]
        if liver.sum() < 50:
            continue
        inside = ndimage.binary_erosion(liver, iterations=2)
        rest = (hu > -500) & ~ndimage.binary_dilation(liver, iterations=4)
        lum = _luminance(world.shown.slice_rgb(name))
        assert lum[inside].mean() > lum[rest].mean() + 30, (name, lum[inside].mean(), lum[rest].mean())


def test_similarity_view_shows_the_click(world, clicked, tmp_path):
    """The markups displayable manager draws the click point over the similarity map, where it was placed."""
    _need_gl()
    rgb = world.shown.render_slice("Red")
    save_montage([rgb], tmp_path / "similarity_red.png")
    plain = world.shown.slice_rgb("Red")
    changed = np.abs(rgb.astype(int) - plain.astype(int)).sum(axis=2) > 30
    row, col = world.shown.ras_to_pixel("Red", world.liver)
    rows, cols = np.nonzero(changed)
    assert len(rows) > 10
    near = np.hypot(rows - row, cols - col) < 8  # the glyph around the point (its label is drawn beside it)
    assert near.sum() > 10
    colour = 255 * np.asarray(clicked.click.GetDisplayNode().GetSelectedColor())
    assert np.abs(rgb[rows[near], cols[near]].astype(float) - colour).max(axis=1).min() < 40
    # and the similarity map under it, as in the composited slice: brighter over the liver
    liver = world.shown.sample("Red", world.phantom.labels) == LABEL_VALUES["liver"]
    body = world.shown.sample("Red", world.phantom.ct, outside=-1000) > -500
    lum = _luminance(rgb)
    inside = ndimage.binary_erosion(liver, iterations=2) & ~changed
    assert lum[inside].mean() > lum[body & ~ndimage.binary_dilation(liver, iterations=4)].mean() + 30


# -------------------------------------------------------------------------------------------------------- PCA


def test_pca_colours_differ_between_organs(world):
    """Show PCA: the overlay is in every slice view and its colours tell liver, spleen and kidney apart."""
    logic, shown = world.logic, world.shown
    pca = logic.show_pca(world.ct)
    try:
        assert [layer[1] for layer in _layers(shown)] == [pca.GetID()] * 3
        logic.set_overlay_opacity(1.0)
        means = {}
        for organ in ("liver", "spleen", "left kidney"):
            shown.jump_to(organ_ras(world.phantom, organ))
            organ_pixels = shown.sample("Red", world.phantom.labels) == LABEL_VALUES[organ]
            mask = ndimage.binary_erosion(organ_pixels, iterations=2)
            assert mask.sum() > 20, organ
            means[organ] = shown.slice_rgb("Red")[mask].astype(float).mean(axis=0)
        names = list(means)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert np.abs(means[a] - means[b]).max() > 25, (a, b, means[a], means[b])
    finally:
        logic.set_overlay_opacity(0.6)
        logic.hide_overlays()
        shown.jump_to(world.liver)

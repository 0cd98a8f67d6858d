"""What the slice and 3D views show (Qt-free: everything goes through the scene's MRML nodes).

A node added to the scene is displayed in no slice view: a slice view shows the volumes its
``vtkMRMLSliceCompositeNode`` names (background, foreground with an opacity, label). These functions set those
nodes for every slice view of a scene, as ``slicer.util.setSliceViewerLayers`` does in the application, so the
same code runs in Slicer and in tests on a bare scene:

- ``show_overlay``: the input volume as background, an overlay (similarity map, PCA colours) as foreground.
- ``set_overlay_opacity`` / ``hide_overlay``: change or clear the foreground where it is that overlay.
- ``show_segmentation``: the input volume as background and the segmentation visible in 2D (fill + outline) and
  in 3D (closed surfaces).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

DEFAULT_OVERLAY_OPACITY = 0.6
SLICE_COMPOSITE_CLASS = "vtkMRMLSliceCompositeNode"


def slice_composite_nodes(scene) -> list:
    """Every slice view's composite node in the scene (Red, Yellow, Green and any other slice view)."""
    if scene is None:
        return []
    nodes = scene.GetNodesByClass(SLICE_COMPOSITE_CLASS)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _node_id(node) -> str | None:
    return node.GetID() if node is not None else None


def clamp_opacity(opacity: float) -> float:
    """``opacity`` as a float clamped to [0, 1] (NaN is an error)."""
    value = float(opacity)
    if value != value:  # NaN
        raise ValueError("opacity must be a number in [0, 1], got NaN")
    return min(1.0, max(0.0, value))


def show_overlay(scene, background, overlay, opacity: float = DEFAULT_OVERLAY_OPACITY) -> int:
    """Show ``overlay`` over ``background`` in every slice view.

    Args:
        scene: the MRML scene.
        background: the input volume node (None: keep each view's background).
        overlay: the overlay volume node, put in the foreground layer.
        opacity: the foreground opacity in [0, 1].

    Returns:
        the number of slice views changed (0 when the scene has no slice view, e.g. a bare test scene).
    """
    if overlay is None:
        raise ValueError("no overlay node to show")
    opacity = clamp_opacity(opacity)
    composites = slice_composite_nodes(scene)
    for composite in composites:
        previous = composite.StartModify()
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(overlay.GetID())
        composite.SetForegroundOpacity(opacity)
        composite.EndModify(previous)
    return len(composites)


def set_overlay_opacity(scene, overlay, opacity: float) -> int:
    """Set the foreground opacity of the slice views whose foreground is ``overlay``; returns how many."""
    opacity = clamp_opacity(opacity)
    overlay_id = _node_id(overlay)
    changed = 0
    for composite in slice_composite_nodes(scene):
        if overlay_id is not None and composite.GetForegroundVolumeID() == overlay_id:
            composite.SetForegroundOpacity(opacity)
            changed += 1
    return changed


def hide_overlay(scene, overlay) -> int:
    """Clear the foreground of the slice views that show ``overlay`` (other foregrounds stay); returns how many."""
    overlay_id = _node_id(overlay)
    changed = 0
    for composite in slice_composite_nodes(scene):
        if overlay_id is not None and composite.GetForegroundVolumeID() == overlay_id:
            composite.SetForegroundVolumeID(None)
            changed += 1
    return changed


def shown_overlay_ids(scene) -> set[str]:
    """The ids of the volumes shown as foreground in any slice view."""
    return {c.GetForegroundVolumeID() for c in slice_composite_nodes(scene) if c.GetForegroundVolumeID()}


def show_segmentation(
    scene,
    volume,
    segmentation,
    fill_opacity: float = 0.5,
    outline: bool = True,
    surfaces: bool = True,
) -> int:
    """Show a segmentation result: ``volume`` as every slice view's background, the segments in 2D and 3D.

    Args:
        scene: the MRML scene.
        volume: the segmented volume (None: keep each view's background).
        segmentation: the segmentation node.
        fill_opacity: the segments' fill opacity in slice views (the outline is drawn fully opaque).
        outline: draw the segments' outlines in slice views.
        surfaces: build the closed-surface representation so the 3D view shows the segments.

    Returns:
        the number of slice views whose background was set.
    """
    if segmentation is None:
        raise ValueError("no segmentation node to show")
    composites = slice_composite_nodes(scene) if volume is not None else []
    for composite in composites:
        composite.SetBackgroundVolumeID(volume.GetID())
    if segmentation.GetDisplayNode() is None:
        segmentation.CreateDefaultDisplayNodes()
    display = segmentation.GetDisplayNode()
    previous = display.StartModify()
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(bool(outline))
    display.SetOpacity2DFill(clamp_opacity(fill_opacity))
    display.SetOpacity2DOutline(1.0)
    display.SetVisibility3D(bool(surfaces))
    display.EndModify(previous)
    if surfaces:
        from MedDINOv3SlicerLib.segmentation import ensure_converter_rules

        ensure_converter_rules()
        if not segmentation.CreateClosedSurfaceRepresentation():
            log.warning("could not build closed surfaces for '%s'; the 3D view stays empty", segmentation.GetName())
    return len(composites)


__all__ = [
    "DEFAULT_OVERLAY_OPACITY",
    "clamp_opacity",
    "hide_overlay",
    "set_overlay_opacity",
    "show_overlay",
    "show_segmentation",
    "shown_overlay_ids",
    "slice_composite_nodes",
]

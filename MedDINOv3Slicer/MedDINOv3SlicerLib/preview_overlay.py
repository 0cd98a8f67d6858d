"""The instant preview's overlay: ONE reused labelmap node in the slice views' label layer (Qt-free).

The preview (every patch labelled by its nearest painted features, computed from the feature cache in well under a
second) is shown as a ``vtkMRMLLabelMapVolumeNode`` with a colour table of the segments' colours, in the label
layer of every slice view: importing it into a segmentation would take longer than computing it, and the label
layer leaves the background, the similarity/PCA foreground and the segmentation the user paints untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from MedDINOv3Core.data.volume import Volume
from MedDINOv3SlicerLib.geometry import update_volume_node
from MedDINOv3SlicerLib.views import slice_composite_nodes

PREVIEW_NAME = "MedDINOv3 preview"
PREVIEW_OPACITY = 0.5


class PreviewOverlay:
    """One reused labelmap node (and its colour table) for the instant preview.

    Args:
        scene: the MRML scene.
        name: the node name (the colour table is "<name> colors").
    """

    def __init__(self, scene, name: str = PREVIEW_NAME) -> None:
        self.scene = scene
        self.name = name
        self._node = None
        self._colors = None

    def _present(self, node):
        return node if node is not None and self.scene.IsNodePresent(node) else None

    @property
    def node(self):
        """The preview labelmap node (None before the first update or after the user deleted it)."""
        self._node = self._present(self._node)
        return self._node

    def _color_table(self, labels: Sequence[Mapping[str, Any]]):
        from MedDINOv3SlicerLib.segmentation import _color

        table = self._present(self._colors)
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{self.name} colors")
            table.SetTypeToUser()
            table.SetHideFromEditors(True)
            self._colors = table
        top = max([0] + [int(label["value"]) for label in labels])
        table.SetNumberOfColors(top + 1)
        table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        by_value = {int(label["value"]): label for label in labels}
        for value in range(1, top + 1):
            label = by_value.get(value)
            r, g, b = _color(label, value)
            table.SetColor(value, str(label.get("name") if label else value), r, g, b, 1.0)
        return table

    def update(self, labelmap: Volume, labels: Sequence[Mapping[str, Any]]):
        """Write ``labelmap`` (values = ``labels``' values, 0 transparent) into the node; returns the node."""
        node = self.node
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", self.name)
            self._node = node
        update_volume_node(node, labelmap)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetAndObserveColorNodeID(self._color_table(labels).GetID())
        return node

    def show(self, background, opacity: float = PREVIEW_OPACITY) -> int:
        """Put the preview in every slice view's label layer (``background`` behind it); returns how many views."""
        node = self.node
        if node is None:
            raise RuntimeError("no preview yet; press Preview first")
        composites = slice_composite_nodes(self.scene)
        for composite in composites:
            previous = composite.StartModify()
            if background is not None:
                composite.SetBackgroundVolumeID(background.GetID())
            composite.SetLabelVolumeID(node.GetID())
            composite.SetLabelOpacity(opacity)
            composite.EndModify(previous)
        return len(composites)

    def hide(self) -> int:
        """Take the preview out of the slice views that show it; returns how many."""
        node = self.node
        changed = 0
        for composite in slice_composite_nodes(self.scene):
            if node is not None and composite.GetLabelVolumeID() == node.GetID():
                composite.SetLabelVolumeID(None)
                changed += 1
        return changed


__all__ = ["PREVIEW_NAME", "PREVIEW_OPACITY", "PreviewOverlay"]

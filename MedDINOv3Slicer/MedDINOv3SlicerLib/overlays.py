"""Feature-exploration overlays: ONE reused node each, updated in place on every click.

- ``SimilarityOverlay``: a float32 scalar volume (cosine similarity in [-1, 1]) shown with a perceptual colour map
  (Slicer's ``vtkMRMLColorTableNodeFileViridis.txt`` when the scene has it, otherwise a generated viridis-like
  table node, made once and reused), window/level set from the map's range, values below ``threshold`` hidden.
- ``PcaOverlay``: an RGB ``vtkMRMLVectorVolumeNode`` (uint8, 3 components) of the first three principal components.

``views.show_overlay`` puts a node in the slice views (a node in the scene is shown in none by itself); the threshold
(``SimilarityOverlay.set_threshold``) changes on the existing node without recomputing the map.

``update(volume)`` writes the voxels and the geometry (the reference volume's, through ``geometry``: the one RAS/LPS
conversion) into the same node; a node the user deleted is recreated on the next update.
"""

from __future__ import annotations

import logging

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3SlicerLib.geometry import update_volume_node

log = logging.getLogger(__name__)

VIRIDIS_NODE_ID = "vtkMRMLColorTableNodeFileViridis.txt"
GENERATED_COLOR_NAME = "MedDINOv3 Viridis"
# viridis sampled at 0, 1/4, 1/2, 3/4, 1 (its published anchor colours); the table interpolates linearly between.
_VIRIDIS_ANCHORS = (
    np.array(
        [[0x44, 0x01, 0x54], [0x3B, 0x52, 0x8B], [0x21, 0x91, 0x8C], [0x5E, 0xC9, 0x62], [0xFD, 0xE7, 0x25]],
        dtype=np.float64,
    )
    / 255.0
)


def colormap_node(scene, n: int = 256):
    """Slicer's Viridis colour table node when present in the scene, else a generated one (created once)."""
    node = scene.GetNodeByID(VIRIDIS_NODE_ID)
    if node is not None:
        return node
    nodes = scene.GetNodesByName(GENERATED_COLOR_NAME)
    for i in range(nodes.GetNumberOfItems()):
        existing = nodes.GetItemAsObject(i)
        if existing.IsA("vtkMRMLColorTableNode"):
            return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", GENERATED_COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(n)
    t = np.linspace(0.0, 1.0, n)
    xs = np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS))
    rgb = np.stack([np.interp(t, xs, _VIRIDIS_ANCHORS[:, c]) for c in range(3)], axis=1)
    for i, (r, g, b) in enumerate(rgb):
        node.SetColor(i, f"{i}", float(r), float(g), float(b), 1.0)
    node.SetHideFromEditors(False)
    return node


class _Overlay:
    class_name = "vtkMRMLScalarVolumeNode"

    def __init__(self, scene, name: str, opacity: float = 0.6) -> None:
        self.scene = scene
        self.name = name
        self.opacity = float(opacity)  # the slice views' foreground opacity when shown (see views.show_overlay)
        self._node = None

    @property
    def node(self):
        """The overlay node (None before the first update or after the user deleted it)."""
        if self._node is not None and (
            self._node.GetScene() is not self.scene or self.scene.IsNodePresent(self._node) == 0
        ):
            self._node = None
        return self._node

    def _ensure_node(self):
        node = self.node
        if node is None:
            node = self.scene.AddNewNodeByClass(self.class_name, self.name)
            self._node = node
        return node

    def remove(self) -> None:
        """Remove the node (and its display nodes) from the scene."""
        from MedDINOv3SlicerLib.segmentation import remove_node

        node = self.node
        if node is not None:
            remove_node(self.scene, node)
        self._node = None


class SimilarityOverlay(_Overlay):
    """One reused float32 scalar volume for cosine-similarity maps (see the module docstring).

    Args:
        scene: the MRML scene.
        name: the node name.
        threshold: similarity below which voxels are hidden in slice views (None: show all); ``set_threshold``
            changes it on the shown node.
        opacity: the slice views' foreground opacity when the overlay is shown (``views.show_overlay``).
    """

    def __init__(
        self, scene, name: str = "MedDINOv3 similarity", threshold: float | None = 0.0, opacity: float = 0.6
    ) -> None:
        super().__init__(scene, name, opacity)
        self.threshold = threshold
        self._range: tuple[float, float] | None = None  # the finite (min, max) of the map in the node

    def buffer(self, shape: tuple[int, int, int]) -> np.ndarray | None:
        """The node's own float32 voxel memory as a (z, y, x) numpy view when it has this shape (compute the next map
        straight into it and ``update`` copies nothing), else None."""
        from vtk.util import numpy_support

        node = self.node
        image = node.GetImageData() if node is not None else None
        scalars = image.GetPointData().GetScalars() if image is not None else None
        if (
            scalars is None
            or scalars.GetNumberOfComponents() != 1
            or scalars.GetDataType() != numpy_support.get_vtk_array_type(np.dtype(np.float32))
        ):
            return None
        if image.GetDimensions() != tuple(shape[::-1]):
            return None
        return numpy_support.vtk_to_numpy(scalars).reshape(shape)

    def update(self, volume: Volume):
        """Write the map (float32 (z, y, x) with its geometry) into the node; returns the node."""
        array = np.asarray(volume.array, dtype=np.float32)
        node = self._ensure_node()
        update_volume_node(node, volume.with_array(array) if array is not volume.array else volume)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetAndObserveColorNodeID(colormap_node(self.scene).GetID())
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # rare: mask the non-finite voxels (a slower pass)
            finite = array[np.isfinite(array)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self._range = (lo, hi)
        self._apply_display(node)
        return node

    def set_threshold(self, threshold: float | None):
        """Hide voxels below ``threshold`` (None: show all) on the existing node, without recomputing the map (a
        slider drives it); returns the node (None before the first update)."""
        self.threshold = None if threshold is None else float(threshold)
        node = self.node
        if node is not None and node.GetDisplayNode() is not None:
            self._apply_display(node)
        return node

    def _apply_display(self, node) -> None:
        """Window/level from the map's range (from the threshold up) and the threshold, in one display update."""
        lo, hi = self._range if self._range is not None else (0.0, 1.0)
        if self.threshold is not None:
            lo = max(lo, float(self.threshold))
        if hi <= lo:
            hi = lo + 1e-3
        display = node.GetDisplayNode()
        previous = display.StartModify()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(lo, hi)
        if self.threshold is not None:
            display.SetApplyThreshold(True)
            display.SetLowerThreshold(float(self.threshold))
            display.SetUpperThreshold(max(hi, 1.0))
        else:
            display.SetApplyThreshold(False)
        display.EndModify(previous)


class PcaOverlay(_Overlay):
    """One reused RGB (uint8 x 3) vector volume for PCA colour maps."""

    class_name = "vtkMRMLVectorVolumeNode"

    def __init__(self, scene, name: str = "MedDINOv3 PCA", opacity: float = 0.6) -> None:
        super().__init__(scene, name, opacity)

    def update(self, rgb: np.ndarray | Volume, geometry: Volume | None = None):
        """Write an RGB map (uint8 (z, y, x, 3)) with ``geometry`` (a Volume of the same (z, y, x)); returns the node.

        Args:
            rgb: the colour map (z, y, x, 3), or a Volume-like holder is not accepted (a Volume is 3D): pass the
                array and the reference geometry.
            geometry: the reference volume (its spacing, origin, direction; its voxels are ignored).
        """
        if isinstance(rgb, Volume):
            raise TypeError("PcaOverlay.update takes the (z, y, x, 3) array and the reference Volume as geometry")
        array = np.asarray(rgb)
        if array.ndim != 4 or array.shape[3] != 3:
            raise ValueError(f"a PCA map is (z, y, x, 3), got shape {array.shape}")
        if geometry is None:
            raise ValueError("PcaOverlay.update needs the reference geometry (a Volume of the same (z, y, x))")
        if array.dtype != np.uint8:
            array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        node = self._ensure_node()
        update_volume_node(node, array, geometry)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        return node


__all__ = ["PcaOverlay", "SimilarityOverlay", "colormap_node"]

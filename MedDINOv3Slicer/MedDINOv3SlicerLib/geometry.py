"""MRML volume nodes <-> MedDINOv3Core Volumes: the ONE place where Slicer's RAS meets the core's LPS.

A Slicer volume node keeps its geometry as three separate parts (spacing, origin in RAS, and the 3x3 IJK-to-RAS
direction matrix whose columns are the RAS directions of the i, j, k axes); a core ``Volume`` keeps the same parts in
SimpleITK's LPS convention. RAS = diag(-1, -1, 1) LPS, so the conversion negates the first two rows of the
direction matrix and the first two origin components: exact in floating point, so node -> Volume -> node is bit
for bit (anisotropic, oblique and flipped geometries included).

Voxels: ``arrayFromVolume`` is (k, j, i) = (z, y, x), the core's order; copies are taken both ways.

Parent transforms: a node under a LINEAR parent transform is read with the transform applied to its geometry (the
world geometry Slicer displays), as long as the transformed axes stay orthogonal (rotation, translation, uniform or
axis-aligned scaling, flips); a shearing transform or a non-linear one (grid, B-spline, thin-plate) is refused with
the advice to harden the transform first (Data module: right-click the transform > Harden transform), because a
resampled copy would silently change the voxels.
"""

from __future__ import annotations

import logging

import numpy as np

from MedDINOv3Core.data.volume import Volume

log = logging.getLogger(__name__)

# diag(-1, -1, 1): RAS <-> LPS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
ORTHOGONALITY_TOL = 1e-6


class GeometryError(ValueError):
    """A node whose geometry cannot be used as is; the message says what to do."""


def lps_to_ras_direction(direction) -> np.ndarray:
    """Row-major 9 LPS direction values (columns = axes) -> (3, 3) RAS direction matrix (columns = axes)."""
    return LPS_TO_RAS @ np.asarray(direction, dtype=np.float64).reshape(3, 3)


def ras_to_lps_point(point) -> np.ndarray:
    """RAS point(s) (..., 3) -> LPS (the same formula converts LPS -> RAS)."""
    return np.asarray(point, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


lps_to_ras_point = ras_to_lps_point


def _vtk_matrix(array: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    a = np.asarray(array, dtype=np.float64)
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            m.SetElement(r, c, float(a[r, c]))
    return m


def _numpy_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def ijk_to_ras_array(volume: Volume) -> np.ndarray:
    """(4, 4) float64 IJK-to-RAS matrix of ``volume``: RAS = F (origin + D diag(spacing) ijk), F = diag(-1, -1, 1)."""
    m = np.eye(4)
    m[:3, :3] = lps_to_ras_direction(volume.direction) * np.asarray(volume.spacing)[None, :]
    m[:3, 3] = ras_to_lps_point(volume.origin)
    return m


def ijk_to_ras_matrix(volume: Volume):
    """The IJK-to-RAS ``vtkMatrix4x4`` of ``volume`` (for ``addVolumeFromArray``, markups, RAS <-> IJK of clicks)."""
    return _vtk_matrix(ijk_to_ras_array(volume))


def _node_directions_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    return _numpy_matrix(m)[:3, :3]


def _parent_world_matrix(node) -> np.ndarray | None:
    """The (4, 4) matrix of the node's parent transform to world, None without one; raises for non-linear ones."""
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None:
        return None
    if not parent.IsTransformToWorldLinear():
        raise GeometryError(
            f"volume '{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; harden the transform "
            "first (Data module: right-click the volume > Harden transform), which resamples the volume, then retry"
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    world = _numpy_matrix(m)
    return None if np.array_equal(world, np.eye(4)) else world


def node_geometry(node, world: bool = True) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin LPS, direction LPS row-major 9) of a volume node, in world coordinates.

    Without a parent transform (or with ``world=False``) the values are the node's own, converted exactly. Under a
    linear parent transform the transform is applied (spacing = transformed axis lengths, direction = their unit
    vectors).

    Raises:
        GeometryError: a non-linear parent transform, or one that shears the voxel axes.
    """
    spacing = np.asarray(node.GetSpacing(), dtype=np.float64)
    origin_ras = np.asarray(node.GetOrigin(), dtype=np.float64)
    dir_ras = _node_directions_ras(node)
    world = _parent_world_matrix(node) if world else None
    if world is not None:
        axes = world[:3, :3] @ (dir_ras * spacing[None, :])
        origin_ras = world[:3, :3] @ origin_ras + world[:3, 3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"the parent transform of volume '{node.GetName()}' collapses a voxel axis")
        dir_ras = axes / spacing[None, :]
        if np.abs(dir_ras.T @ dir_ras - np.eye(3)).max() > ORTHOGONALITY_TOL:
            raise GeometryError(
                f"the parent transform of volume '{node.GetName()}' shears the voxel axes; harden the transform "
                "first (Data module: right-click the volume > Harden transform), then retry"
            )
        log.info("volume '%s': applied its linear parent transform to the geometry", node.GetName())
    direction_lps = LPS_TO_RAS @ dir_ras
    origin_lps = ras_to_lps_point(origin_ras)
    return tuple(spacing.tolist()), tuple(origin_lps.tolist()), tuple(direction_lps.ravel().tolist())


def _node_array(node) -> np.ndarray:
    from vtk.util import numpy_support

    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise GeometryError(f"volume '{node.GetName()}' has no voxels (no image data); load or create it first")
    scalars = image.GetPointData().GetScalars()
    dims = image.GetDimensions()  # (x, y, z)
    flat = numpy_support.vtk_to_numpy(scalars)
    components = scalars.GetNumberOfComponents()
    if components != 1:
        return flat.reshape(dims[2], dims[1], dims[0], components).copy()
    return flat.reshape(dims[2], dims[1], dims[0]).copy()


def volume_from_node(node, world: bool = True) -> Volume:
    """A copy of a scalar (or labelmap) volume node's voxels with its exact LPS geometry.

    Args:
        node: a ``vtkMRMLScalarVolumeNode`` (or subclass: labelmap) with one component per voxel.

    Returns:
        Volume with array (z, y, x) (the node's scalar type), spacing, origin and direction in LPS (world
        coordinates: a linear parent transform is applied, see the module docstring; ``world=False``: the node's
        own geometry, ignoring its parent transform).

    Raises:
        GeometryError: no image data, several components per voxel, or an unusable parent transform.
    """
    if node is None:
        raise GeometryError("no volume node given; select a volume first")
    array = _node_array(node)
    if array.ndim != 3:
        raise GeometryError(
            f"volume '{node.GetName()}' has {array.shape[-1]} components per voxel (a vector or colour volume); "
            "select a scalar volume"
        )
    spacing, origin, direction = node_geometry(node, world)
    return Volume(array, spacing, origin, direction)


def _set_geometry(node, volume: Volume) -> None:
    node.SetSpacing(*volume.spacing)
    node.SetOrigin(*ras_to_lps_point(volume.origin).tolist())
    m = np.eye(4)
    m[:3, :3] = lps_to_ras_direction(volume.direction)
    node.SetIJKToRASDirectionMatrix(_vtk_matrix(m))


def _image_data(array: np.ndarray):
    """vtkImageData (deep copy) from a (z, y, x) or (z, y, x, c) array."""
    import vtk
    from vtk.util import numpy_support

    a = np.ascontiguousarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    components = 1 if a.ndim == 3 else a.shape[3]
    image = vtk.vtkImageData()
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    scalars = numpy_support.numpy_to_vtk(a.reshape(-1, components) if components > 1 else a.reshape(-1), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def update_volume_node(node, volume: Volume | np.ndarray, geometry: Volume | None = None) -> None:
    """Write voxels and geometry into an existing volume node, in place (one Modified event).

    Args:
        node: a scalar, labelmap or vector volume node.
        volume: a Volume (its array and geometry), or a bare array (z, y, x[, c]) with ``geometry`` given.
        geometry: the geometry for a bare array (a Volume of the same (z, y, x)); ignored for a Volume.
    """
    if isinstance(volume, Volume):
        array, geometry = volume.array, volume
    else:
        array = np.asarray(volume)
        if geometry is None:
            raise ValueError("a bare array needs the geometry (a Volume of the same shape)")
        if tuple(array.shape[:3]) != geometry.shape:
            raise ValueError(f"array shape {array.shape[:3]} differs from the geometry's {geometry.shape}")
    was = node.StartModify()
    try:
        _set_geometry(node, geometry)
        if not _copy_into_image_data(node.GetImageData(), array):
            node.SetAndObserveImageData(_image_data(array))
    finally:
        node.EndModify(was)


def _copy_into_image_data(image, array: np.ndarray) -> bool:
    """Overwrite ``image``'s voxels with ``array`` in place when dimensions, components and scalar type match (an
    overlay updated per click then costs one memory copy, no new VTK objects); False when they do not."""
    from vtk.util import numpy_support

    if image is None or array.dtype == bool or image.GetPointData().GetScalars() is None:
        return False
    scalars = image.GetPointData().GetScalars()
    components = 1 if array.ndim == 3 else array.shape[3]
    if (
        image.GetDimensions() != (array.shape[2], array.shape[1], array.shape[0])
        or scalars.GetNumberOfComponents() != components
        or numpy_support.get_vtk_array_type(array.dtype) != scalars.GetDataType()
    ):
        return False
    target = numpy_support.vtk_to_numpy(scalars).reshape(array.shape)  # a view of the VTK memory
    if not (target.ctypes.data == array.ctypes.data and target.strides == array.strides):  # computed in place
        target[...] = array
    scalars.Modified()
    image.Modified()
    return True


def add_volume_node(scene, volume: Volume, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """Add a new volume node with ``volume``'s voxels and exact geometry (and default display nodes) to ``scene``."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


__all__ = [
    "GeometryError",
    "add_volume_node",
    "ijk_to_ras_array",
    "ijk_to_ras_matrix",
    "lps_to_ras_direction",
    "lps_to_ras_point",
    "node_geometry",
    "ras_to_lps_point",
    "update_volume_node",
    "volume_from_node",
]

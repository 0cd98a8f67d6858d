"""RAS <-> LPS: volume nodes <-> core Volumes on a real MRML scene, checked against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedDINOv3Core.data.volume import Volume  # noqa: E402
from MedDINOv3Core.volume_io import write_volume  # noqa: E402
from MedDINOv3SlicerLib.geometry import (  # noqa: E402
    GeometryError,
    add_volume_node,
    ijk_to_ras_array,
    update_volume_node,
    volume_from_node,
)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


GEOMETRIES = {
    "anisotropic": ((0.7, 0.9, 3.0), (-120.25, 33.5, 901.125), np.eye(3)),
    "oblique": ((0.8, 0.8, 2.5), (10.0, -20.0, 30.0), _rotation(0.3, -0.2, 0.45)),
    "flipped": ((1.25, 0.6, 5.0), (0.1, 0.2, 0.3), np.diag([-1.0, 1.0, -1.0])),
    "permuted": ((1.0, 2.0, 3.0), (5.0, 6.0, 7.0), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),
}


def _volume(name: str, dtype=np.int16, shape=(5, 7, 9)) -> Volume:
    spacing, origin, direction = GEOMETRIES[name]
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=shape).astype(dtype)
    return Volume(array, spacing, origin, direction.ravel())


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_is_bit_exact(scene, name, dtype):
    vol = _volume(name, dtype)
    node = add_volume_node(scene, vol, "ct")
    back = volume_from_node(node)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing == vol.spacing and back.origin == vol.origin and back.direction == vol.direction
    assert back.same_geometry(vol)
    # the copy does not share memory with the node
    back.array[0, 0, 0] += 1
    assert volume_from_node(node).array[0, 0, 0] == vol.array[0, 0, 0]
    # node -> Volume -> a second node: bit-exact geometry and voxels
    node2 = add_volume_node(scene, back.with_array(vol.array), "copy")
    import vtk

    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(a)
    node2.GetIJKToRASMatrix(b)
    assert [a.GetElement(r, c) for r in range(4) for c in range(4)] == [
        b.GetElement(r, c) for r in range(4) for c in range(4)
    ]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node2), vol.array)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_node_matrix_matches_simpleitk(scene, tmp_path, name):
    """The node's IJK-to-RAS and SimpleITK's reading of the written file put every voxel at the same place."""
    sitk = pytest.importorskip("SimpleITK")
    vol = _volume(name)
    path = write_volume(vol, tmp_path / "ct.nrrd")
    image = sitk.ReadImage(str(path))
    node = add_volume_node(scene, vol, "ct")
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_ras, ijk_to_ras_array(vol), atol=1e-12)
    for ijk in [(0, 0, 0), (8, 6, 4), (3, 1, 2), (8, 0, 4)]:
        ras = ijk_to_ras @ np.array([*ijk, 1.0])
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(ras[:3] * [-1, -1, 1], lps, atol=1e-9)
        # and the array element agrees: array[k, j, i]
        assert sitk.GetArrayViewFromImage(image)[ijk[2], ijk[1], ijk[0]] == vol.array[ijk[2], ijk[1], ijk[0]]


def test_labelmap_and_update_in_place(scene):
    vol = _volume("oblique", np.uint8)
    node = add_volume_node(scene, vol, "labels", class_name="vtkMRMLLabelMapVolumeNode")
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    other = _volume("flipped", np.float32, shape=(3, 4, 5))
    n_nodes = scene.GetNumberOfNodes()
    update_volume_node(node, other)
    assert scene.GetNumberOfNodes() == n_nodes
    back = volume_from_node(node)
    assert back.same_geometry(other)
    np.testing.assert_array_equal(back.array, other.array)


def test_linear_parent_transform_is_applied(scene):
    vol = _volume("anisotropic")
    node = add_volume_node(scene, vol, "ct")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "move")
    import vtk

    matrix = np.eye(4)
    matrix[:3, :3] = _rotation(0.0, 0.0, np.pi / 6)
    matrix[:3, 3] = (10.0, -5.0, 2.0)
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, matrix[r, c])
    transform.SetMatrixTransformToParent(vm)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = volume_from_node(node)
    expected = matrix @ ijk_to_ras_array(vol)
    np.testing.assert_allclose(ijk_to_ras_array(world), expected, atol=1e-9)
    np.testing.assert_array_equal(world.array, vol.array)


def test_shearing_and_nonlinear_transforms_are_refused(scene):
    node = add_volume_node(scene, _volume("anisotropic"), "ct")
    shear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shear")
    import vtk

    vm = vtk.vtkMatrix4x4()
    vm.SetElement(0, 1, 0.5)
    shear.SetMatrixTransformToParent(vm)
    node.SetAndObserveTransformNodeID(shear.GetID())
    with pytest.raises(GeometryError, match="Harden transform"):
        volume_from_node(node)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(GeometryError, match="non-linear"):
        volume_from_node(node)


def test_refuses_vector_and_empty_nodes(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(GeometryError, match="no voxels"):
        volume_from_node(empty)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    geometry = _volume("oblique")
    update_volume_node(vector, np.zeros((*geometry.shape, 3), np.uint8), geometry)
    with pytest.raises(GeometryError, match="components"):
        volume_from_node(vector)

"""Volume reading/writing: geometry kept per format, DICOM series folders, clear errors for bad inputs."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.labelmaps import NotALabelMap
from MedDINOv3Core.volume_io import (
    VolumeReadError,
    from_sitk,
    read_segmentation,
    read_volume,
    to_sitk,
    write_segmentation,
    write_volume,
)

REPO = Path(__file__).resolve().parents[2]


def oblique_direction(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(np.eye(3) + 0.3 * rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture
def volume():
    rng = np.random.default_rng(1)
    array = rng.integers(-1024, 2000, size=(6, 9, 11)).astype(np.int16)
    return Volume(array, (0.7421875, 0.8125, 2.5), (-123.456789012345, 20.5, -301.25), oblique_direction().ravel())


def geometry(v: Volume) -> np.ndarray:
    return np.r_[v.spacing, v.origin, v.direction]


@pytest.mark.parametrize("suffix, tol", [(".mha", 0.0), (".mhd", 0.0), (".nrrd", 1e-12), (".nii.gz", 1e-5)])
def test_round_trip_keeps_geometry(volume, tmp_path, suffix, tol):
    path = write_volume(volume, tmp_path / f"ct{suffix}")
    again = read_volume(path)
    assert again.shape == volume.shape and again.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(again.array, volume.array)
    assert np.abs(geometry(again) - geometry(volume)).max() <= tol
    # only the final file(s) remain: no temporary names left behind
    names = sorted(p.name for p in tmp_path.iterdir())
    assert all(not n.startswith(".") for n in names), names


def test_physical_points_survive_round_trip(volume, tmp_path):
    again = read_volume(write_volume(volume, tmp_path / "ct.nrrd"))
    ijk = np.array([[0, 0, 0], [10, 8, 5], [3.5, 2.25, 1.0]])
    np.testing.assert_allclose(again.index_to_physical(ijk), volume.index_to_physical(ijk), atol=1e-9)
    np.testing.assert_allclose(volume.physical_to_index(volume.index_to_physical(ijk)), ijk, atol=1e-9)


def test_dicom_series_folder_round_trip(tmp_path):
    array = (np.arange(4 * 8 * 10).reshape(4, 8, 10) - 100).astype(np.int16)
    v = Volume(array, (0.5, 0.6, 2.0), (10.0, -20.0, 30.0))
    write_volume(v, tmp_path / "series")
    again = read_volume(tmp_path / "series")
    assert again.shape == v.shape
    np.testing.assert_array_equal(again.array.astype(np.int32), array.astype(np.int32))
    np.testing.assert_allclose(geometry(again), geometry(v), atol=1e-4)


def test_seg_nrrd_has_names_colors_terminology(tmp_path):
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 1:3, 1:4] = 1
    labels[2, 0, 0] = 4
    v = Volume(labels, (1.0, 1.5, 3.0), (1.0, 2.0, 3.0), oblique_direction(2).ravel())
    label_defs = [
        {
            "value": 1,
            "name": "liver",
            "color": [0.8, 0.5, 0.4],
            "terminology": {
                "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"},
            },
        },
        {"value": 4, "name": "kidney", "color": [0.1, 0.2, 0.3]},
    ]
    path = write_segmentation(v, tmp_path / "o.seg.nrrd", label_defs)
    again, segments = read_segmentation(path)
    np.testing.assert_array_equal(again.array, labels)
    np.testing.assert_allclose(geometry(again), geometry(v), atol=1e-12)
    by_name = {s["name"]: s for s in segments}
    assert by_name["liver"]["labelValue"] == 1 and by_name["kidney"]["labelValue"] == 4
    assert by_name["kidney"]["color"] == pytest.approx([0.1, 0.2, 0.3])
    assert by_name["liver"]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    # a plain reader sees the labelmap too
    np.testing.assert_array_equal(read_volume(path).array, labels)


def test_seg_nrrd_takes_whole_number_floats_and_refuses_fractions(tmp_path):
    """write_segmentation uses the one label-map check (labelmaps.integer_labels): float labels holding whole
    numbers are written as integers, a bool mask as 0/1, and a fraction is refused before any file is written."""
    labels = np.zeros((2, 3, 4), np.float32)
    labels[0, 1, 1], labels[1, 2, 3] = 1.0, 300.0
    again, segments = read_segmentation(write_segmentation(Volume(labels), tmp_path / "float.seg.nrrd"))
    assert np.issubdtype(again.array.dtype, np.integer)
    np.testing.assert_array_equal(again.array, labels.astype(np.int64))
    assert sorted(s["labelValue"] for s in segments) == [1, 300]

    mask = np.zeros((2, 3, 4), bool)
    mask[1, 1, 2] = True
    again, _ = read_segmentation(write_segmentation(Volume(mask), tmp_path / "mask.seg.nrrd"))
    np.testing.assert_array_equal(again.array, mask.astype(np.uint8))

    labels[0, 0, 0] = 1.5
    target = tmp_path / "fraction.seg.nrrd"
    with pytest.raises(NotALabelMap, match=r"segmentation for .*fraction\.seg\.nrrd is not a label map") as info:
        write_segmentation(Volume(labels), target)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert not target.exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["float.seg.nrrd", "mask.seg.nrrd"]


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input not found: .*nothing\.nii\.gz; check the path"):
        read_volume(tmp_path / "nothing.nii.gz")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(VolumeReadError, match=r"empty\.nrrd is empty \(0 bytes\)"):
        read_volume(tmp_path / "empty.nrrd")


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"this is not an image"))
    with pytest.raises(
        VolumeReadError, match=r"could not read .*junk\.nii\.gz as an image .*supported inputs are NIfTI"
    ):
        read_volume(tmp_path / "junk.nii.gz")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match="holds no DICOM image series"):
        read_volume(tmp_path)


def test_2d_image(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.int16)), str(tmp_path / "slice.nrrd"))
    with pytest.raises(VolumeReadError, match=r"slice\.nrrd is a 2D image .*3D volumes"):
        read_volume(tmp_path / "slice.nrrd")


def test_4d_image(tmp_path):
    frames = [sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)) for _ in range(2)]
    image = sitk.JoinSeries(frames)
    assert image.GetDimension() == 4
    sitk.WriteImage(image, str(tmp_path / "t.nii.gz"))
    with pytest.raises(VolumeReadError, match=r"t\.nii\.gz is a 4D image .*extract one 3D volume"):
        read_volume(tmp_path / "t.nii.gz")


def test_vector_image(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.mha"))
    with pytest.raises(VolumeReadError, match=r"rgb\.mha has 3 components per voxel .*scalar"):
        read_volume(tmp_path / "rgb.mha")


def test_non_finite_voxels(tmp_path):
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nrrd"))
    with pytest.raises(VolumeReadError, match=r"nan\.nrrd contains 2 non-finite voxel\(s\) \(NaN or Inf\)"):
        read_volume(tmp_path / "nan.nrrd")


def test_unsupported_output_suffix(volume, tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type; use \.nii\.gz"):
        write_volume(volume, tmp_path / "out.png")


def test_overwrite_replaces_atomically(volume, tmp_path):
    target = tmp_path / "ct.mha"
    write_volume(volume, target)
    write_volume(volume.with_array(volume.array * 0), target)
    assert not read_volume(target).array.any()
    assert [p.name for p in tmp_path.iterdir()] == ["ct.mha"]


def test_write_volume_seg_nrrd_names_segments_by_value(tmp_path):
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, 0], labels[1, 2, 3] = 3, 5
    _, segments = read_segmentation(write_volume(Volume(labels), tmp_path / "auto.seg.nrrd"))
    assert sorted((s["labelValue"], s["name"]) for s in segments) == [(3, "Segment_3"), (5, "Segment_5")]


def test_single_dicom_file_asks_for_the_series_folder():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    with pytest.raises(VolumeReadError, match=r"CT_small\.dcm is a 2D image .*the folder holding all slices"):
        read_volume(path)


def test_volume_module_imports_no_simpleitk():
    code = "import MedDINOv3Core.data.volume, sys; assert 'SimpleITK' not in sys.modules, 'SimpleITK was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr


def test_sitk_conversion_keeps_voxels_and_geometry(volume):
    image = to_sitk(volume)
    assert image.GetSize() == volume.shape[::-1]
    again = from_sitk(image)
    np.testing.assert_array_equal(again.array, volume.array)
    assert np.array_equal(geometry(again), geometry(volume))
    with pytest.raises(ValueError, match="expected a 3D image"):
        from_sitk(sitk.Image([4, 5], sitk.sitkInt16))

"""Issue 16: bad input never succeeds silently (MedDINOv3Core.volume_io.read_volume), one test per class."""

from __future__ import annotations

import gzip
import logging
import re
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from MedDINOv3Core.volume_io import VolumeReadError, read_volume

nib = pytest.importorskip("nibabel")


def _image(dtype=np.float32, shape=(6, 7, 8)) -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(0).uniform(-100, 100, shape).astype(dtype))


def _cut(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _mha(path, header: str, data: bytes = b""):
    path.write_bytes(header.encode() + data)
    return path


@pytest.mark.parametrize("suffix", ["nii", "nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4"])
def test_non_finite_nifti_voxels_are_refused(tmp_path, suffix, dtype):
    array = np.zeros((5, 6, 7), dtype=dtype)
    array[1, 2, 3], array[4, 5, 6], array[0, 0, 0] = np.nan, np.inf, -np.inf
    path = tmp_path / f"ct.{suffix}"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    with pytest.raises(VolumeReadError, match=r"ct\.nii(\.gz)? contains 3 non-finite voxel\(s\)"):
        read_volume(path)
    # NIfTI-2 as well, and NRRD / MetaImage keep being refused
    path2 = tmp_path / f"ct2.{suffix}"
    nib.save(nib.Nifti2Image(array, np.eye(4)), path2)
    with pytest.raises(VolumeReadError, match="contains 3 non-finite"):
        read_volume(path2)
    for other in ("nrrd", "mha"):
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float32)), str(tmp_path / f"ct.{other}"))
        with pytest.raises(VolumeReadError, match="contains 3 non-finite"):
            read_volume(tmp_path / f"ct.{other}")
    # finite floats still read
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), dtype=dtype) * np.arange(7), np.eye(4)), path)
    assert read_volume(path).shape == (7, 6, 5)


def test_truncated_files_are_refused(tmp_path):
    image = _image(shape=(20, 30, 40))
    cases = {}
    for name, compress in [("a.nii.gz", True), ("b.nii", False), ("c.nrrd", True), ("d.nrrd", False)]:
        sitk.WriteImage(image, str(tmp_path / name), compress)
        cases[name] = _cut(tmp_path / name)
    for name, compress in [("e.mha", False), ("f.mha", True)]:
        sitk.WriteImage(image, str(tmp_path / name), compress)
        cases[name] = _cut(tmp_path / name)
    # a complete gzip stream whose NIfTI voxel block is short
    full = tmp_path / "full.nii"
    sitk.WriteImage(image, str(full))
    data = full.read_bytes()
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    cases["g.nii.gz"] = tmp_path / "g.nii.gz"
    expected = {
        "a.nii.gz": "gzip stream is cut",
        "b.nii": "truncated: its header declares 96000 bytes of voxel data but the file holds",
        "c.nrrd": "the file is truncated: expected 96000 bytes but received",
        "d.nrrd": "the file is truncated: fread got only",
        "e.mha": "truncated: its header declares 96000 bytes",
        "f.mha": "voxel data is shorter than the header declares",
        "g.nii.gz": "truncated: its header declares 96000 bytes",
    }
    for name, path in cases.items():
        with pytest.raises(VolumeReadError, match=expected[name]) as info:
            read_volume(path)
        message = str(info.value)
        assert name in message and "\n" not in message and ".cxx" not in message
    # a header that declares more voxels than a detached .mhd data file holds
    (tmp_path / "h.raw").write_bytes(bytes(10))
    _mha(tmp_path / "h.mhd", "NDims = 3\nDimSize = 2 2 2\nElementType = MET_USHORT\nElementDataFile = h.raw\n")
    with pytest.raises(VolumeReadError, match="declares 16 bytes of voxel data but the file holds 10"):
        read_volume(tmp_path / "h.mhd")


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_cut_or_damaged_gzip_nifti_is_refused_with_the_reason(tmp_path, dtype):
    # integer voxels skip the full pre-read scan when the gzip trailer records the header's size; a cut stream and
    # damage inside the stream must still be refused, by name
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_image(dtype, shape=(20, 30, 40)), str(path), True)
    good = path.read_bytes()
    assert read_volume(path).shape == (20, 30, 40)
    for name, data in [
        ("cut", good[: len(good) * 2 // 3]),
        ("flipped", good[:-300] + bytes([good[-300] ^ 0x55]) + good[-299:]),
    ]:
        bad = tmp_path / f"{name}.nii.gz"
        bad.write_bytes(data)
        with pytest.raises(VolumeReadError, match=rf"{name}\.nii\.gz is truncated or corrupt") as info:
            read_volume(bad)
        assert "\n" not in str(info.value) and ".cxx" not in str(info.value)


def test_bad_spacing_and_complex_voxels_are_refused(tmp_path):
    header = "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    _mha(tmp_path / "zero.mha", header.replace("NDims = 3\n", "NDims = 3\nElementSpacing = 0 1 1\n"), bytes(8))
    with pytest.raises(VolumeReadError, match=r"zero\.mha .*Zero-valued spacing is not supported"):
        read_volume(tmp_path / "zero.mha")
    nrrd = "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nspacings: {} 1 1\nencoding: raw\n\n"
    (tmp_path / "s.nrrd").write_bytes(nrrd.format("0").encode() + bytes(8))
    with pytest.raises(VolumeReadError, match=r"s\.nrrd .*axis 0 spacing \(0\) invalid"):
        read_volume(tmp_path / "s.nrrd")
    # a negative NRRD spacing is a flipped axis, not a bad one: ITK reads spacing 1 and direction -1
    (tmp_path / "s.nrrd").write_bytes(nrrd.format("-1").encode() + bytes(8))
    volume = read_volume(tmp_path / "s.nrrd")
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.direction[0] == -1.0
    for dtype in (np.complex64, np.complex128):
        path = tmp_path / f"c{np.dtype(dtype).itemsize}.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((3, 4, 5), dtype) * 1j, np.eye(4)), path)
        with pytest.raises(VolumeReadError, match=f"holds complex voxels \\({np.dtype(dtype).name}\\)"):
            read_volume(path)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.complex64)), str(tmp_path / "c.mha"))
    with pytest.raises(VolumeReadError, match="components per voxel"):
        read_volume(tmp_path / "c.mha")


def test_constant_and_implausible_ct_values_warn_once(tmp_path, caplog):
    cases = {
        "constant.nrrd": (np.full((3, 4, 5), -1024, np.int16), "is constant \\(every voxel is -1024\\)"),
        "scaled.nrrd": (np.linspace(-32000, 32000, 60).reshape(3, 4, 5).astype(np.float32), "implausible for CT"),
        "air.nii.gz": (np.linspace(-3000, -600, 60).reshape(3, 4, 5).astype(np.int16), "implausible for CT"),
        "ct.mha": (np.linspace(-1024, 3071, 60).reshape(3, 4, 5).astype(np.int16), None),
    }
    for name, (array, warning) in cases.items():
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="MedDINOv3Core.volume_io"):
            volume = read_volume(tmp_path / name)
        np.testing.assert_array_equal(volume.array, array)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        if warning is None:
            assert warnings == []
        else:
            assert len(warnings) == 1 and "\n" not in warnings[0], warnings
            assert name in warnings[0]
            assert re.search(warning, warnings[0]), warnings


def test_itk_errors_carry_their_reason_line(tmp_path):
    sheared = tmp_path / "shear.nii"
    affine = np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), affine), sheared)
    huge = _mha(
        tmp_path / "huge.mha",
        "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_FLOAT\n"
        "CompressedData = True\nCompressedDataSize = 11\nElementDataFile = LOCAL\n",
        zlib.compress(bytes(100)),
    )
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"NRRD0004\ntype: nonsense\ndimension: 3\n\n")
    expected = {
        sheared: r"\(ITK only supports orthonormal direction cosines",
        huge: r"\(Failed to allocate memory for image: its header declares size \(100000, 100000, 100000\) of "
        r"32-bit float, \d+\.\d GiB\)",
        garbage: r"garbage\.nrrd as an image \(.*nonsense",
    }
    for path, pattern in expected.items():
        with pytest.raises(VolumeReadError, match=pattern) as info:
            read_volume(path)
        message = str(info.value)
        assert "\n" not in message and ".cxx" not in message and ".hxx" not in message and "0x" not in message

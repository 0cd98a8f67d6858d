"""CT series in/out: exact round trips in every orientation, independent reader (SimpleITK/GDCM), dciodvfy, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from dicom_testdata import GEOMETRIES, make_ct, sample_on_grid

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.series import CT_IMAGE_STORAGE, write_series
from MedDINOv3Core.dicom.series_reader import read_series
from MedDINOv3Core.volume_io import from_sitk


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_write_read_round_trip(tmp_path, geometry):
    ct = make_ct(GEOMETRIES[geometry])
    written = write_series(ct, tmp_path / "ct", patient={"PatientName": "Doe^Jane", "PatientID": "P1"})
    read = read_series(tmp_path / "ct")
    assert read.volume.array.dtype == np.int16
    # Same voxel centres and values whatever the stacking order: sample one grid at the other's centres.
    assert np.array_equal(sample_on_grid(read.volume, ct), ct.array)
    assert np.allclose(read.volume.spacing, ct.spacing)
    d = read.volume.direction_matrix
    assert np.allclose(d[:, 2], np.cross(d[:, 0], d[:, 1]))  # reader stacks along rows x columns
    # Slice k of the read volume is the file with SOP Instance UID k, at position k.
    by_uid = dict(zip(written.sop_instance_uids, written.positions, strict=True))
    for k, uid in enumerate(read.sop_instance_uids):
        assert np.allclose(by_uid[uid], read.volume.index_to_physical((0, 0, k)), atol=1e-4)
        assert np.allclose(read.positions[k], by_uid[uid], atol=1e-4)
    assert read.study_instance_uid == written.study_instance_uid
    assert read.series_instance_uid == written.series_instance_uid
    assert read.frame_of_reference_uid == written.frame_of_reference_uid
    assert read.sop_class_uid == CT_IMAGE_STORAGE and read.modality == "CT"
    assert read.patient["PatientName"] == "Doe^Jane" and read.patient["PatientID"] == "P1"
    if geometry == "feet_first_order":  # written inferior-first, read back superior-first
        assert np.array_equal(read.volume.array, ct.array[::-1])


def test_simpleitk_reads_the_same_geometry(tmp_path):
    """GDCM (through SimpleITK) is an independent reader: same voxels at the same LPS points."""
    import SimpleITK as sitk

    ct = make_ct(GEOMETRIES["feet_first_supine"])
    write_series(ct, tmp_path / "ct")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    other = from_sitk(reader.Execute())
    assert np.array_equal(sample_on_grid(other, ct), ct.array)
    ours = read_series(tmp_path / "ct").volume
    assert ours.same_geometry(other, tol=1e-4)


def test_float_volume_uses_rescale(tmp_path):
    rng = np.random.default_rng(1)
    volume = Volume(rng.random((3, 8, 9)).astype(np.float32) * 5 - 2, (1.0, 1.0, 2.0))
    write_series(volume, tmp_path / "ct")
    read = read_series(tmp_path / "ct")
    step = 7.0 / 65000  # slope for a 7-wide range
    assert read.volume.array.dtype == np.float32
    assert np.max(np.abs(read.volume.array - volume.array)) <= step


def test_written_ct_passes_dciodvfy(tmp_path, dciodvfy):
    for name in ("head_first", "feet_first_supine"):
        series = write_series(make_ct(GEOMETRIES[name]), tmp_path / name)
        for path in (series.files[0], series.files[-1]):
            assert dciodvfy(path) == [], path


def test_reads_pydicom_ct_small(tmp_path):
    src = pydicom.data.get_testdata_file("CT_small.dcm")
    shutil.copy(src, tmp_path / "slice.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    series = read_series(tmp_path)
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert series.volume.shape == (1, ds.Rows, ds.Columns)
    assert np.array_equal(series.volume.array[0], expected)
    assert series.sop_instance_uids == (ds.SOPInstanceUID,)
    assert np.allclose(series.volume.origin, [float(v) for v in ds.ImagePositionPatient])
    assert series.volume.spacing[:2] == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_series(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM image"):
        read_series(tmp_path / "empty")
    ct = make_ct()
    write_series(ct, tmp_path / "two" / "a")
    write_series(ct, tmp_path / "two" / "b")
    with pytest.raises(ValueError, match="2 image series; choose one"):
        read_series(tmp_path / "two")
    one = write_series(ct, tmp_path / "gap")
    one.files[4].unlink()
    with pytest.raises(ValueError, match="not uniform"):
        read_series(tmp_path / "gap")


def test_write_errors(tmp_path):
    ct = make_ct()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_series(ct, tmp_path / "full")
    sheared = Volume(ct.array, ct.spacing, ct.origin, (1, 0.2, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="not orthonormal"):
        write_series(sheared, tmp_path / "sheared")
    assert not (tmp_path / "sheared").exists()
    nan = Volume(np.full((2, 3, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        write_series(nan, tmp_path / "nan")


def test_read_from_a_file_list(tmp_path):
    """A DICOM database lists a series' files among others: the same series comes back from the list."""
    ct = make_ct()
    written = write_series(ct, tmp_path / "a")
    write_series(ct, tmp_path / "b")
    read = read_series([str(f) for f in reversed(written.files)])
    assert read.series_instance_uid == written.series_instance_uid
    assert np.array_equal(read.volume.array, ct.array)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        read_series([tmp_path / "a" / "nope.dcm"])

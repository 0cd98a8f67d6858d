"""DICOM series with a missing, truncated or undecodable slice, or several series: refused in one line by
read_volume (predict, explore, demo) as by read_series (export-rtstruct), never read with stretched spacing. The same
series through `python -m training predict`: Testing/training/bad_inputs/test_bad_dicom_series.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_testdata import SPACING, make_ct, write_gap_series, write_truncated_pixels, write_two_series  # noqa: E402

from MedDINOv3Core.dicom import series_reader as series_module  # noqa: E402
from MedDINOv3Core.dicom.series import write_series  # noqa: E402
from MedDINOv3Core.dicom.series_reader import PixelDecodeError, read_series  # noqa: E402
from MedDINOv3Core.volume_io import VolumeReadError, read_volume  # noqa: E402

GAP = r"DICOM series in .*: slice spacing of series [\d.]+ is not uniform \(from 2\.500 to 5\.000 mm\)"


@pytest.fixture
def gap_series(tmp_path):
    return write_gap_series(tmp_path / "gap")


@pytest.fixture
def truncated_pixels(tmp_path):
    return write_truncated_pixels(tmp_path / "cut")


@pytest.fixture
def truncated_header(tmp_path):
    written = write_series(make_ct(), tmp_path / "cut")
    data = written.files[4].read_bytes()
    written.files[4].write_bytes(data[:600])  # cut before Image Position (Patient)
    return tmp_path / "cut", written.files[4]


@pytest.fixture
def two_series(tmp_path):
    """Two series of 9 slices, their files side by side in one folder."""
    return write_two_series(tmp_path)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_middle_slice_is_refused(gap_series):
    with pytest.raises(VolumeReadError, match=GAP + r" \(the largest gap is after CT00004\.dcm, 5\.000 mm") as exc:
        read_volume(gap_series)
    assert "slices are missing" in _one_line(exc)


def test_truncated_pixel_data_is_refused(truncated_pixels):
    with pytest.raises(VolumeReadError, match=r"cannot decode the pixels of .*CT00005\.dcm") as exc:
        read_volume(truncated_pixels)
    assert "truncated or damaged; copy or export the series again" in _one_line(exc)
    assert "pylibjpeg" not in str(exc.value)
    with pytest.raises(PixelDecodeError) as direct:
        read_series(truncated_pixels)
    assert not direct.value.missing_handler


def test_truncated_header_is_named_in_the_gap_message(truncated_header):
    folder, cut = truncated_header
    with pytest.raises(VolumeReadError, match=GAP) as exc:
        read_volume(folder)
    assert f"1 DICOM file(s) in the folder cannot be read (truncated or damaged?), e.g. {cut}" in _one_line(exc)


def test_several_series_of_equal_size_must_be_chosen(two_series):
    folder, a, b = two_series
    with pytest.raises(VolumeReadError, match=r"holds 2 DICOM series of the same size: ") as exc:
        read_volume(folder)
    text = _one_line(exc)
    for written, desc in ((a, "first"), (b, "second")):
        assert f"{written.series_instance_uid} (9 files, '{desc}')" in text
    assert f"or at {folder}::<SeriesInstanceUID>" in text
    chosen = read_volume(f"{folder}::{b.series_instance_uid}")
    np.testing.assert_array_equal(chosen.array, make_ct().array)
    assert chosen.spacing == pytest.approx(SPACING)
    with pytest.raises(VolumeReadError, match=r"series 1\.2\.3 not found under .*two; found: "):
        read_volume(f"{folder}::1.2.3")


def test_largest_of_unequal_series_is_read_with_a_warning(tmp_path, caplog):
    ct = make_ct()
    big = write_series(ct, tmp_path / "f" / "big")
    small = write_series(ct, tmp_path / "f" / "small")
    small.files[0].unlink()
    small.files[1].unlink()  # still uniform: slices 3..9 of 9
    with caplog.at_level("WARNING"):
        volume = read_volume(tmp_path / "f")
    assert volume.shape == ct.shape
    assert "reading the largest" in caplog.text and big.series_instance_uid in caplog.text


def test_missing_decoder_falls_back_to_gdcm_on_the_checked_files(tmp_path, monkeypatch):
    written = write_series(make_ct(), tmp_path / "s")

    def no_decoder(paths, progress):
        raise PixelDecodeError("no handler", Path(paths[0]), True, paths)

    monkeypatch.setattr(series_module, "_decode_pixels", no_decoder)
    volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, make_ct().array)
    assert volume.spacing == pytest.approx(SPACING)
    written.files[4].unlink()  # the checks still run before the fallback
    with pytest.raises(VolumeReadError, match="not uniform"):
        read_volume(tmp_path / "s")


def test_choice_syntax_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        read_volume(tmp_path / "nothing::1.2.3")

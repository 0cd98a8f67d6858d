"""`python -m training predict` given a damaged DICOM series (a missing or truncated slice) or a folder of several
series: refused in one line with no output, and the series chosen with FOLDER::SeriesInstanceUID read. The same
series read by the library: Testing/dicom/test_series_bad_inputs.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dicom"))  # the DICOM tests' synthetic CT helpers
from dicom_testdata import make_ct, write_gap_series, write_truncated_pixels, write_two_series  # noqa: E402

from MedDINOv3Core.volume_io import read_volume  # noqa: E402


@pytest.fixture
def gap_series(tmp_path):
    return write_gap_series(tmp_path / "gap")


@pytest.fixture
def truncated_pixels(tmp_path):
    return write_truncated_pixels(tmp_path / "cut")


@pytest.fixture
def two_series(tmp_path):
    """Two series of 9 slices, their files side by side in one folder."""
    return write_two_series(tmp_path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from MedDINOv3Core.data.preprocess import PreprocessConfig
    from MedDINOv3Core.inference import InferenceConfig
    from MedDINOv3Core.models.vit import vit_config
    from MedDINOv3Core.segmentation_cards import new_segmentation_card
    from MedDINOv3Core.weights import build_model, save_model_card

    card = new_segmentation_card(
        vit_config("vit_tiny"),
        [{"value": 1, "name": "liver", "color": [0.9, 0.6, 0.4]}],
        PreprocessConfig.meddinov3_demo(spacing=(1.0, 1.0)),
        InferenceConfig(tile_size=(32, 32), batch_size=4),
        name="tiny-test",
    )
    return save_model_card(tmp_path_factory.mktemp("models") / "tiny", card, build_model(card))


def _predict(model_dir, source, out, capsys) -> str:
    from training.cli import main

    code = main(["predict", "--model", str(model_dir), "--input", str(source), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert not out.exists()
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[-1]


def test_predict_refuses_a_gap(model_dir, gap_series, tmp_path, capsys):
    line = _predict(model_dir, gap_series, tmp_path / "seg.nii.gz", capsys)
    assert "is not uniform (from 2.500 to 5.000 mm)" in line and "slices are missing" in line


def test_predict_refuses_a_truncated_slice(model_dir, truncated_pixels, tmp_path, capsys):
    line = _predict(model_dir, truncated_pixels, tmp_path / "seg.nii.gz", capsys)
    assert "cannot decode the pixels of" in line and "truncated or damaged" in line


def test_predict_asks_to_choose_a_series(model_dir, two_series, tmp_path, capsys):
    folder, a, b = two_series
    line = _predict(model_dir, folder, tmp_path / "seg.nii.gz", capsys)
    assert "holds 2 DICOM series of the same size" in line
    assert a.series_instance_uid in line and b.series_instance_uid in line and "::<SeriesInstanceUID>" in line


def test_predict_reads_the_chosen_series(model_dir, two_series, tmp_path, capsys):
    from training.cli import main

    folder, _, b = two_series
    out = tmp_path / "seg.nii.gz"
    code = main(
        ["predict", "--model", str(model_dir), "--input", f"{folder}::{b.series_instance_uid}", "--output", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    assert read_volume(out).shape == make_ct().shape

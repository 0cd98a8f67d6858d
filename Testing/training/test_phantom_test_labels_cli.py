"""`python -m training phantom --test M` writes the test cases' labels to labelsTs/ (references for evaluate)."""

from __future__ import annotations

import numpy as np

from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.volume_io import read_volume
from training.cli import main


def test_test_cases_have_labels(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["phantom", "--out", str(out), "--cases", "1", "--test", "2", "--shape", "16", "32", "32", "--seed", "3"]
    assert main(args) == 0
    assert "wrote 1 labelled training phantom and 2 test cases (imagesTs/, labelsTs/)" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        "phantom_004_0000.nii.gz",
        "phantom_005_0000.nii.gz",
    ]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["phantom_004.nii.gz", "phantom_005.nii.gz"]
    label = read_volume(out / "labelsTs" / "phantom_005.nii.gz")
    assert np.array_equal(label.array, make_phantom((16, 32, 32), seed=5).labels.array)
    assert label.same_geometry(read_volume(out / "imagesTs" / "phantom_005_0000.nii.gz"))

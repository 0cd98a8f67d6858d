"""`python -m training evaluate` given bad inputs, by class: bad images among the predictions or references, missing
or empty folders, an --out that is a file, a broken label table. (Images given as label maps, negative labels and
NaN tolerances are in test_bad_options.) Refused in one line, inputs unchanged, no report written."""

from __future__ import annotations

import numpy as np
import pytest

from bad_inputs.runner import BAD_IMAGES, refused
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.volume_io import write_volume

FILE_CASES = [k for k in BAD_IMAGES if "DICOM" not in k and k not in ("missing", "folder without DICOM")]


def _folders(tmp_path):
    labels = np.zeros((3, 24, 20), np.uint8)
    labels[1, 5:10, 5:10] = 1
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        write_volume(Volume(labels), tmp_path / name / "case_1.nii.gz")
    return tmp_path / "pred", tmp_path / "gt"


@pytest.mark.parametrize("role", ["pred", "gt"])
@pytest.mark.parametrize("kind", FILE_CASES)
def test_bad_label_file_is_refused(kind, role, tmp_path, capsys):
    make, expect = BAD_IMAGES[kind]
    pred, gt = _folders(tmp_path)
    folder = pred if role == "pred" else gt
    (tmp_path / "make").mkdir()
    bad = make(tmp_path / "make")
    target = folder / ("case_2" + "".join(bad.suffixes))
    bad.rename(target)
    other = gt if role == "pred" else pred
    write_volume(Volume(np.zeros((3, 24, 20), np.uint8)), other / "case_2.nii.gz")
    argv = ["evaluate", "--pred", pred, "--gt", gt, "--out", tmp_path / "out", "--progress", "none"]
    refused(capsys, argv, expect.replace(bad.name, target.name), inputs=[pred, gt], outputs=[tmp_path / "out"])


@pytest.mark.parametrize(
    "change, expect",
    [
        (lambda t: ["--pred", t / "absent"], "prediction folder not found"),
        (lambda t: ["--gt", t / "empty"], "empty"),
        (lambda t: ["--out", t / "notes.txt"], "--out"),
        (lambda t: ["--out", t / "notes.txt" / "report"], "notes.txt is a file, not a folder"),
        (lambda t: ["--labels", t / "notes.txt"], "could not read labels"),
    ],
    ids=["missing pred", "empty gt", "out a file", "out through a file", "labels not JSON"],
)
def test_bad_folder_or_option_is_refused(change, expect, tmp_path, capsys):
    pred, gt = _folders(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("{not json")
    options = {"--pred": pred, "--gt": gt, "--out": tmp_path / "out"}
    extra = change(tmp_path)
    options.update(dict(zip(extra[::2], extra[1::2])))
    argv = ["evaluate", *[x for kv in options.items() for x in kv], "--progress", "none"]
    refused(capsys, argv, expect, inputs=[pred, gt, tmp_path / "notes.txt"], outputs=[tmp_path / "out"])

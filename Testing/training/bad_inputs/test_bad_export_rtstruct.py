"""`python -m training export-rtstruct` given bad inputs, by class: every bad image as --labels and as --reference,
label maps that are not label maps (fractions, negative values, another grid), a Patient Position that is not a
DICOM defined term, an --out that is a file. Refused in one line, inputs unchanged, nothing written."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bad_inputs.runner import BAD_IMAGES, ct_volume, refused, run
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.series import PATIENT_POSITIONS, check_patient_position, write_series
from MedDINOv3Core.dicom.series_reader import read_series
from MedDINOv3Core.volume_io import write_volume


def _labels(shape=(3, 24, 20), spacing=(1.0, 1.0, 1.0)) -> Volume:
    array = np.zeros(shape, np.int16)
    array[1, 5:10, 5:10] = 1
    return Volume(array, spacing)


def export(labels, reference, out, *extra) -> list:
    return ["export-rtstruct", "--labels", labels, "--reference", reference, "--out", out, "--names", "Liver",
            "--progress", "none", *extra]  # fmt: skip


@pytest.mark.parametrize("role", ["labels", "reference"])
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_is_refused(kind, role, tmp_path, capsys):
    make, expect = BAD_IMAGES[kind]
    bad = make(tmp_path)
    if role == "labels":
        good = write_volume(ct_volume(), tmp_path / "ct.nrrd")
        argv = export(bad, good, tmp_path / "rt")
    else:
        good = write_volume(_labels(), tmp_path / "seg.nii.gz")
        argv = export(good, bad, tmp_path / "rt")
        expect = {"missing": "reference not found", "DICOM two series": "::<SeriesInstanceUID>",
                  "folder without DICOM": "no DICOM image files"}.get(kind, expect)  # fmt: skip
        if kind in ("DICOM gap", "DICOM truncated slice"):
            expect = expect.replace("slices are missing", "not uniform")
    refused(capsys, argv, expect, inputs=[bad, good], outputs=[tmp_path / "rt"])


def _fraction():
    array = _labels().array.astype(np.float32)
    array[1, 5, 5] = 0.5
    return array


def _negative():
    array = _labels().array.copy()
    array[1, 5, 5] = -2
    return array


@pytest.mark.parametrize(
    "array, expect",
    [
        (_fraction(), "holds non-integer values (float32)"),
        (_negative(), "holds negative values [-2]"),
        (np.zeros((4, 24, 20), np.int16), "labelmap grid does not match the reference"),
        (np.zeros((3, 24, 20), np.int16), "holds no labelled voxels"),
    ],
    ids=["fraction", "negative", "other grid", "empty"],
)
def test_bad_label_map_is_refused(array, expect, tmp_path, capsys):
    labels = write_volume(Volume(array), tmp_path / "seg.nrrd")
    ct = write_volume(ct_volume(), tmp_path / "ct.nrrd")
    refused(capsys, export(labels, ct, tmp_path / "rt"), expect, inputs=[labels, ct], outputs=[tmp_path / "rt"])


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--patient-position", "SUPINE"], "invalid choice: 'SUPINE'"),
        (["--patient-position", ""], "invalid choice: ''"),
        (["--colors", "1,2"], "colour '1,2' must be R,G,B"),
        (["--colors", "300,0,0"], "colour '300,0,0' must be R,G,B"),
    ],
)
def test_bad_option_is_refused(extra, expect, tmp_path, capsys):
    labels = write_volume(_labels(), tmp_path / "seg.nii.gz")
    ct = write_volume(ct_volume(), tmp_path / "ct.nrrd")
    refused(capsys, export(labels, ct, tmp_path / "rt", *extra), expect, inputs=[labels, ct],
            outputs=[tmp_path / "rt"], code=2)  # fmt: skip


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    labels = write_volume(_labels(), tmp_path / "seg.nii.gz")
    ct = write_volume(ct_volume(), tmp_path / "ct.nrrd")
    (tmp_path / "rt").write_text("keep")
    for out in (tmp_path / "rt", tmp_path / "rt" / "sub"):
        refused(capsys, export(labels, ct, out), "is a file", inputs=[labels, ct, tmp_path / "rt"], code=2)


def test_patient_position_is_a_defined_term(tmp_path, capsys):
    assert len(PATIENT_POSITIONS) == 16 and check_patient_position("FFS") == "FFS"
    with pytest.raises(ValueError, match=r"Patient Position 'SUPINE' is not a DICOM defined term; use one of HFP"):
        write_series(ct_volume(), tmp_path / "ct", patient_position="SUPINE")
    assert not (tmp_path / "ct").exists()
    labels = write_volume(_labels(), tmp_path / "seg.nii.gz")
    ct = write_volume(ct_volume(), tmp_path / "ct.nrrd")
    code, _, err = run(capsys, *export(labels, ct, tmp_path / "rt", "--patient-position", "ffs"))
    assert code == 0, err
    assert read_series(tmp_path / "rt" / "CT").files and _position(tmp_path / "rt" / "CT") == "FFS"


def _position(folder) -> str:
    import pydicom

    return pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).PatientPosition


def test_unknown_patient_position_read_from_a_series_warns(tmp_path, caplog):
    import pydicom

    written = write_series(ct_volume(), tmp_path / "ct")
    for f in written.files:
        ds = pydicom.dcmread(f)
        ds.PatientPosition = "SUPINE"
        ds.save_as(f)
    with caplog.at_level(logging.WARNING):
        read_series(tmp_path / "ct")
    assert "Patient Position 'SUPINE' is not a DICOM defined term" in caplog.text and "ignored" in caplog.text


def test_the_series_choice_works_on_reference(tmp_path, capsys):
    make, _ = BAD_IMAGES["DICOM two series"]
    folder = make(tmp_path)
    import pydicom

    uid = pydicom.dcmread(next(folder.glob("b_*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    labels = write_volume(_labels((6, 16, 16), (2.5, 1.0, 1.0)), tmp_path / "seg.nii.gz")
    code, _, err = run(capsys, *export(labels, f"{folder}::{uid}", tmp_path / "rt"))
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "rt" / "RTSTRUCT.dcm").is_file()

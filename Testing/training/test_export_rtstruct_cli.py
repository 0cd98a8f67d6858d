"""`python -m training export-rtstruct`: NIfTI or DICOM references, names from a model card, exit codes, messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))  # the DICOM tests' synthetic CT helpers

from dicom_testdata import GEOMETRIES, dsc, make_ct, phantom_labels, sample_on_grid  # noqa: E402

from MedDINOv3Core.data.volume import Volume  # noqa: E402
from MedDINOv3Core.dicom.rtstruct import read_rtstruct, read_rtstruct_rois  # noqa: E402
from MedDINOv3Core.dicom.series import write_series  # noqa: E402
from MedDINOv3Core.dicom.series_reader import read_series  # noqa: E402
from MedDINOv3Core.volume_io import to_sitk  # noqa: E402
from training.cli import main  # noqa: E402


def _exit_code(argv: list[str]) -> int:
    """main()'s exit code; usage errors leave through argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _save(volume: Volume, path) -> str:
    sitk.WriteImage(to_sitk(volume), str(path))
    return str(path)


@pytest.fixture
def phantom_files(tmp_path):
    """A small synthetic abdomen (CT + labels as NIfTI) and a model card holding its label table."""
    from MedDINOv3Core.card import ModelCard
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.models.vit import vit_config

    ct, labels, table = make_phantom((12, 64, 64), seed=1, noise_sigma=0)
    card = ModelCard(task="segmentation", backbone=vit_config("vit_tiny"), name="phantom", labels=tuple(table))
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "config.json").write_text(json.dumps(card.to_dict()))
    return ct, labels, table, _save(ct, tmp_path / "ct.nii.gz"), _save(labels, tmp_path / "seg.nii.gz")


def test_volume_reference_writes_ct_and_structures(tmp_path, phantom_files, dciodvfy, plastimatch, capsys):
    ct, labels, table, ct_file, seg_file = phantom_files
    out = tmp_path / "out"
    argv = ["export-rtstruct", "--labels", seg_file, "--reference", ct_file, "--out", str(out)]
    argv += ["--model", str(tmp_path / "card"), "--patient-name", "Doe^Jane", "--patient-id", "42"]
    assert main(argv + ["--progress", "json"]) == 0
    stages = {json.loads(line)["stage"] for line in capsys.readouterr().out.splitlines()}
    assert stages == {"write CT series", "write RT structures", "done"}  # done: the result line
    assert dciodvfy(out / "RTSTRUCT.dcm") == [] and dciodvfy(next((out / "CT").iterdir())) == []
    series = read_series(out / "CT")
    assert series.patient["PatientName"] == "Doe^Jane" and series.patient["PatientID"] == "42"
    present = {int(v) for v in np.unique(labels.array)} - {0}
    expected = {t["value"]: t for t in table if t["value"] in present}
    rois = read_rtstruct_rois(out / "RTSTRUCT.dcm")
    assert [r.name for r in rois] == [expected[v]["name"] for v in sorted(expected)]
    assert rois[0].color == tuple(round(255 * c) for c in expected[min(expected)]["color"])
    # the card's SNOMED CT terminology travels as codes: type, category and laterality
    for roi in rois:
        term = expected[roi.value]["terminology"]
        assert roi.code == tuple(term["type"]) and roi.category == tuple(term["category"])
        assert roi.modifier == (tuple(term["typeModifier"]) if "typeModifier" in term else None)
    masks = read_rtstruct(out / "RTSTRUCT.dcm", series)
    theirs = plastimatch(out / "RTSTRUCT.dcm", out / "CT")
    for value in sorted(expected):
        name = expected[value]["name"]
        assert np.array_equal(masks[name], labels.array == value), name
        assert dsc(sample_on_grid(theirs[name], labels) > 0, labels.array == value) >= 0.95, name


def test_dicom_reference_keeps_the_series(tmp_path):
    ct = make_ct(GEOMETRIES["feet_first_order"])
    series = write_series(ct, tmp_path / "dicom")
    seg = _save(ct.with_array(phantom_labels()), tmp_path / "seg.nrrd")  # stacked the other way than read_series
    argv = ["export-rtstruct", "--labels", seg, "--reference", str(tmp_path / "dicom"), "--out", str(tmp_path / "o")]
    argv += ["--names", "Ring", "Islands", "3:Ell", "--colors", "1,2,3", "4,5,6", "7,8,9", "--progress", "none"]
    assert main(argv + ["--interpreted-type", "oar"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["RTSTRUCT.dcm"]
    ds = pydicom.dcmread(tmp_path / "o" / "RTSTRUCT.dcm")
    refs = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == series.series_instance_uid
    assert [r.color for r in read_rtstruct_rois(tmp_path / "o" / "RTSTRUCT.dcm")] == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"OAR"}
    masks = read_rtstruct(tmp_path / "o" / "RTSTRUCT.dcm", read_series(tmp_path / "dicom"))
    assert np.array_equal(masks["Ell"], phantom_labels()[::-1] == 3)


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export-rtstruct", "--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_bad_inputs_give_one_line_messages(tmp_path, capsys):
    ct = make_ct()
    ct_file = _save(ct, tmp_path / "ct.nii.gz")
    seg = _save(ct.with_array(phantom_labels()), tmp_path / "seg.nii.gz")
    base = ["export-rtstruct", "--labels", seg, "--reference", ct_file, "--progress", "none"]

    def fails(extra: list[str], code: int, message: str) -> None:
        assert _exit_code(base + extra) == code
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    fails(["--out", str(tmp_path / "a"), "--names", "Ring", "Islands"], 1, "labels [3] have no name")
    assert not (tmp_path / "a" / "CT").exists()  # nothing written for a failed export
    fails(["--out", str(tmp_path / "b"), "--names", "A", "B", "C", "--colors", "1,2,3"], 2, "1 colours for 3 --names")
    fails(["--out", str(tmp_path / "c"), "--names", "A", "B", "C", "--colors", "1,2", "3,4,5", "6,7,8"], 2, "R,G,B")
    other = _save(Volume(phantom_labels()[:, :, :30], ct.spacing, ct.origin), tmp_path / "small.nii.gz")
    argv = ["export-rtstruct", "--labels", other, "--reference", ct_file, "--out", str(tmp_path / "d")]
    assert main(argv + ["--progress", "none"]) == 1
    assert "grid does not match the reference series" in capsys.readouterr().err
    argv = ["export-rtstruct", "--labels", seg, "--reference", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]
    assert main(argv) == 1
    assert "reference not found" in capsys.readouterr().err
    (tmp_path / "f" / "CT").mkdir(parents=True)
    (tmp_path / "f" / "CT" / "x.dcm").write_text("")
    fails(["--out", str(tmp_path / "f")], 1, "already holds files")

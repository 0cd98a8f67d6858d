"""`python -m training predict` as a user runs it: the printed summary, and a folder of cases (nnU-Net style)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from MedDINOv3Core.volume_io import read_segmentation, read_volume
from training.cli import main

MODEL = "meddinov3-phantom-tiny"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_outputs") / "ds"
    args = ["phantom", "--out", str(out), "--cases", "1", "--test", "2", "--shape", "16", "48", "48"]
    assert main([*args, "--progress", "none"]) == 0
    return out


def test_single_case_prints_labels_volumes_time_and_device(dataset, tmp_path, capsys):
    src = dataset / "imagesTs" / "phantom_001_0000.nii.gz"
    out = tmp_path / "seg.nii.gz"
    rc = main(["predict", "--model", MODEL, "--input", str(src), "--output", str(out), "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    head, *rows = text.strip().splitlines()
    assert re.fullmatch(rf"phantom_001_0000\.nii\.gz -> {re.escape(str(out))}: (\d) of 7 labels found in "
                        r"\d+\.\d s on cpu", head)  # fmt: skip
    seg = read_volume(out)
    voxel_ml = float(np.prod(seg.spacing)) / 1000
    counts = np.bincount(seg.array.ravel(), minlength=8)
    row = re.compile(r"  (.+?)\s+(\d+\.\d\d) mL  \((\d+) voxels, label \d+\)")
    matches = [m for m in (row.fullmatch(r) for r in rows) if m]
    printed = {m.group(1).strip(): (float(m.group(2)), int(m.group(3))) for m in matches}
    assert printed and int(re.search(r"(\d) of 7", head).group(1)) == len(printed)
    assert printed["liver"] == (pytest.approx(counts[1] * voxel_ml, abs=0.006), counts[1])


def test_folder_of_cases_one_output_each(dataset, tmp_path, capsys, monkeypatch):
    import MedDINOv3Core.weights as weights

    loads = []
    real = weights.load_model
    monkeypatch.setattr(weights, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    out = tmp_path / "pred"
    args = ["predict", "--model", MODEL, "--input", str(dataset / "imagesTs"), "--output", str(out), "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert len(loads) == 1  # one model load for all cases
    assert sorted(p.name for p in out.iterdir()) == ["phantom_001.nii.gz", "phantom_002.nii.gz"]
    assert "[1/2] phantom_001_0000.nii.gz -> phantom_001.nii.gz:" in text
    assert "[2/2] phantom_002_0000.nii.gz -> phantom_002.nii.gz:" in text
    assert f"2 of 2 cases written to {out}" in text
    ref = read_volume(dataset / "imagesTs" / "phantom_002_0000.nii.gz")
    assert read_volume(out / "phantom_002.nii.gz").same_geometry(ref)

    # the suffix given, probability maps per case, and no temporary leftovers
    out2, probs = tmp_path / "pred2", tmp_path / "probs"
    args = ["predict", "--model", MODEL, "--input", str(dataset / "imagesTs"), "--output", str(out2)]
    args += ["--suffix", ".seg.nrrd", "--probabilities", str(probs), "--progress", "none", "--device", "cpu"]
    assert main(args) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["phantom_001.seg.nrrd", "phantom_002.seg.nrrd"]
    assert sorted(p.name for p in probs.iterdir()) == ["phantom_001", "phantom_002"]
    assert len(list((probs / "phantom_001").iterdir())) == 8
    _, segments = read_segmentation(out2 / "phantom_001.seg.nrrd")
    assert {s["name"] for s in segments} >= {"liver"}


def test_folder_case_failure_leaves_no_output_for_it(dataset, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "good_0000.nii.gz").write_bytes((dataset / "imagesTs" / "phantom_001_0000.nii.gz").read_bytes())
    (cases / "broken_0000.nii.gz").write_bytes(b"not a volume")
    out = tmp_path / "pred"
    args = ["predict", "--model", MODEL, "--input", str(cases), "--output", str(out), "--progress", "none"]
    assert main([*args, "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]  # nothing at all for the broken case
    assert "broken: FAILED" in captured.err and "1 of 2 cases failed (broken)" in captured.err
    assert "1 of 2 cases written" in captured.out


def test_folder_errors(dataset, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["predict", "--model", MODEL, "--progress", "none", "--input"]
    assert main([*base, str(empty), "--output", str(tmp_path / "o")]) == 1
    assert "is an empty folder" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main([*base, str(dataset / "imagesTs"), "--output", str(tmp_path / "afile")])
    assert exc.value.code == 2 and "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, str(dataset / "imagesTs"), "--output", str(tmp_path / "seg.nii.gz")])
    assert "give an output folder" in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()

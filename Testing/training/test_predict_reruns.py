"""The rerun rule (training/outputs.py) for `python -m training predict`: an existing --output file, existing
probability maps and the existing outputs of a folder's cases are refused with one line unless --overwrite; other
files are never touched, and earlier probability maps come back when the new write fails."""

from __future__ import annotations

import pytest

from training.cli import main

MODEL = "meddinov3-phantom-tiny"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_reruns") / "ds"
    args = ["phantom", "--out", str(out), "--cases", "1", "--test", "2", "--shape", "16", "48", "48"]
    assert main([*args, "--progress", "none"]) == 0
    return out


def _error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    return err[-1] if err else ""


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_one_volume_rerun_refused_then_overwritten(dataset, tmp_path, capsys, monkeypatch):
    src = dataset / "imagesTs" / "phantom_001_0000.nii.gz"
    out, probs = tmp_path / "seg.nii.gz", tmp_path / "probs"
    argv = ["predict", "--model", MODEL, "--input", str(src), "--output", str(out), "--device", "cpu"]
    argv += ["--progress", "none"]
    assert main(argv) == 0
    out.write_bytes(b"a segmentation the user edited")
    assert main(argv) == 1
    assert f"--output {out} already exists; add --overwrite to replace it, or choose a new name" in _error(capsys)
    assert out.read_bytes() == b"a segmentation the user edited"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() != b"a segmentation the user edited"

    with_probs = [*argv, "--overwrite", "--probabilities", str(probs)]
    assert main(with_probs) == 0
    first = _bytes(probs)
    assert sorted(first)[:2] == ["00_background.nrrd", "01_liver.nrrd"]
    assert main([*argv, "--output", str(tmp_path / "b.nii.gz"), "--probabilities", str(probs)]) == 1
    assert f"--probabilities {probs} already holds a predict output; add --overwrite" in _error(capsys)

    import MedDINOv3Core.case_folders as case_folders

    def disk_full(prediction, folder):
        (folder / "00_background.nrrd").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(case_folders, "write_probabilities", disk_full)
    assert main(with_probs) == 1
    assert _bytes(probs) == first  # the earlier maps, whole
    monkeypatch.undo()
    (probs / "notes.txt").write_text("mine")
    assert main(with_probs) == 1
    assert "also holds files predict did not write (notes.txt)" in _error(capsys)
    assert (probs / "notes.txt").read_text() == "mine"


def test_folder_rerun_refuses_existing_cases_and_leaves_other_files(dataset, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "README.txt").write_text("the user's notes")
    argv = ["predict", "--model", MODEL, "--input", str(dataset / "imagesTs"), "--output", str(out)]
    argv += ["--device", "cpu", "--progress", "none"]
    assert main(argv) == 0  # a folder with other files is fine: they are left alone
    (out / "phantom_002.nii.gz").write_bytes(b"edited")
    assert main(argv) == 1
    line = _error(capsys)
    assert f"--output {out} already holds the output of 2 of these 2 cases" in line and "add --overwrite" in line
    assert (out / "phantom_002.nii.gz").read_bytes() == b"edited"
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "phantom_002.nii.gz").read_bytes() != b"edited"
    assert (out / "README.txt").read_text() == "the user's notes"
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "phantom_001.nii.gz", "phantom_002.nii.gz"]

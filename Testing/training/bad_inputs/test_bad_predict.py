"""`python -m training predict` given bad inputs, by class: unreadable, non-finite, truncated or degenerate images,
damaged DICOM folders, outputs over inputs, an output folder that is a file, bad numbers. Each is refused in one line
that says what to do, with the input unchanged and no partial output."""

from __future__ import annotations

import pytest

from bad_inputs.runner import BAD_IMAGES, TINY, ct_volume, refused
from MedDINOv3Core.volume_io import write_volume


@pytest.fixture
def ct(tmp_path):
    return write_volume(ct_volume(), tmp_path / "ct.nrrd")


def predict(source, out, *extra) -> list:
    return ["predict", "--model", TINY, "--input", source, "--output", out, "--device", "cpu", "--progress", "none",
            *extra]  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_is_refused(kind, tmp_path, capsys):
    make, expect = BAD_IMAGES[kind]
    source = make(tmp_path)
    out = tmp_path / "seg.nii.gz"
    refused(capsys, predict(source, out, "--probabilities", tmp_path / "probs"), expect, inputs=[source],
            outputs=[out, tmp_path / "probs"])  # fmt: skip


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--output", "notes.txt/seg.nii.gz"], "notes.txt is a file, not a folder"),
        (["--probabilities", "notes.txt"], "--probabilities notes.txt is a file"),
        (["--probabilities", "notes.txt/probs"], "notes.txt is a file, not a folder"),
        (["--output", "seg.txt"], "unsupported suffix"),
        (["--batch-size", "0"], "at least 1"),
        (["--batch-size", "nan"], "at least 1"),
        (["--cache-dir", "notes.txt"], "--cache-dir notes.txt is a file"),
        (["--features", "feats", "--fast"], "--features and --fast do not combine"),
        (["--features", "feats", "--tta"], "--features and --tta do not combine"),
    ],
)
def test_bad_option_is_refused_before_work(extra, expect, ct, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    argv = predict(ct, "seg.nii.gz", *extra)
    refused(capsys, argv, expect, inputs=[ct, tmp_path / "notes.txt"], outputs=[tmp_path / "seg.nii.gz"], code=2)


@pytest.mark.parametrize(
    "model, expect",
    [("notes.txt", "could not read"), ("empty", "is not a model card"), ("no-such-model", "unknown model")],
)
def test_wrong_model_file_is_refused(model, expect, ct, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    argv = ["predict", "--model", model, "--input", ct, "--output", "seg.nii.gz", "--progress", "none"]
    line = refused(capsys, argv, expect, inputs=[ct, tmp_path / "notes.txt"], outputs=[tmp_path / "seg.nii.gz"])
    assert len(line) < 400, line

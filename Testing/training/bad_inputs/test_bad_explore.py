"""`python -m training explore` given bad inputs, by class: every bad image of runner.BAD_IMAGES, bad points and
layers, an output path through a file. Refused in one line, inputs unchanged, no partial output."""

from __future__ import annotations

import pytest

from bad_inputs.runner import BAD_IMAGES, TINY, ct_volume, refused
from MedDINOv3Core.volume_io import write_volume


def explore(source, folder, *extra) -> list:
    return ["explore", "--model", TINY, "--input", source, "--cache-dir", folder / "cache", "--progress", "none",
            *extra]  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_is_refused(kind, tmp_path, capsys):
    make, expect = BAD_IMAGES[kind]
    source = make(tmp_path)
    pca = tmp_path / "pca.nrrd"
    refused(capsys, explore(source, tmp_path, "--pca", pca), expect, inputs=[source], outputs=[pca])


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--similarity-at", "nan,1,1", "--out", "sim.nrrd"], "finite, not NaN"),
        (["--similarity-at", "1,inf,1", "--out", "sim.nrrd"], "finite, not NaN"),
        (["--similarity-at", "1,1", "--out", "sim.nrrd"], "three comma-separated numbers"),
        (["--layers", "abc", "--pca", "pca.nrrd"], "--layers 'abc'"),
        (["--pca", "notes.txt/pca.nrrd"], "notes.txt is a file, not a folder"),
        (["--png", "notes.txt/preview.png"], "notes.txt is a file, not a folder"),
    ],
)
def test_bad_option_is_refused_before_work(extra, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_volume(ct_volume(), tmp_path / "ct.nrrd")
    (tmp_path / "notes.txt").write_text("keep")
    outputs = [tmp_path / "sim.nrrd", tmp_path / "pca.nrrd", tmp_path / "cache"]
    refused(capsys, explore(source, tmp_path, *extra), expect, inputs=[source, tmp_path / "notes.txt"],
            outputs=outputs, code=2)  # fmt: skip

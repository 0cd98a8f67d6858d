"""`python -m training demo` given bad inputs, by class: every bad image of runner.BAD_IMAGES as --input, an --out
that is a file or holds other files, a wrong model file. (Unknown organs and bad numbers: test_bad_options.)"""

from __future__ import annotations

import pytest

from bad_inputs.runner import BAD_IMAGES, ct_volume, refused
from MedDINOv3Core.volume_io import write_volume


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_is_refused(kind, tmp_path, capsys):
    make, expect = BAD_IMAGES[kind]
    source = make(tmp_path)
    argv = ["demo", "--out", tmp_path / "demo", "--input", source, "--progress", "none"]
    refused(capsys, argv, expect, inputs=[source], outputs=[tmp_path / "demo"])


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--out", "notes.txt"], "notes.txt is a file"),
        (["--out", "."], "already holds files that are not a demo output"),
        (["--out", "demo", "--model", "notes.txt"], "could not read"),
    ],
)
def test_bad_output_or_model_is_refused(extra, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ct = write_volume(ct_volume(), tmp_path / "ct.nrrd")
    (tmp_path / "notes.txt").write_text("keep")
    refused(capsys, ["demo", "--input", ct, "--progress", "none", *extra], expect,
            inputs=[tmp_path], outputs=[tmp_path / "demo"])  # fmt: skip

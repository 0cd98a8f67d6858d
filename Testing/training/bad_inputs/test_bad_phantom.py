"""`python -m training phantom` given bad outputs (bad numbers: test_bad_options): an --out that is a file or goes
through one is refused before anything is written."""

from __future__ import annotations

import pytest

from bad_inputs.runner import refused


@pytest.mark.parametrize(
    "out, expect", [("notes.txt", "notes.txt is a file"), ("notes.txt/d", "is a file, not a folder")]
)
def test_out_through_a_file_is_refused(out, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    refused(capsys, ["phantom", "--out", out, "--progress", "none"], expect, inputs=[tmp_path], code=2)

"""`python -m training export-backbone` given a missing, damaged or foreign checkpoint, or an --output that is a
file: one line, the checkpoint unchanged, nothing written. (Outputs over the checkpoint: test_bad_outputs.)"""

from __future__ import annotations

import pytest

from bad_inputs.runner import refused


@pytest.mark.parametrize(
    "content, expect",
    [
        (None, "pretraining checkpoint not found"),
        (b"", "could not read"),
        (b"garbage, not a torch file", "could not read"),
        (b"PK\x03\x04 cut zip", "could not read"),
    ],
    ids=["missing", "empty", "text", "cut zip"],
)
def test_bad_checkpoint_is_refused(content, expect, tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    if content is not None:
        ckpt.write_bytes(content)
    line = refused(capsys, ["export-backbone", ckpt, "--output", tmp_path / "bb"], expect,
                   inputs=[ckpt] if content is not None else [], outputs=[tmp_path / "bb"])  # fmt: skip
    assert len(line) < 450, line


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"checkpoint")
    (tmp_path / "notes.txt").write_text("keep")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "bb"):
        refused(capsys, ["export-backbone", ckpt, "--output", out], "notes.txt", inputs=[tmp_path])

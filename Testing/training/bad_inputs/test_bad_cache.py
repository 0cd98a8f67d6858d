"""`python -m training cache` given bad inputs (bad --older-than numbers: test_bad_options): a --cache-dir that is a
file is refused, never read as "no caches" nor touched."""

from __future__ import annotations

import pytest

from bad_inputs.runner import refused


@pytest.mark.parametrize("action", [["list"], ["clean", "--all"], ["clean", "--older-than", "1", "--dry-run"]])
def test_cache_dir_that_is_a_file_is_refused(action, tmp_path, capsys):
    afile = tmp_path / "features"
    afile.write_text("keep")
    refused(capsys, ["cache", *action, "--cache-dir", afile], f"--cache-dir {afile} is a file", inputs=[afile], code=2)

"""`python -m training models` given a bad registry or cache folder: one line naming the file, nothing changed."""

from __future__ import annotations

import pytest

from bad_inputs.runner import refused


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--registry", "absent.json"], "model registry absent.json not found"),
        (["--registry", "notes.txt"], "is not valid JSON"),
        (["--registry", "list.json"], "the registry must be a JSON object"),
        (["--cache-dir", "notes.txt"], "--cache-dir notes.txt is a file"),
    ],
)
def test_bad_registry_or_cache_is_refused(extra, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("{not json")
    (tmp_path / "list.json").write_text("[1]")
    refused(capsys, ["models", *extra], expect, inputs=[tmp_path])

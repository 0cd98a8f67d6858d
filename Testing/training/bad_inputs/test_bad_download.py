"""`python -m training download` given bad inputs (offline: no network in the tests): an unknown name, a broken
registry, a cache folder that is a file. One line, nothing written."""

from __future__ import annotations

import pytest

from bad_inputs.runner import refused


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["no-such-model", "--offline"], "unknown model 'no-such-model'"),
        (["meddinov3-phantom-tiny", "--registry", "notes.txt"], "is not valid JSON"),
        (["meddinov3-phantom-tiny", "--cache-dir", "notes.txt"], "--cache-dir notes.txt is a file"),
    ],
)
def test_bad_download_is_refused(extra, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("{not json")
    refused(capsys, ["download", "--cache-dir", "hub", "--progress", "none", *extra], expect, inputs=[tmp_path],
            outputs=[tmp_path / "hub"])  # fmt: skip

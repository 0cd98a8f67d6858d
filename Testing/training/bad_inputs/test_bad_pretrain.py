"""`python -m training pretrain` given bad inputs: missing data, an output folder that is a file, a recipe that is
not YAML, bad overrides. (Empty data= and numbers out of range: test_bad_options.) One line, nothing written."""

from __future__ import annotations

import pytest

from bad_inputs.runner import refused


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["data=absent", "output_dir=run"], "pretraining data not found"),
        (["data=empty", "output_dir=notes.txt"], "is a file"),
        (["nosuchkey=1", "--print-config"], "unknown option(s) ['nosuchkey']"),
        (["lr={", "--print-config"], "is not valid YAML"),
    ],
)
def test_bad_data_or_recipe_is_refused(extra, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("keep")
    refused(capsys, ["pretrain", "--config", "tiny_cpu", *extra], expect, inputs=[tmp_path], outputs=[tmp_path / "run"])


def test_recipe_that_is_not_yaml_is_refused(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("lr: [1,\n")
    refused(capsys, ["pretrain", "--config", tmp_path / "bad.yaml", "--print-config"], "is not a valid YAML",
            inputs=[tmp_path])  # fmt: skip

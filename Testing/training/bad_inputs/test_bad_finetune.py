"""`python -m training finetune` given bad inputs: a missing or foreign dataset folder, a recipe that is not YAML,
bad overrides. (Numbers out of range and NaN: test_bad_options.) One line, nothing written."""

from __future__ import annotations

import pytest

from bad_inputs.runner import refused


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--data", "absent"], "dataset folder not found"),
        (["--data", "empty"], "has no dataset.json"),
        (["--config", "notes.txt", "--print-config"], "is not a valid YAML"),
        (["--config", "finetune_fewshot", "nosuchkey=1", "--print-config"], "unknown option(s) ['nosuchkey']"),
        (["--config", "finetune_fewshot", "lr_decoder=[1,", "--print-config"], "is not valid YAML"),
    ],
)
def test_bad_data_or_recipe_is_refused(extra, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("{not yaml")
    argv = ["finetune", "--out", "ft", "--progress", "none", *extra]
    refused(capsys, argv, expect, inputs=[tmp_path], outputs=[tmp_path / "ft"])

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


def test_a_crop_of_partial_patches_is_refused_before_training(tmp_path, capsys):
    """crop_size=[30,30] on a backbone of 8-pixel patches failed after the first epoch with advice for another
    function ("pad the image (predict_volume does this for you)"); now one line names crop_size and a size that fits."""
    from training.commands.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ds", cases=2, shape=(8, 48, 48))
    argv = ["finetune", "--config", "finetune_decoder", "--data", data, "--out", tmp_path / "ft", "--init",
            "meddinov3-phantom-tiny", "crop_size=[30,30]", "epochs=1", "device=cpu", "--progress", "none"]  # fmt: skip
    refused(capsys, argv, "crop_size [30, 30] is not a multiple of the backbone's patch size 8; use e.g. "
            "crop_size=[24,24]", inputs=[data], outputs=[tmp_path / "ft"])  # fmt: skip

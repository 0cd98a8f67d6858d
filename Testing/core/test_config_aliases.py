"""One spelling per option in pretraining and finetuning (output_dir, init_from, grad_clip); the old spellings
(output, init, clip_grad) are still accepted in recipes, key=value overrides and config dicts."""

from __future__ import annotations

import pytest

from MedDINOv3Core.config_utils import OPTION_ALIASES, coerce_numbers, resolve_aliases, yaml_numbers
from MedDINOv3Core.train.finetune import FinetuneConfig, load_finetune_config
from MedDINOv3Core.train.pretrain import PretrainConfig, load_pretrain_config


def test_old_spellings_in_overrides_and_recipes(tmp_path):
    old = {"output": str(tmp_path / "o"), "init": "random", "clip_grad": 5}
    ft = load_finetune_config(None, old)
    assert (ft.output_dir, ft.init_from, ft.grad_clip) == (str(tmp_path / "o"), "random", 5)
    assert (ft.output, ft.init) == (ft.output_dir, ft.init_from)  # the old names stay readable
    pt = load_pretrain_config(None, {**old, "init": ""})
    assert (pt.output_dir, pt.init_from, pt.grad_clip, pt.clip_grad) == (str(tmp_path / "o"), "", 5.0, 5.0)

    recipe = tmp_path / "old.yaml"
    recipe.write_text("output: runs/x\ninit: random\nclip_grad: 2e-1\n", encoding="utf-8")
    ft = load_finetune_config(recipe, {"output_dir": "runs/y"})  # the new spelling overrides the old one
    assert (ft.output_dir, ft.grad_clip) == ("runs/y", 0.2)
    assert FinetuneConfig.from_dict({"output": "a"}).output_dir == "a"
    assert PretrainConfig.from_dict({"clip_grad": 1.0}).grad_clip == 1.0
    assert "clip_grad" not in PretrainConfig().to_dict() and "output" not in FinetuneConfig().to_dict()


def test_both_spellings_with_different_values_raise():
    with pytest.raises(ValueError, match="old spelling of 'output_dir'"):
        load_finetune_config(None, {"output": "a", "output_dir": "b"})
    assert resolve_aliases({"init": "x", "init_from": "x"}) == {"init_from": "x"}
    assert set(OPTION_ALIASES.values()) <= set(FinetuneConfig().to_dict()) & set(PretrainConfig().to_dict())


def test_yaml_numbers_one_implementation():
    assert yaml_numbers(["1e-5", "x", 3]) == [1e-5, "x", 3]
    assert coerce_numbers(FinetuneConfig, {"lr_decoder": "3e-4", "epochs": "2"}) == {"lr_decoder": 3e-4, "epochs": 2}
    with pytest.raises(ValueError, match="option epochs: 'two' is not a number"):
        coerce_numbers(FinetuneConfig, {"epochs": "two"})

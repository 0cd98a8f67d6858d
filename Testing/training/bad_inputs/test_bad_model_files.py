"""Damaged model cards and non-finite numbers: `python -m training predict` stops with one line naming the file and
the field (exit code 1), never a traceback and never an all-background result."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.inference import InferenceConfig
from MedDINOv3Core.models.vit import vit_config
from MedDINOv3Core.segmentation_cards import new_segmentation_card
from MedDINOv3Core.volume_io import write_volume
from MedDINOv3Core.weights import build_model, save_model_card
from training.cli import main


@pytest.fixture(scope="module")
def good_card(tmp_path_factory):
    card = new_segmentation_card(
        vit_config("vit_tiny"),
        ["liver"],
        PreprocessConfig.meddinov3_demo(),
        InferenceConfig(tile_size=(32, 32)),
        name="tiny-bad-files",
    )
    return save_model_card(tmp_path_factory.mktemp("models") / "good", card, build_model(card))


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    return write_volume(
        Volume(np.zeros((20, 24, 3), np.int16), (1.0, 1.0, 1.0)), tmp_path_factory.mktemp("in") / "ct.nrrd"
    )


def predict(model, ct, out, capsys) -> tuple[int, str]:
    rc = main(
        [
            "predict",
            "--model",
            str(model),
            "--input",
            str(ct),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--progress",
            "none",
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) <= 1
    return rc, err[0] if err else ""


def edit_config(change):
    def apply(card):
        data = json.loads((card / "config.json").read_text())
        change(data)
        (card / "config.json").write_text(json.dumps(data))

    return apply


def nan_weight(card):
    from safetensors.torch import load_file, save_file

    state = load_file(str(card / "model.safetensors"))
    state["backbone.cls_token"] = state["backbone.cls_token"].clone()
    state["backbone.cls_token"].view(-1)[0] = float("inf")
    save_file(state, str(card / "model.safetensors"))


CASES = {
    "empty weights": (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors is empty"),
    "truncated weights": (
        lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:4000]),
        "model.safetensors is not a complete safetensors file",
    ),
    "text as weights": (
        lambda c: (c / "model.safetensors").write_text("not safetensors"),
        "model.safetensors is not a complete safetensors file",
    ),
    "non-finite weights": (nan_weight, "model.safetensors holds non-finite weights in backbone.cls_token"),
    "empty config": (lambda c: (c / "config.json").write_text(""), "config.json is not valid JSON"),
    "config a list": (lambda c: (c / "config.json").write_text("[1, 2]"), "config.json is not a JSON object"),
    "embed_dim absurd": (
        edit_config(lambda d: d["backbone"].update(embed_dim=2_000_000)),
        "config.json: backbone.embed_dim is 2000000, outside the sensible range",
    ),
    "depth negative": (
        edit_config(lambda d: d["backbone"].update(depth=-1)),
        "config.json: backbone.depth is -1, outside the sensible range",
    ),
    "depth a string": (
        edit_config(lambda d: d["backbone"].update(depth="12")),
        'config.json: backbone.depth must be an integer, got "12"',
    ),
    "huge network": (
        edit_config(lambda d: d["backbone"].update(embed_dim=16384, depth=256, num_heads=128)),
        "config.json: backbone embed_dim 16384, depth 256",
    ),
    "backbone a list": (edit_config(lambda d: d.update(backbone=[1])), "config.json: backbone must be an object"),
    "labels a string": (
        edit_config(lambda d: d.update(labels="liver")),
        "config.json: labels must be a list of objects",
    ),
    "label a number": (edit_config(lambda d: d.update(labels=[3])), "config.json: labels must be a list of objects"),
    "label colour text": (
        edit_config(lambda d: d["labels"][0].update(color="red")),
        "config.json: labels[0].color must be a list of finite numbers",
    ),
    "preprocessing a list": (
        edit_config(lambda d: d.update(preprocessing=[1])),
        "config.json: preprocessing must be an object",
    ),
    "batch_size text": (
        edit_config(lambda d: d["inference"].update(batch_size="x")),
        'config.json: inference.batch_size must be an integer, got "x"',
    ),
    "head a list": (edit_config(lambda d: d.update(head=[1])), "config.json: head must be an object or null"),
    "name a number": (edit_config(lambda d: d.update(name=5)), "config.json: name must be a string"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_card_is_one_line_naming_file_and_field(case, good_card, ct_path, tmp_path, capsys):
    damage, expected = CASES[case]
    card = shutil.copytree(good_card, tmp_path / "card")
    damage(card)
    rc, line = predict(card, ct_path, tmp_path / "seg.nrrd", capsys)
    assert rc == 1
    assert str(card) in line and expected in line, line
    assert not (tmp_path / "seg.nrrd").exists()


def test_non_finite_logits_are_refused_not_all_background(good_card, ct_path):
    import torch

    from MedDINOv3Core.inference import predict_volume
    from MedDINOv3Core.volume_io import read_volume
    from MedDINOv3Core.weights import load_model

    model, card = load_model(good_card)
    with torch.no_grad():
        model.backbone.cls_token.fill_(float("nan"))  # weights broken after loading (a bad fine-tune, a bad cast)
    with pytest.raises(ValueError, match=r"non-finite logits \(NaN or infinity\) for slices 0\.\.1; check the model"):
        predict_volume(model, card, read_volume(ct_path), device="cpu", batch_size=2)


def test_good_card_still_predicts(good_card, ct_path, tmp_path, capsys):
    assert predict(good_card, ct_path, tmp_path / "seg.nrrd", capsys) == (0, "")

"""Model cards with their weights: exact, atomic round trips, loading, and their bad inputs.

The upstream checkpoint filters are tested in test_convert.py, the torch-free card module in test_card.py.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from MedDINOv3Core.card import ModelCard, is_model_card, load_model_card
from MedDINOv3Core.convert import CheckpointFormatError
from MedDINOv3Core.models.vit import VisionTransformer, vit_config
from MedDINOv3Core.weights import load_card_state_dict, load_model, save_model_card


@pytest.fixture
def tiny_model():
    torch.manual_seed(3)
    model = VisionTransformer(vit_config("vit_tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


# ------------------------------------------------------------------------------------------------ model cards


def _card(model, **kw):
    return ModelCard(
        task="backbone", backbone=model.config, name="tiny", license="apache-2.0", provenance={"source": "test"}, **kw
    )


def test_model_card_round_trip_is_exact(tmp_path, tiny_model):
    card = _card(
        tiny_model,
        labels=({"value": 1, "name": "liver", "color": [0.8, 0.4, 0.3]},),
        preprocessing={"scheme": "ct_clamp"},
        inference={"tta": False},
    )
    path = save_model_card(tmp_path / "card", card, tiny_model)
    assert is_model_card(path)
    assert load_model_card(path) == card
    sd = load_card_state_dict(path)
    assert set(sd) == set(tiny_model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in tiny_model.state_dict().items())
    model, card2 = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tiny_model(x))
    assert not model.training


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path, tiny_model):
    target = tmp_path / "card"
    save_model_card(target, _card(tiny_model), tiny_model)
    save_model_card(target, _card(tiny_model, description="v2"), tiny_model)
    assert load_model_card(target).description == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card"]


def test_failed_save_keeps_the_previous_card(tmp_path, tiny_model):
    target = tmp_path / "card"
    save_model_card(target, _card(tiny_model), tiny_model)
    with pytest.raises(TypeError):
        save_model_card(target, _card(tiny_model, description="broken"), {"x": "not a tensor"})
    assert load_model_card(target).description == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card"]


def test_card_bad_inputs(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="model card directory not found"):
        load_model_card(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model_card(tmp_path / "empty")
    path = save_model_card(tmp_path / "card", _card(tiny_model), tiny_model)
    data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    (path / "config.json").write_text(json.dumps({**data, "colour": 1}))
    with pytest.raises(ValueError, match=re.escape("unknown option(s) ['colour']")):
        load_model_card(path)
    (path / "config.json").write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ValueError, match="newer than this library"):
        load_model_card(path)
    (path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model_card(path)
    (path / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a MedDINOv3 model card"):
        load_model_card(path)
    with pytest.raises(ValueError, match="task must be one of"):
        ModelCard(task="classification", backbone=tiny_model.config)


def test_load_model_with_wrong_weights_names_the_keys(tmp_path, tiny_model):
    other = VisionTransformer(vit_config("vit_tiny", depth=2))
    path = save_model_card(tmp_path / "card", _card(tiny_model), other)
    with pytest.raises(CheckpointFormatError, match=r"missing keys \[blocks.2"):
        load_model(path)

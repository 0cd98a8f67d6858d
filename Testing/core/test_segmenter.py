"""Segmenter: multi-scale aggregation, decoder, channel repeat, model-card round trip, labels."""

from __future__ import annotations

import pytest
import torch

from MedDINOv3Core.card import card_labels, load_model_card
from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.inference import InferenceConfig
from MedDINOv3Core.models.segmenter import Segmenter, SegmenterConfig
from MedDINOv3Core.models.vit import vit_config
from MedDINOv3Core.segmentation_cards import new_segmentation_card
from MedDINOv3Core.weights import build_model, load_model, save_model_card

LABELS = [
    {"value": 1, "name": "liver", "color": [0.86, 0.55, 0.4]},
    {
        "value": 2,
        "name": "spleen",
        "color": [0.62, 0.36, 0.62],
        "terminology": {"type": {"scheme": "SCT", "code": "78961009", "meaning": "Spleen"}},
    },
]


@pytest.fixture
def card(tiny_vit_config):
    return new_segmentation_card(
        tiny_vit_config, LABELS, PreprocessConfig.meddinov3_demo(), InferenceConfig(batch_size=2), name="tiny"
    )


def test_forward_shapes_and_features(card):
    model = build_model(card).eval()
    x = torch.randn(2, 1, 64, 48)
    feats = model.features(x)
    assert feats.shape == (2, 4 * 64, 4, 3)
    assert model.feature_dim == 256
    logits = model(x)
    assert logits.shape == (2, 3, 64, 48)
    assert model.layers == (0, 1, 2, 3)  # vit_tiny: depth 4 -> every block


def test_features_are_concatenated_normed_intermediate_tokens(tiny_vit_config):
    model = Segmenter(tiny_vit_config, SegmenterConfig(n_classes=2, intermediate_layers=(1, 3))).eval()
    x = torch.randn(1, 1, 32, 32)
    expected = torch.cat(model.backbone.get_intermediate_layers(x.repeat(1, 3, 1, 1), (1, 3)), dim=1)
    torch.testing.assert_close(model.features(x), expected)
    # the one channel is repeated: the backbone sees three identical channels
    direct = model.backbone.get_intermediate_layers(torch.cat([x, x, x], dim=1), (1, 3))
    torch.testing.assert_close(model.features(x)[:, :64], direct[0])


def test_vit_b_default_layers_and_parameter_count():
    backbone = vit_config("vit_base")
    model = Segmenter(backbone, SegmenterConfig(n_classes=16))
    assert model.layers == (2, 5, 8, 11)
    assert model.decoder.in_channels == 3072
    total = sum(p.numel() for p in model.parameters())
    assert 105e6 < total < 115e6  # ViT-B (~86M) + decoder (~25M)


def test_card_round_trip_and_load_model(card, tmp_path):
    model = build_model(card)
    assert isinstance(model, Segmenter)
    save_model_card(tmp_path / "m", card, model)
    again = load_model_card(tmp_path / "m")
    assert again == card
    loaded, card2 = load_model(tmp_path / "m")
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    labels = card_labels(card2)
    assert [lab.name for lab in labels] == ["liver", "spleen"]
    assert labels[1].terminology["type"]["code"] == "78961009"
    assert labels[0].color == (0.86, 0.55, 0.4)
    assert PreprocessConfig.from_dict(card2.preprocessing) == PreprocessConfig.meddinov3_demo()
    assert InferenceConfig.from_dict(card2.inference).batch_size == 2
    assert set(k.split(".")[0] for k in model.state_dict()) == {"backbone", "decoder"}


@pytest.mark.parametrize(
    "labels, message",
    [
        ([{"value": 0, "name": "bg", "color": [0, 0, 0]}], "1..65535"),
        ([{"value": 1, "name": "", "color": [0, 0, 0]}], "non-empty name"),
        ([{"value": 1, "name": "a", "color": [0, 0, 255]}], "values in 0..1"),
        ([{"value": 1, "name": "a", "colour": [0, 0, 1]}], "unknown option"),
        (["a", {"value": 1, "name": "b", "color": [0, 0, 1]}], "unique"),
    ],
)
def test_bad_labels(labels, message, tiny_vit_config):
    with pytest.raises(ValueError, match=message):
        new_segmentation_card(tiny_vit_config, labels)


def test_bad_head_and_inputs(tiny_vit_config, card):
    with pytest.raises(ValueError, match="number of labels \\+ 1"):
        new_segmentation_card(tiny_vit_config, ["a", "b"], head={"n_classes": 5})
    with pytest.raises(ValueError, match="unknown option"):
        new_segmentation_card(tiny_vit_config, ["a"], head={"n_classes": 2, "dropout": 0.1})
    with pytest.raises(ValueError, match="lacks 'n_classes'"):
        SegmenterConfig.from_dict({"intermediate_layers": [1, 2]})
    card3 = new_segmentation_card(tiny_vit_config, ["a", "b"], head={"intermediate_layers": [1, 3]})
    assert card3.head == {"n_classes": 3, "intermediate_layers": [1, 3], "decoder_norm_eps": 1e-6, "in_chans": 1}
    with pytest.raises(ValueError, match="out of range"):
        Segmenter(tiny_vit_config, SegmenterConfig(n_classes=2, intermediate_layers=(7,)))
    model = build_model(card)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model(torch.randn(1, 1, 40, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(1, 3, 32, 32))


def test_backward_reaches_backbone_and_decoder(card):
    model = build_model(card)
    model(torch.randn(2, 1, 32, 32)).logsumexp(1).mean().backward()
    assert model.decoder.head.weight.grad is not None
    assert model.backbone.patch_embed.proj.weight.grad is not None


def test_head_type_dispatch(tiny_vit_config, card):
    from dataclasses import replace

    assert isinstance(build_model(replace(card, head={**card.head, "type": "primus"})), Segmenter)
    with pytest.raises(ValueError, match="unknown segmentation head type 'mlp'"):
        build_model(replace(card, head={**card.head, "type": "mlp"}))

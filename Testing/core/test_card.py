"""The model card module (MedDINOv3Core.card): torch-free config.json reading and writing, labels, settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from MedDINOv3Core.architecture import vit_config
from MedDINOv3Core.card import (
    InferenceConfig,
    Label,
    ModelCard,
    PreprocessConfig,
    is_model_card,
    load_model_card,
    parse_labels,
    write_card_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_importing_the_card_module_imports_no_torch():
    code = "import sys, MedDINOv3Core.card\nprint('torch' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_card_config_round_trip_without_weights(tmp_path):
    card = ModelCard(
        task="segmentation",
        backbone=vit_config("vit_tiny"),
        name="tiny",
        head={"n_classes": 2},
        labels=(Label(1, "liver").to_dict(),),
        preprocessing=PreprocessConfig.meddinov3_demo().to_dict(),
        inference=InferenceConfig(tile_size=(32, 32)).to_dict(),
    )
    write_card_config(tmp_path, card)
    assert is_model_card(tmp_path)
    assert load_model_card(tmp_path) == card
    assert PreprocessConfig.from_dict(card.preprocessing) == PreprocessConfig.meddinov3_demo()
    assert InferenceConfig.from_dict(card.inference).tile_size == (32, 32)


def test_labels_from_names_get_values_and_colors():
    labels = parse_labels(["a", "b", Label(7, "c", (0, 0, 1))])
    assert [lab.value for lab in labels] == [1, 2, 7]
    assert all(len(lab.color) == 3 for lab in labels)
    assert labels[2].to_dict() == {"value": 7, "name": "c", "color": [0.0, 0.0, 1.0]}

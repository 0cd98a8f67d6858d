"""`python -m training phantom`: an nnU-Net v2 raw dataset whose label colours/terminology reach finetuning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedDINOv3Core.data.nnunet_data import LABEL_PROPERTIES_KEY, DatasetError, load_nnunet_dataset
from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
from MedDINOv3Core.train.finetune import _labels
from MedDINOv3Core.volume_io import read_volume
from training.cli import main


def test_phantom_dataset_layout_and_label_properties(tmp_path):
    out = tmp_path / "ds"
    assert (
        main(
            [
                "phantom",
                "--out",
                str(out),
                "--cases",
                "2",
                "--shape",
                "16",
                "32",
                "32",
                "--seed",
                "5",
                "--test",
                "1",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    dataset = load_nnunet_dataset(out)
    assert [c.name for c in dataset.training] == ["phantom_005", "phantom_006"]
    assert [c.name for c in dataset.test] == ["phantom_007"]
    assert dataset.classes == tuple((d["value"], d["name"]) for d in phantom_label_table())
    # the files are the seeded phantoms themselves
    expected = make_phantom((16, 32, 32), seed=6)
    assert np.array_equal(read_volume(dataset.training[1].label).array, expected.labels.array)
    # colours and SNOMED terminology flow into the card labels that finetuning writes
    labels = _labels(dataset, None)
    table = {d["name"]: d for d in phantom_label_table()}
    for label in labels:
        assert label["terminology"]["type"] == table[label["name"]]["terminology"]["type"]
        assert np.allclose(label["color"], table[label["name"]]["color"])
    with pytest.raises(SystemExit):
        main(["phantom", "--out", str(out), "--cases", "0"])
    assert main(["phantom", "--out", str(out), "--cases", "1", "--progress", "none"]) == 1  # never overwrites


def test_label_properties_must_agree_with_declared_labels(tmp_path):
    out = tmp_path / "ds"
    main(["phantom", "--out", str(out), "--cases", "1", "--shape", "16", "32", "32", "--progress", "none"])
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    meta[LABEL_PROPERTIES_KEY][0]["name"] = "hepar"
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"'hepar' = 1, but 'labels' declares 'liver' for value 1"):
        load_nnunet_dataset(out)
    meta[LABEL_PROPERTIES_KEY] = {"liver": 1}
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="must be a list"):
        load_nnunet_dataset(out)

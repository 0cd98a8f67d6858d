"""`--features CACHE_DIR` on `finetune` (few-shot) and `predict`, and `explore --region` from a cache: no backbone
pass once the volume's features are cached, progress lines that say so, and one-line errors for a cache of another
volume or a mode that cannot use it (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MedDINOv3Core.data.nnunet_dataset import write_dataset_json
from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
from MedDINOv3Core.models.vit import VisionTransformer
from MedDINOv3Core.resource_files import resource_path
from MedDINOv3Core.volume_io import read_volume, write_volume
from training.cli import main

SHAPE, SPACING = (8, 48, 48), (2.8125, 2.8125, 10.0)
FAST = ["iterations_per_epoch=3", "fewshot_pixels=512"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("cli")
    phantom = make_phantom(SHAPE, spacing=SPACING, seed=5)
    root = tmp / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = root / "imagesTr" / "case_0000.nii.gz"
    write_volume(phantom.ct, image)
    painted = np.zeros_like(phantom.labels.array)
    painted[[2, 5]] = phantom.labels.array[[2, 5]]
    write_volume(phantom.labels.with_array(painted), root / "labelsTr" / "case.nii.gz")
    write_dataset_json(root, phantom_label_table(), name="painted", num_training=1, file_ending=".nii.gz")
    model = str(resource_path("models", "meddinov3-phantom-tiny"))
    assert main(["explore", "--model", model, "--input", str(image), "--cache-dir", str(tmp / "features")]) == 0
    return tmp, root, image, model


@pytest.fixture
def no_backbone(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone ran although the features are cached")

    monkeypatch.setattr(VisionTransformer, "get_intermediate_layers", refuse)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_finetune_and_predict_from_the_cache(setup, no_backbone, capsys):
    tmp, root, image, model = setup
    capsys.readouterr()
    argv = ["finetune", "--config", "finetune_fewshot", "--data", str(root), "--out", str(tmp / "r1"), "--init", model]
    assert main([*argv, *FAST, "--features", str(tmp / "features"), "--progress", "json"]) == 0
    events = _lines(capsys.readouterr().out)
    assert {"stage": "features", "message": "from cache"}.items() <= events[
        [e["stage"] for e in events].index("features")
    ].items()
    out = tmp / "seg.nii.gz"
    predict = ["predict", "--model", str(tmp / "r1" / "best"), "--input", str(image), "--output", str(out)]
    assert main([*predict, "--features", str(tmp / "features"), "--device", "cpu"]) == 0
    summary = capsys.readouterr().out
    assert "labels found" in summary
    seg = read_volume(out)
    assert seg.same_geometry(read_volume(image)) and seg.array.any()
    region = tmp / "region.nrrd"
    explore = ["explore", "--model", model, "--input", str(image), "--cache-dir", str(tmp / "features")]
    assert (
        main([*explore, "--similarity-at", "24,24,4", "--space", "ijk", "--region", str(region), "--threshold", "0.5"])
        == 0
    )
    assert read_volume(region).array[4, 24, 24] == 1


def test_mismatched_cache_and_wrong_mode_are_one_line_errors(setup, capsys, tmp_path):
    tmp, root, image, model = setup
    other = tmp_path / "other.nii.gz"
    write_volume(make_phantom(SHAPE, spacing=SPACING, seed=9).ct, other)
    capsys.readouterr()
    predict = ["predict", "--model", model, "--input", str(image), "--output", str(tmp_path / "s.nii.gz")]
    assert main([*predict, "--features", str(tmp / "features")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a few-shot model" in err[0]
    argv = ["finetune", "--config", "finetune", "--data", str(root), "--out", str(tmp_path / "o"), "--init", model]
    with pytest.raises(SystemExit) as usage:
        main([*argv, "--features", str(tmp / "features")])
    assert usage.value.code == 2
    assert "few-shot mode only" in capsys.readouterr().err
    # a few-shot model, the cache of the painted volume, another volume as input
    fewshot = ["finetune", "--config", "finetune_fewshot", "--data", str(root), "--out", str(tmp_path / "fs")]
    assert main([*fewshot, "--init", model, *FAST]) == 0
    capsys.readouterr()
    predict = ["predict", "--model", str(tmp_path / "fs" / "best"), "--input", str(other)]
    assert main([*predict, "--output", str(tmp_path / "s.nii.gz"), "--features", str(tmp / "features")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another volume" in err[0], err

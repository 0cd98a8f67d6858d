"""`python -m training predict`: outputs in every format with the input's geometry, progress, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.inference import InferenceConfig
from MedDINOv3Core.models.vit import vit_config
from MedDINOv3Core.segmentation_cards import new_segmentation_card
from MedDINOv3Core.volume_io import read_segmentation, read_volume, write_volume
from MedDINOv3Core.weights import build_model, save_model_card
from training.cli import main

LABELS = [
    {
        "value": 1,
        "name": "liver",
        "color": [0.9, 0.6, 0.4],
        "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]},
    },
    {"value": 5, "name": "spleen", "color": [0.6, 0.3, 0.6]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    card = new_segmentation_card(
        vit_config("vit_tiny"),
        LABELS,
        PreprocessConfig.meddinov3_demo(spacing=(1.0, 1.0)),
        InferenceConfig(tile_size=(32, 32), batch_size=4),
        name="tiny-test",
    )
    return save_model_card(tmp_path_factory.mktemp("models") / "tiny", card, build_model(card))


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # sagittal storage order
    v = Volume(
        rng.integers(-1000, 1000, (20, 24, 5)).astype(np.int16), (2.5, 0.9, 1.1), (1.5, -2.0, 3.25), direction.ravel()
    )
    return write_volume(v, tmp_path_factory.mktemp("in") / "ct.nrrd")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_predict_writes_labelmap_with_input_geometry(model_dir, ct_path, tmp_path, suffix, capsys):
    out = tmp_path / f"seg{suffix}"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--input",
                str(ct_path),
                "--output",
                str(out),
                "--device",
                "cpu",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    seg, ct = read_volume(out), read_volume(ct_path)
    assert seg.shape == ct.shape and seg.array.dtype == np.uint8
    tol = 1e-5 if suffix == ".nii.gz" else 1e-12
    assert (
        np.abs(np.r_[seg.spacing, seg.origin, seg.direction] - np.r_[ct.spacing, ct.origin, ct.direction]).max() <= tol
    )
    assert set(np.unique(seg.array)) <= {0, 1, 5}


def test_seg_nrrd_carries_names_colors_terminology(model_dir, ct_path, tmp_path):
    out = tmp_path / "seg.seg.nrrd"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--input",
                str(ct_path),
                "--output",
                str(out),
                "--progress",
                "none",
                "--tta",
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    seg, segments = read_segmentation(out)
    assert seg.same_geometry(read_volume(ct_path), tol=1e-12)
    by_value = {s["labelValue"]: s for s in segments}
    assert by_value[1]["name"] == "liver" and by_value[5]["name"] == "spleen"
    assert by_value[5]["color"] == pytest.approx([0.6, 0.3, 0.6])
    assert by_value[1]["terminology"]["type"] == ["SCT", "10200004", "Liver"]


def test_progress_json_lines_and_probabilities(model_dir, ct_path, tmp_path, capsys):
    out = tmp_path / "seg.nrrd"
    rc = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--input",
            str(ct_path),
            "--output",
            str(out),
            "--progress",
            "json",
            "--probabilities",
            str(tmp_path / "probs"),
        ]
    )
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    predict = [line for line in lines if line["stage"] == "predict"]
    assert predict[0]["done"] == 0 and predict[-1]["done"] == predict[-1]["total"] == 24  # axial slices: y axis
    assert lines[-1] == {"stage": "write", "done": 1, "total": 1, "message": "seg.nrrd"}
    probs = sorted(p.name for p in (tmp_path / "probs").iterdir())
    assert probs == ["00_background.nrrd", "01_liver.nrrd", "02_spleen.nrrd"]
    total = sum(read_volume(tmp_path / "probs" / name).array for name in probs)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_bad_output_suffix_is_a_usage_error(model_dir, ct_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", str(model_dir), "--input", str(ct_path), "--output", str(tmp_path / "s.png")])
    assert exc.value.code == 2
    assert "unsupported suffix" in capsys.readouterr().err


def test_missing_input_is_a_one_line_failure(model_dir, tmp_path, capsys):
    rc = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--input",
            str(tmp_path / "nope.nii.gz"),
            "--output",
            str(tmp_path / "s.nii.gz"),
            "--progress",
            "none",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input not found" in err[0] and "nope.nii.gz" in err[0]
    assert not (tmp_path / "s.nii.gz").exists()


def test_backbone_card_is_refused(tmp_path, ct_path, capsys):
    from MedDINOv3Core.card import ModelCard
    from MedDINOv3Core.models.vit import VisionTransformer

    card = ModelCard(task="backbone", backbone=vit_config("vit_tiny"), name="bb")
    save_model_card(tmp_path / "bb", card, VisionTransformer(card.backbone))
    rc = main(
        [
            "predict",
            "--model",
            str(tmp_path / "bb"),
            "--input",
            str(ct_path),
            "--output",
            str(tmp_path / "s.nrrd"),
            "--progress",
            "none",
        ]
    )
    assert rc == 1
    assert "not a segmentation model" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "python -m training predict --model" in out and "--tta" in out and "--batch-size" in out

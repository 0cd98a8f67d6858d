"""`python -m training finetune`: recipes + overrides, a tiny run with JSON progress, resume, fewshot from a card,
and one-line errors for bad usage and bad datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
from MedDINOv3Core.volume_io import write_volume
from training.cli import main

SMALL = {"shape": (4, 40, 40), "spacing": (6.0, 6.0, 20.0)}
TINY = [
    "backbone=vit_tiny",
    "backbone_patch_size=8",
    "epochs=2",
    "iterations_per_epoch=2",
    "batch_size=2",
    "crop_size=[32,32]",
    "val_cases=[ph1]",
]


def write_phantom_dataset(root: Path, seeds, shape, spacing) -> Path:
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for s in seeds:
        p = make_phantom(shape, spacing=spacing, seed=s)
        write_volume(p.ct, root / "imagesTr" / f"ph{s}_0000.nii.gz")
        write_volume(p.labels, root / "labelsTr" / f"ph{s}.nii.gz")
    labels = {"background": 0, **{d["name"]: d["value"] for d in phantom_label_table()}}
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(seeds), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("cli"), (0, 1), **SMALL)


def test_every_recipe_resolves(capsys):
    for recipe in ("finetune", "finetune_decoder", "finetune_fewshot", "finetune_tiny_cpu"):
        assert main(["finetune", "--config", recipe, "--print-config", "lr_decoder=1e-4"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["lr_decoder"] == 1e-4
    assert main(["finetune", "--config", "finetune", "--print-config"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert paper["betas"] == [0.9, 0.98] and paper["lr_encoder"] == 3e-5 and paper["drop_path"] == 0.2
    assert paper["grad_clip"] == 12.0 and paper["oversample_foreground"] == 0.33 and paper["weight_decay"] == 0.05


def test_tiny_run_json_progress_resume_and_fewshot(data: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--config", "finetune_tiny_cpu", "--data", str(data), "--out", str(out), "--progress", "json"]
    assert main([*args, *TINY]) == 0
    lines = _json_lines(capsys.readouterr().out)
    assert {"load", "finetune", "validate", "done"} <= {line["stage"] for line in lines}
    done = lines[-1]
    assert done["stage"] == "done" and Path(done["model"]) == out / "best"
    assert "validation DSC" in done["message"]
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in history] == [1, 2] and "val_dsc" in history[0]
    # a finished run resumed with more epochs continues from its checkpoint
    assert (
        main(
            [
                *args,
                *TINY[:-5],
                "epochs=3",
                "iterations_per_epoch=2",
                "batch_size=2",
                "crop_size=[32,32]",
                "val_cases=[ph1]",
                "--resume",
            ]
        )
        == 0
    )
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text(encoding="utf-8"))] == [1, 2, 3]
    capsys.readouterr()
    # few-shot head on the trained backbone
    fs = tmp_path / "fs"
    argv = [
        "finetune",
        "--config",
        "finetune_fewshot",
        "--data",
        str(data),
        "--out",
        str(fs),
        "--init",
        str(out / "best"),
    ]
    assert main([*argv, "iterations_per_epoch=3", "--progress", "none"]) == 0
    assert Path(capsys.readouterr().out.strip()) == fs / "best"
    card = json.loads((fs / "best" / "config.json").read_text(encoding="utf-8"))
    assert card["head"]["type"] == "fewshot" and card["provenance"]["init_path"] == str((out / "best").resolve())


def test_usage_errors_exit_2(tmp_path: Path, capsys):
    cases = [
        (["finetune", "--config", "nope"], "unknown recipe"),
        (["finetune", "--config", "finetune", "learning_rate=1"], "unknown option"),
        (["finetune", "--config", "finetune", "mode=linear"], "finetune mode must be one of"),
        (["finetune", "--config", "finetune", "--out", str(tmp_path)], "no training data"),
        (["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--resume"], "no checkpoint.pt"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bad_dataset_is_a_one_line_error(tmp_path: Path, capsys):
    (tmp_path / "ds").mkdir()
    assert main(["finetune", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "o"), "--progress", "none"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no dataset.json" in err and len(err.splitlines()) == 1

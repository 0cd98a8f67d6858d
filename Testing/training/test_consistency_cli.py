"""Issue 17: the commands accept what their siblings accept and say what is wrong in words, run as a user would
(training.cli.main in process; exit code 1 for a failure, 2 for bad usage)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from MedDINOv3Core.card import load_model_card
from MedDINOv3Core.resource_files import resource_path
from MedDINOv3Core.weights import domain_warning, is_project_phantom, trained_on_phantoms
from training.cli import main

PHANTOM_MODEL = "meddinov3-phantom-tiny"


def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_pretrain_help_lists_only_pretraining_recipes(capsys):
    assert _code(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "stage1, stage2, stage3, tiny_cpu" in out and "finetune" not in out
    assert _code(["pretrain", "--config", "finetune_fewshot", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'finetune_fewshot'" in err and "python -m training finetune --config finetune_fewshot" in err


@pytest.fixture
def run_dir(tmp_path):
    """A finetuning run's output: best/ (a model card) and checkpoint.pt beside it."""
    run = tmp_path / "run"
    shutil.copytree(resource_path("models", PHANTOM_MODEL), run / "best")
    torch.save({"format": "meddinov3-finetune-checkpoint"}, run / "checkpoint.pt")
    return run


def test_a_training_checkpoint_given_as_model_points_to_its_card(run_dir, tmp_path, capsys):
    argv = ["export-rtstruct", "--labels", "x.nii.gz", "--reference", str(tmp_path), "--out", str(tmp_path / "o")]
    argv += ["--model", str(run_dir / "checkpoint.pt"), "--progress", "none"]
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.volume_io import write_volume

    ct, labels, _ = make_phantom((8, 32, 32), seed=3, noise_sigma=0)
    argv[2], argv[4] = str(write_volume(labels, tmp_path / "seg.nii.gz")), str(write_volume(ct, tmp_path / "ct.nii.gz"))
    assert _code(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {run_dir / 'checkpoint.pt'} is a training checkpoint; use {run_dir / 'best'} (a model card)"
    pretrain_ckpt = tmp_path / "pre" / "checkpoints" / "last.pt"
    pretrain_ckpt.parent.mkdir(parents=True)
    torch.save({"format": "meddinov3-pretrain"}, pretrain_ckpt)
    argv[argv.index("--model") + 1] = str(pretrain_ckpt)
    assert _code(argv) == 1
    assert f"`python -m training export-backbone {pretrain_ckpt} --output DIR`" in capsys.readouterr().err


def test_export_rtstruct_takes_a_model_name_and_refuses_a_file_as_out(tmp_path, capsys):
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.volume_io import write_volume

    ct, labels, _ = make_phantom((8, 32, 32), seed=3, noise_sigma=0)
    seg, ct_file = write_volume(labels, tmp_path / "seg.nii.gz"), write_volume(ct, tmp_path / "ct.nii.gz")
    argv = ["export-rtstruct", "--labels", str(seg), "--reference", str(ct_file), "--progress", "none"]
    (tmp_path / "taken").write_text("")
    assert _code([*argv, "--out", str(tmp_path / "taken"), "--model", PHANTOM_MODEL]) == 2
    assert f"--out {tmp_path / 'taken'} is a file; give a folder" in capsys.readouterr().err
    assert _code([*argv, "--out", str(tmp_path / "rt"), "--model", PHANTOM_MODEL]) == 0
    from pydicom import dcmread

    names = {roi.ROIName for roi in dcmread(tmp_path / "rt" / "RTSTRUCT.dcm").StructureSetROISequence}
    assert {"liver", "spleen"} <= names


def test_a_phantom_trained_model_warns_once_on_other_inputs(tmp_path, caplog):
    card = load_model_card(resource_path("models", PHANTOM_MODEL))
    assert trained_on_phantoms(card)
    assert is_project_phantom(tmp_path / "phantom_003_0000.nii.gz")
    assert is_project_phantom(tmp_path / "MedDINOv3Phantom-v1-seed2026.nrrd")
    dataset = tmp_path / "Dataset001"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text('{"name": "MedDINOv3 synthetic CT phantom"}')
    assert is_project_phantom(dataset / "imagesTr" / "case_0000.nii.gz")
    assert not is_project_phantom(tmp_path / "patient_ct.nii.gz")
    with caplog.at_level(logging.WARNING, logger="MedDINOv3Core.weights"):
        assert domain_warning(card, tmp_path / "phantom_003_0000.nii.gz") is None
        message = domain_warning(card, tmp_path / "patient_ct.nii.gz")
        domain_warning(card, tmp_path / "patient_ct.nii.gz")
    assert "trained on synthetic CT phantoms only; patient_ct.nii.gz is not a phantom made by this project" in message
    assert [r.getMessage() for r in caplog.records] == [message] and "\n" not in message

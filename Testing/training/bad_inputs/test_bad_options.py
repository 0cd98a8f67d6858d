"""Bad option values, run as a user would (training.cli.main in process): numbers out of range or NaN, recipe
overrides out of range, an empty data=, an unknown organ, an image given as a label map; and the console
(--progress none prints only the result and the problems)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bad_inputs.runner import run
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.volume_io import write_volume


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["explore", "--input", "ct.nii.gz", "--model", "m", "--batch-size", "0"], "at least 1"),
        (["explore", "--input", "ct.nii.gz", "--model", "m", "--batch-size", "-3"], "at least 1"),
        (["explore", "--input", "ct.nii.gz", "--model", "m", "--upsample", "0"], "[1, 2]"),
        (["explore", "--input", "ct.nii.gz", "--model", "m", "--threshold", "2"], "[-1, 1]"),
        (["explore", "--input", "ct.nii.gz", "--model", "m", "--threshold", "nan"], "[-1, 1]"),
        (
            ["predict", "--input", "ct.nii.gz", "--model", "m", "--output", "o.nii.gz", "--batch-size", "0"],
            "at least 1",
        ),
        (["evaluate", "--pred", "p", "--gt", "g", "--out", "o", "--tolerance", "nan"], ">= 0"),
        (["evaluate", "--pred", "p", "--gt", "g", "--out", "o", "--tolerance", "liver=-1"], ">= 0"),
        (["evaluate", "--pred", "p", "--gt", "g", "--out", "o", "--tolerance", "inf"], ">= 0"),
        (["phantom", "--out", "d", "--cases", "0"], "at least 1"),
        (["phantom", "--out", "d", "--test", "-1"], "at least 0"),
        (["phantom", "--out", "d", "--shape", "8", "64", "64"], "at least 16"),
        (["phantom", "--out", "d", "--seed", "-1"], "at least 0"),
        (["phantom", "--out", "d", "--noise", "nan"], "0 or more"),
        (["phantom", "--out", "d", "--cases", "two"], "at least 1"),
        (["demo", "--out", "d", "--shape", "0", "64", "64"], "at least 16"),
        (["demo", "--out", "d", "--seed", "-5"], "at least 0"),
        (["cache", "clean", "--older-than", "-1"], "0 or more"),
        (["cache", "clean", "--older-than", "nan"], "0 or more"),
    ],
)
def test_numeric_option_out_of_range(capsys, tmp_path, monkeypatch, argv, allowed):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    error = [line for line in err.splitlines() if "error" in line]
    assert len(error) == 1 and allowed in error[0], err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "command, override, message",
    [
        ("pretrain", "lr=-1e-4", "lr must be at least 0"),
        ("pretrain", "lr=.nan", "lr must be a finite number"),
        ("pretrain", "lr=1e999", "lr must be a finite number"),
        ("pretrain", "total_steps=0", "total_steps must be"),
        ("pretrain", "mask_probability=1.5", "mask_probability must be in [0, 1]"),
        ("pretrain", "seed=-1", "seed must be at least 0"),
        ("finetune", "epochs=0", "epochs must be greater than 0"),
        ("finetune", "lr_decoder=.nan", "lr_decoder must be a finite number"),
        ("finetune", "weight_decay=-0.1", "weight_decay must be at least 0"),
    ],
)
def test_recipe_override_out_of_range(capsys, tmp_path, command, override, message):
    config = "tiny_cpu" if command == "pretrain" else "finetune_fewshot"
    code, out, err = run(capsys, command, "--config", config, override, "--print-config")
    assert code == 2, err
    assert message in err and out == ""


def test_pretrain_refuses_empty_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "pretrain", "--config", "tiny_cpu", "data=", f"output_dir={tmp_path / 'run'}")
    assert code == 2
    assert "empty data=" in err
    assert not (tmp_path / "run").exists()


def test_demo_refuses_unknown_organ(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "d"), "--organ", "spleeen", "--progress", "none")
    assert code == 2
    assert "'spleeen'" in err and "liver" in err and "spleen" in err
    assert not (tmp_path / "d").exists()


def _pair(tmp_path, pred: np.ndarray, gt: np.ndarray | None = None) -> tuple:
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    if gt is None:
        gt = np.zeros((4, 8, 8), np.uint8)
        gt[1:3, 2:6, 2:6] = 1
    write_volume(Volume(pred), tmp_path / "pred" / "case_1.nii.gz")
    write_volume(Volume(gt), tmp_path / "gt" / "case_1.nii.gz")
    return "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(tmp_path / "out")


def test_evaluate_refuses_an_image_with_fractions(capsys, tmp_path):
    image = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
    code, out, err = run(capsys, "evaluate", *_pair(tmp_path, image), "--progress", "none")
    assert code == 1
    assert "not a label map" in err and "case_1.nii.gz" in err and "prediction" in err


def test_evaluate_refuses_an_image_of_many_values(capsys, tmp_path):
    ct = np.arange(4 * 16 * 16, dtype=np.int16).reshape(4, 16, 16)
    gt = np.zeros((4, 16, 16), np.uint8)
    gt[1:3, 2:6, 2:6] = 1
    code, out, err = run(capsys, "evaluate", *_pair(tmp_path, gt, ct), "--progress", "none")
    assert code == 1
    assert "1024 distinct values" in err and "image, not a label map" in err and "reference" in err, err
    assert "case_1.nii.gz" in err


def test_evaluate_refuses_negative_labels(capsys, tmp_path):
    pred = np.zeros((4, 8, 8), np.int16)
    pred[1:3, 2:6, 2:6] = -1
    code, out, err = run(capsys, "evaluate", *_pair(tmp_path, pred), "--progress", "none")
    assert code == 1
    assert "negative label value(s) [-1]" in err and "case_1.nii.gz" in err


def test_progress_none_prints_only_the_result(capsys, caplog, tmp_path):
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[1:3, 2:6, 2:6] = 1
    args = _pair(tmp_path, gt)
    root = logging.getLogger()
    seen = []
    orig = root.level

    class Spy(logging.Handler):
        def emit(self, record):
            seen.append(record)

    spy = Spy(logging.DEBUG)
    root.addHandler(spy)
    try:
        code, out, err = run(capsys, "evaluate", *args, "--progress", "none")
        assert code == 0 and "written:" in out and err == ""
        assert not [r for r in seen if r.levelno < logging.WARNING]
        # --progress bar: the info lines come (through tqdm), the level is put back afterwards
        code, out, err = run(capsys, "evaluate", *args, "--progress", "bar", "--name", "again", "--overwrite")
    finally:
        root.removeHandler(spy)
    assert code == 0
    assert root.level == orig

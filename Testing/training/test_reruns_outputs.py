"""The rerun rule (training/outputs.py) for the commands that write files and result folders: phantom, evaluate,
export-rtstruct, export-backbone, explore and bench --json refuse existing output with one line unless --overwrite,
--overwrite never deletes files the command did not write, and export-rtstruct / evaluate put the earlier output back
when the new one fails. (demo, finetune and pretrain: test_reruns.py; predict: test_predict_reruns.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDINOv3Core.card import ModelCard
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.models.vit import vit_config
from MedDINOv3Core.volume_io import write_volume
from MedDINOv3Core.weights import build_model, save_model_card
from training.cli import main

PHANTOM = ["phantom", "--cases", "1", "--shape", "16", "48", "48", "--progress", "none"]
NAMES = ["--names", "liver", "spleen", "kidney L", "kidney R", "spine", "lung L", "lung R"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "ds"
    assert main([*PHANTOM, "--out", str(out)]) == 0
    return out


def _error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    return err[-1] if err else ""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_phantom_rerun_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main([*PHANTOM, "--out", str(out)]) == 0
    first = _files(out)
    capsys.readouterr()
    assert main([*PHANTOM, "--out", str(out), "--seed", "3"]) == 1
    assert "--out " + str(out) + " already holds a phantom output; add --overwrite to replace it" in _error(capsys)
    assert _files(out) == first
    assert main([*PHANTOM, "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["phantom_003_0000.nii.gz"]  # seed 0's case gone
    (out / "notes.txt").write_text("mine")
    assert main([*PHANTOM, "--out", str(out), "--overwrite"]) == 1
    assert "also holds files phantom did not write (notes.txt)" in _error(capsys)
    assert (out / "notes.txt").read_text() == "mine" and (out / "dataset.json").is_file()


def test_evaluate_rerun_refused_overwritten_and_restored_on_failure(phantom, tmp_path, capsys, monkeypatch):
    labels = phantom / "labelsTr"
    out = tmp_path / "eval"
    argv = ["evaluate", "--pred", str(labels), "--gt", str(labels), "--out", str(out), "--progress", "none"]
    assert main(argv) == 0
    first = _files(out)
    assert main(argv) == 1
    assert "already holds an evaluate output; add --overwrite to replace it" in _error(capsys)
    assert _files(out) == first

    import MedDINOv3Core.evaluation as evaluation

    real = evaluation.write_report

    def half_written(result, out_dir):  # the disk fills up after the first file
        (Path(out_dir) / "per_case.csv").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluation, "write_report", half_written)
    assert main([*argv, "--overwrite", "--name", "second"]) == 1
    assert "No space left on device" in _error(capsys)
    assert _files(out) == first  # the earlier report, whole, and no leftovers
    monkeypatch.setattr(evaluation, "write_report", real)
    assert main([*argv, "--overwrite", "--name", "second"]) == 0
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["method"] == "second"


def test_export_rtstruct_rerun_keeps_the_earlier_set_until_the_new_one_is_written(phantom, tmp_path, capsys):
    ct = phantom / "imagesTr" / "phantom_000_0000.nii.gz"
    seg = phantom / "labelsTr" / "phantom_000.nii.gz"
    out = tmp_path / "rt"
    argv = ["export-rtstruct", "--labels", str(seg), "--reference", str(ct), "--out", str(out), "--progress", "none"]
    assert main([*argv, *NAMES]) == 0
    printed = capsys.readouterr().out  # the result, also with --progress none
    assert f"{out / 'RTSTRUCT.dcm'}: 7 structures on series " in printed and f"written to {out / 'CT'}" in printed
    first = _files(out)
    assert "RTSTRUCT.dcm" in first and any(name.startswith("CT/") for name in first)
    assert main([*argv, *NAMES]) == 1
    assert "already holds an export-rtstruct output; add --overwrite to replace it" in _error(capsys)
    # a new export that fails (a label without a name) leaves the earlier set as it was
    assert main([*argv, *NAMES[:-1], "--overwrite"]) == 1
    assert "have no name" in _error(capsys)
    assert _files(out) == first
    assert main([*argv, *NAMES, "--overwrite", "--series-description", "second"]) == 0
    second = _files(out)
    assert sorted(second) == sorted(first) and second["RTSTRUCT.dcm"] != first["RTSTRUCT.dcm"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # the CT/ of an earlier export as the reference: --overwrite replaces RTSTRUCT.dcm and keeps that series
    dicom_ref = ["--reference", str(out / "CT"), "--out", str(out), *NAMES, "--overwrite", "--progress", "none"]
    assert main(["export-rtstruct", "--labels", str(seg), *dicom_ref]) == 0
    third = _files(out)
    assert {k: v for k, v in third.items() if k.startswith("CT/")} == {
        k: v for k, v in second.items() if k.startswith("CT/")
    }
    (out / "notes.txt").write_text("mine")
    assert main([*argv, *NAMES, "--overwrite"]) == 1
    assert "also holds files export-rtstruct did not write (notes.txt)" in _error(capsys)


def test_explore_outputs_refused_then_overwritten(tmp_path, capsys):
    card = ModelCard("backbone", vit_config("vit_tiny"), name="tiny-reruns")
    backbone = save_model_card(tmp_path / "bb", card, build_model(card))
    ct = write_volume(Volume(np.zeros((20, 32, 3), np.int16), (1.0, 1.0, 1.0)), tmp_path / "ct.nrrd")
    pca = tmp_path / "pca.nrrd"
    argv = ["explore", "--model", str(backbone), "--input", str(ct), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--pca", str(pca), "--progress", "none"]
    assert main(argv) == 0
    pca.write_bytes(b"the user's own file")
    assert main(argv) == 1
    assert f"--pca {pca} already exists; add --overwrite to replace it, or choose a new name" in _error(capsys)
    assert pca.read_bytes() == b"the user's own file"
    assert main([*argv, "--overwrite"]) == 0  # the feature cache is reused, the map replaced
    assert pca.read_bytes() != b"the user's own file"


def test_bench_json_refused_then_overwritten_before_any_timing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    out.write_text('{"results": "the figures of last week"}')
    argv = ["bench", "predict", "--toy", "--repeats", "1", "--threads", "1", "--json", str(out)]

    import training.bench.harness as harness

    ran = []
    real = harness.run_case
    monkeypatch.setattr(harness, "run_case", lambda *a, **k: ran.append(a) or real(*a, **k))
    assert main(argv) == 1
    assert f"--json {out} already exists; add --overwrite to replace it" in _error(capsys)
    assert not ran and out.read_text() == '{"results": "the figures of last week"}'
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads(out.read_text())["results"][0]["case"] == "predict"

"""Outputs never destroy inputs or user files: an output that is an input (also through a symlink) is refused,
export-backbone never replaces a folder holding other files, a cache folder that is a file is refused, and SIGTERM
cleans up as Ctrl+C does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from MedDINOv3Core.card import ModelCard
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.models.vit import vit_config
from MedDINOv3Core.volume_io import write_volume
from MedDINOv3Core.weights import build_model, save_model_card
from training.cli import main

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    card = ModelCard("backbone", vit_config("vit_tiny"), name="tiny-outputs")
    return save_model_card(tmp_path_factory.mktemp("models") / "bb", card, build_model(card))


@pytest.fixture
def ct(tmp_path):
    return write_volume(Volume(np.zeros((20, 24, 3), np.int16), (1.0, 1.0, 1.0)), tmp_path / "ct.nrrd")


def run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse / UsageError: exit code 2
        rc = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return rc, err[0]


def test_predict_output_is_input_refused(backbone, ct, tmp_path, capsys):
    before = ct.read_bytes()
    link = tmp_path / "link.nrrd"
    link.symlink_to(ct)
    for out in (ct, link):
        rc, line = run(["predict", "--model", str(backbone), "--input", str(ct), "--output", str(out)], capsys)
        assert rc == 2 and f"--output {out} is the input --input {ct}" in line, line
    assert ct.read_bytes() == before


def test_explore_out_is_input_refused(backbone, ct, tmp_path, capsys):
    before = ct.read_bytes()
    argv = ["explore", "--model", str(backbone), "--input", str(ct), "--similarity-at", "1,1,1", "--out", str(ct)]
    rc, line = run(argv, capsys)
    assert rc == 2 and "--out" in line and "is the input --input" in line, line
    assert ct.read_bytes() == before


def test_cache_dir_that_is_a_file_refused(backbone, ct, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    out = tmp_path / "seg.nrrd"
    argv = ["predict", "--model", str(backbone), "--input", str(ct), "--output", str(out), "--cache-dir", str(afile)]
    assert run(argv, capsys) == (2, f"error: --cache-dir {afile} is a file; give a folder")
    for option in ("--cache-dir", "--hub-cache-dir"):
        argv = ["explore", "--model", str(backbone), "--input", str(ct), option, str(afile)]
        assert run(argv, capsys) == (2, f"error: {option} {afile} is a file; give a folder")
    assert afile.read_text() == "keep me"


def test_export_backbone_never_replaces_other_files(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.write_bytes(b"checkpoint")
    for out in (run_dir / "checkpoints", run_dir):  # replacing either would delete the checkpoint
        rc, line = run(["export-backbone", str(ckpt), "--output", str(out)], capsys)
        assert rc == 2 and "holds the input checkpoint" in line, line
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    (user / "config.json").write_text("{}")
    rc, line = run(["export-backbone", str(ckpt), "--output", str(user)], capsys)
    assert rc == 1 and "already holds an export-backbone output; add --overwrite" in line, line
    rc, line = run(["export-backbone", str(ckpt), "--output", str(user), "--overwrite"], capsys)
    assert rc == 1 and "also holds files export-backbone did not write (notes.txt)" in line, line
    assert (user / "notes.txt").read_text() == "precious" and ckpt.read_bytes() == b"checkpoint"


def test_sigterm_cleans_up_like_ctrl_c(backbone, tmp_path):
    ct = write_volume(
        Volume(np.zeros((64, 64, 400), np.int16), (1.0, 1.0, 1.0)), tmp_path / "long.nrrd"
    )  # long enough to be stopped while it extracts
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "training", "explore", "--model", str(backbone), "--input", str(ct)]
    cmd += ["--cache-dir", str(cache), "--device", "cpu", "--batch-size", "1", "--progress", "json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    for line in proc.stdout:  # wait until features are being extracted
        if json.loads(line).get("done", 0) >= 1 or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated"
    leftovers = [p.name for p in cache.rglob("*")] if cache.exists() else []
    assert not [n for n in leftovers if ".tmp-" in n or n.endswith(".npy")], leftovers

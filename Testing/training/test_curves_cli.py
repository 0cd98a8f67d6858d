"""Training-curve PNGs through `python -m training`: a tiny pretraining run writes metrics.png beside its
metrics.jsonl. (The curves themselves: Testing/core/test_curves.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDINOv3Core.curves import CURVE_SIZE
from training.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_fetch import write_synthetic_ct  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_pretrain_writes_metrics_png(tmp_path, capsys, _one_thread):
    data = write_synthetic_ct(tmp_path / "ct", n_volumes=1)
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny_cpu", "--progress", "none", f"data={data}", f"output_dir={out}"]
    args += ["total_steps=2", "batch_size=2", "n_local=1", "slice_size=32", "head_out_dim=32", "log_every=1"]
    assert main(args) == 0
    assert (out / "metrics.jsonl").is_file()
    assert read_png(out / "metrics.png").shape == (*CURVE_SIZE, 3)

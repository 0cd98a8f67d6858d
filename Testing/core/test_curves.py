"""Training-curve PNGs: drawn without a plotting library, written beside history.json / metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDINOv3Core.curves import CURVE_SIZE, finetune_curve, write_finetune_curve, write_pretrain_curve
from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
from MedDINOv3Core.train.finetune import run_finetuning
from MedDINOv3Core.train.finetune_config import FinetuneConfig
from MedDINOv3Core.volume_io import write_volume

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


def test_finetune_curve_has_a_loss_and_a_dsc_panel(tmp_path):
    history = [{"epoch": e, "loss": 1.0 / e, "val_dsc": 0.1 * e} for e in range(1, 6)]
    img = finetune_curve(history)
    assert img.shape == (*CURVE_SIZE, 3) and img.dtype == np.uint8
    top, bottom = img[: CURVE_SIZE[0] // 2], img[CURVE_SIZE[0] // 2 :]
    blue, red = np.array([31, 119, 180]), np.array([214, 39, 40])
    assert (top == blue).all(-1).sum() > 200 and (bottom == red).all(-1).sum() > 200
    only_loss = finetune_curve([{"epoch": 1, "loss": 0.5}])  # one point, no validation: one panel, no crash
    assert not (only_loss == red).all(-1).any()
    assert write_finetune_curve(history, tmp_path / "h.png") == tmp_path / "h.png"
    assert read_png(tmp_path / "h.png").shape == (*CURVE_SIZE, 3)


def test_curve_writers_never_raise(tmp_path):
    assert write_pretrain_curve(tmp_path / "missing.jsonl") is None
    (tmp_path / "metrics.jsonl").write_text("not json\n")
    assert write_pretrain_curve(tmp_path / "metrics.jsonl") is None
    (tmp_path / "file").write_text("")
    assert write_finetune_curve([{"epoch": 1, "loss": float("nan")}], tmp_path / "file" / "x.png") is None


def test_pretrain_curve_from_metrics_jsonl(tmp_path):
    lines = [json.dumps({"step": s, "total": 5.0 - 0.01 * s, "images_per_s": 3.0}) for s in range(0, 300, 10)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert write_pretrain_curve(tmp_path / "metrics.jsonl") == tmp_path / "metrics.png"
    assert read_png(tmp_path / "metrics.png").shape == (*CURVE_SIZE, 3)


def test_tiny_finetune_writes_history_png(tmp_path, _one_thread):
    data = tmp_path / "ds"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for s in (0, 1):
        p = make_phantom((4, 40, 40), spacing=(6.0, 6.0, 20.0), seed=s)
        write_volume(p.ct, data / "imagesTr" / f"ph{s}_0000.nii.gz")
        write_volume(p.labels, data / "labelsTr" / f"ph{s}.nii.gz")
    labels = {"background": 0, **{d["name"]: d["value"] for d in phantom_label_table()}}
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}
    (data / "dataset.json").write_text(json.dumps(meta))
    config = FinetuneConfig(
        mode="full", data=str(data), output_dir=str(tmp_path / "out"), backbone="vit_tiny", backbone_patch_size=8,
        epochs=2, iterations_per_epoch=1, batch_size=2, crop_size=(32, 32), drop_path=0.0, device="cpu",
        val_fraction=0.5,
    )  # fmt: skip
    result = run_finetuning(config)
    assert "val_dsc" in result.history[-1]
    assert (tmp_path / "out" / "history.json").is_file()
    img = read_png(tmp_path / "out" / "history.png")
    assert img.shape == (*CURVE_SIZE, 3) and (img == [214, 39, 40]).all(-1).any()  # the DSC panel is drawn

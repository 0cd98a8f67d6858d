"""The GPU path (issue 19): prediction, feature extraction, finetune and pretrain steps on CUDA, against the fp32 CPU
results where they must agree (the benchmark harness on CUDA: Testing/training/test_bench_gpu_cli.py).

Marked ``gpu`` and skipped where CUDA is not available; run wherever it is (``pytest Testing/core/test_gpu.py``).
``MEDDINOV3_TEST_DEVICE=cpu`` runs the same tests on the CPU, which checks the tests themselves on machines without
a GPU (autocast is then off, so the agreement bounds hold trivially).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("MEDDINOV3_TEST_DEVICE", "cuda")
ROOT = Path(__file__).resolve().parents[2]
PHANTOM_MODEL = ROOT / "Resources" / "models" / "meddinov3-phantom-tiny"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"),
]

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_fetch import write_synthetic_ct  # noqa: E402
from test_finetune import tiny, write_phantom_dataset  # noqa: E402
from test_pretrain import tiny_config  # noqa: E402


def _dsc(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


@pytest.fixture(scope="module")
def phantom_and_model():
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.weights import load_model

    phantom = make_phantom((12, 256, 256), spacing=(1.4, 1.4, 5.0), seed=3)
    model, card = load_model(PHANTOM_MODEL)
    return phantom, model, card


def test_predict_on_the_device_agrees_with_fp32_on_the_cpu(phantom_and_model):
    """bf16 autocast and a batch sized to the free memory: the labels of every structure agree with fp32 CPU
    (DSC >= 0.98), the probabilities within bf16's rounding."""
    from MedDINOv3Core.inference import predict_volume

    phantom, model, card = phantom_and_model
    cpu = predict_volume(model, card, phantom.ct, device="cpu", return_probabilities=True)
    dev = predict_volume(model, card, phantom.ct, device=DEVICE, return_probabilities=True)
    assert dev.device.startswith(DEVICE.split(":")[0])
    assert dev.labelmap.array.shape == phantom.ct.shape and dev.labelmap.array.dtype == cpu.labelmap.array.dtype
    for value in np.unique(cpu.labelmap.array)[1:]:
        assert _dsc(dev.labelmap.array, cpu.labelmap.array, int(value)) >= 0.98, value
    assert np.abs(dev.probabilities - cpu.probabilities).mean() < 0.01


def test_fast_and_compiled_prediction_run_on_the_device(phantom_and_model):
    """``predict --fast`` (crop, body patches, subsampling; int8 is CPU-only) and ``predict --compile`` on the
    device agree with the device's plain labels."""
    from MedDINOv3Core.fast import FastConfig
    from MedDINOv3Core.inference import predict_volume

    phantom, model, card = phantom_and_model
    plain = predict_volume(model, card, phantom.ct, device=DEVICE).labelmap.array
    fast = predict_volume(model, card, phantom.ct, device=DEVICE, fast=FastConfig()).labelmap.array
    compiled = predict_volume(model, card, phantom.ct, device=DEVICE, compile=True).labelmap.array
    for value in np.unique(plain)[1:]:
        assert _dsc(fast, plain, int(value)) >= 0.85, value
        assert _dsc(compiled, plain, int(value)) >= 0.98, value


def test_auto_batch_size_fits_the_free_memory():
    from MedDINOv3Core.device import auto_batch_size, select_device

    dev = select_device(DEVICE)
    assert auto_batch_size(dev, 2**20, default=2) >= 2
    assert auto_batch_size(dev, 2**50, default=3) == 3  # nothing fits: the default, never 0
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        n = auto_batch_size(dev, 256 * 2**20, default=1, cap=10**6)
        assert n * 256 * 2**20 <= 0.7 * free or n == 1


def test_feature_extraction_on_the_device_agrees_with_the_cpu(phantom_and_model, tmp_path):
    """The feature cache from the device (bf16 autocast) and from the CPU: the same similarity maps (correlation
    >= 0.98 for clicks in three structures)."""
    from MedDINOv3Core.explore import similarity_map
    from MedDINOv3Core.extraction import extract_features

    phantom, model, card = phantom_and_model
    backbone = model.backbone
    cpu = extract_features(backbone, card, phantom.ct, cache_dir=tmp_path / "cpu", device="cpu")
    dev = extract_features(backbone, card, phantom.ct, cache_dir=tmp_path / "dev", device=DEVICE, compile=True)
    labels = phantom.labels.array
    for value in (1, 2, 5):  # liver, spleen, vertebral column
        z, y, x = (int(np.median(c)) for c in np.nonzero(labels == value))
        a = similarity_map(cpu, (x, y, z))  # (i, j, k)
        b = similarity_map(dev, (x, y, z))
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.98, value


def test_finetune_steps_on_the_device(tmp_path):
    """Full finetuning with mixed precision and compiled blocks on the device: finite losses, a model card that
    loads on the CPU."""
    from MedDINOv3Core.train.finetune import run_finetuning
    from MedDINOv3Core.weights import load_model

    data = write_phantom_dataset(tmp_path / "data", (0, 1), shape=(4, 40, 40), spacing=(6.0, 6.0, 20.0))
    result = run_finetuning(tiny(tmp_path, data=str(data), device=DEVICE, amp=True, compile=True))
    assert all(np.isfinite(h["loss"]) for h in result.history)
    model, _ = load_model(result.last)
    assert next(model.parameters()).device.type == "cpu"


def test_pretrain_steps_on_the_device(tmp_path):
    """Stage-1 pretraining steps with mixed precision and compiled blocks on the device: finite losses, every step
    recorded."""
    from MedDINOv3Core.train.pretrain import run_pretraining

    data = write_synthetic_ct(tmp_path / "ct", n_volumes=2)
    result = run_pretraining(tiny_config(tmp_path, data, device=DEVICE, amp=True, compile=True))
    assert result.step == 6 and len(result.history) == 6
    assert all(math.isfinite(h["total"]) for h in result.history)


def test_host_copies_arrive_one_batch_later_and_whole():
    """HostCopies on the device: a batch's arrays come back with the next put (CUDA) or at once (CPU), unchanged,
    and flush returns the rest."""
    from MedDINOv3Core.device import HostCopies, select_device

    dev = select_device(DEVICE)
    copies = HostCopies(dev)
    batches = [
        torch.arange(k * 1000, (k + 1) * 1000, device=dev, dtype=torch.float32).reshape(10, 100) for k in range(3)
    ]
    got = []
    for k, b in enumerate(batches):
        ready = copies.put(k, b * 2, (b > 1500).to(torch.uint8))
        expected = ([k - 1] if k else []) if dev.type == "cuda" else [k]
        assert [key for key, _ in ready] == expected
        got += ready
    got += copies.flush()
    assert copies.flush() == [] and [key for key, _ in got] == [0, 1, 2]
    for (_, (doubled, mask)), b in zip(got, batches, strict=True):
        np.testing.assert_array_equal(doubled, b.cpu().numpy() * 2)
        np.testing.assert_array_equal(mask, (b.cpu().numpy() > 1500).astype(np.uint8))

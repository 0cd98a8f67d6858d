"""predict_volume: exact geometry, structures at known physical places, tiling, TTA, streaming, progress, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.inference import (
    InferenceConfig,
    gaussian_importance_map,
    predict_volume,
    sliding_window_logits,
    tile_starts,
)
from MedDINOv3Core.progress import Cancelled, CancelToken
from MedDINOv3Core.segmentation_cards import new_segmentation_card
from MedDINOv3Core.volume_io import read_volume, write_volume
from MedDINOv3Core.weights import build_model, load_model, save_model_card

CPU = torch.device("cpu")


class ThresholdModel(nn.Module):
    """Pointwise: class 1 where the normalised intensity is > 0, class 2 where it is > 3 (no spatial context)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 10 * x, 10 * (x - 3) + 1e-3], dim=1)


def symmetric_conv(seed: int = 0) -> nn.Conv2d:
    """A 3x3 conv whose kernels are symmetric under both flips: mirror-equivariant, so TTA changes nothing."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        w = conv.weight
        conv.weight.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
    return conv


def oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(17), np.deg2rad(9)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    # index i runs (about) along S, j along L, k along -P: a sagittal-like storage order, tilted
    perm = np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], dtype=float)
    return rz @ rx @ perm


def card_for(backbone, labels=("bright", "brighter"), spacing=(), **inference):
    return new_segmentation_card(
        backbone, list(labels), PreprocessConfig.meddinov3_demo(spacing=spacing), InferenceConfig(**inference)
    )


@pytest.fixture
def sphere_volume():
    """Anisotropic, oblique volume with a 300 HU sphere (radius 7 mm) at a known LPS point in -100 HU tissue."""
    shape = (30, 44, 12)  # (z, y, x): k, j, i sizes
    spacing = (3.0, 0.7, 0.9)  # along i (~S), j (~L), k (~P)
    vol = Volume(np.zeros(shape, np.int16), spacing, (-20.0, 35.0, -410.0), oblique_direction().ravel())
    centre_ijk = np.array([6.2, 21.5, 14.0])
    centre = vol.index_to_physical(centre_ijk)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    points = vol.index_to_physical(np.stack([i, j, k], axis=-1).astype(np.float64))
    inside = np.linalg.norm(points - centre, axis=-1) <= 7.0
    vol.array[:] = np.where(inside, 300, -100)
    return vol, centre, inside


def test_geometry_exact_and_structure_at_its_physical_place(sphere_volume, tiny_vit_config, tmp_path):
    vol, centre, inside = sphere_volume
    card = card_for(tiny_vit_config, spacing=(0.5, 0.5), tile_size=(32, 32), batch_size=3)
    pred = predict_volume(ThresholdModel(), card, vol, device="cpu")
    out = pred.labelmap
    assert out.shape == vol.shape and out.array.dtype == np.uint8
    assert out.spacing == vol.spacing and out.origin == vol.origin and out.direction == vol.direction
    assert out.same_geometry(vol)
    seg = out.array == 1
    dice = 2 * (seg & inside).sum() / (seg.sum() + inside.sum())
    assert dice > 0.9
    k, j, i = np.nonzero(seg)
    centroid = out.index_to_physical(np.stack([i, j, k], axis=-1).mean(0))
    assert np.linalg.norm(centroid - centre) < 0.5  # mm
    # written and read back: the geometry survives the file
    again = read_volume(write_volume(out, tmp_path / "seg.nrrd"))
    assert (
        np.abs(
            np.r_[again.spacing, again.origin, again.direction] - np.r_[vol.spacing, vol.origin, vol.direction]
        ).max()
        < 1e-12
    )
    np.testing.assert_array_equal(again.array, out.array)


def test_tiled_equals_whole_slice_when_one_tile_covers_it(tiny_vit_config):
    card = card_for(tiny_vit_config)
    model = build_model(card).eval()
    x = torch.randn(2, 1, 48, 64)
    with torch.inference_mode():
        whole = model(x)
        tiled = sliding_window_logits(model, x, InferenceConfig(tile_size=(48, 64)), 16, CPU)
        padded = sliding_window_logits(model, x[..., :40, :50], InferenceConfig(tile_size=(48, 64)), 16, CPU)
        direct_pad = torch.zeros(2, 1, 48, 64)
        direct_pad[:, :, 4:44, 7:57] = x[..., :40, :50]
        expected = model(direct_pad)[:, :, 4:44, 7:57]
    torch.testing.assert_close(tiled, whole, rtol=0, atol=0)
    torch.testing.assert_close(padded, expected, rtol=1e-6, atol=1e-6)


def test_gaussian_tiling_of_a_pointwise_model_equals_whole_slice():
    model = nn.Conv2d(1, 3, 1)
    x = torch.randn(2, 1, 80, 100)
    config = InferenceConfig(tile_size=(32, 48), step=0.5)
    with torch.inference_mode():
        tiled = sliding_window_logits(model, x, config, 16, CPU)
        whole = model(x)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_tile_layout_and_importance_map():
    assert tile_starts(32, 32, 0.5) == [0]
    # (100 - 32) / 16 = 4.25 strides -> 5 strides of 13.6, as nnU-Net: never more than step x tile apart
    assert tile_starts(100, 32, 0.5) == [0, 14, 27, 41, 54, 68]
    assert tile_starts(96, 32, 0.5) == [0, 16, 32, 48, 64]
    g = gaussian_importance_map((32, 48), 0.125)
    assert g.shape == (32, 48) and g.max() == 1 and g.min() > 0
    assert torch.allclose(g, g.flip(0)) and torch.allclose(g, g.flip(1))
    # sigma = size / 8: exp(-d^2 / (2 sigma^2)) at distance d from the centre
    row = gaussian_importance_map((1, 801), 0.125)[0]
    assert row[400 + 100].item() == pytest.approx(np.exp(-0.5 * (100 / (0.125 * 801)) ** 2), rel=1e-5)


def test_tta_is_exact_on_a_mirror_symmetric_model():
    model = symmetric_conv()
    x = torch.randn(3, 1, 32, 48)
    with torch.inference_mode():
        plain = sliding_window_logits(model, x, InferenceConfig(), 16, CPU)
        tta = sliding_window_logits(model, x, InferenceConfig(tta=True), 16, CPU)
    torch.testing.assert_close(tta, plain, rtol=1e-6, atol=1e-6)


def test_tta_averages_the_four_mirrorings(tiny_vit_config):
    model = build_model(card_for(tiny_vit_config)).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        tta = sliding_window_logits(model, x, InferenceConfig(tta=True), 16, CPU)
        manual = sum(model(x.flip(d)).flip(d) if d else model(x) for d in [(), (-1,), (-2,), (-2, -1)]) / 4
        assert not torch.allclose(model(x), manual)
    torch.testing.assert_close(tta, manual, rtol=1e-5, atol=1e-5)


def test_probabilities_progress_and_batches(sphere_volume, tiny_vit_config):
    vol, _, _ = sphere_volume
    card = card_for(tiny_vit_config, batch_size=4)
    calls = []
    pred = predict_volume(
        ThresholdModel(), card, vol, device="cpu", return_probabilities=True, progress=lambda *a: calls.append(a)
    )
    p = pred.probabilities
    assert p.shape == (3, *vol.shape) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(0), pred.labelmap.array)
    n_axial = vol.shape[2]  # the slice axis is the array's x axis for this direction
    assert [c[1] for c in calls] == [0, 4, 8, 12][: len(calls) - 1] + [n_axial]
    assert all(c[0] == "predict" and c[2] == n_axial for c in calls)
    assert [lab.name for lab in pred.labels] == ["bright", "brighter"]


def test_real_segmenter_through_a_saved_card(sphere_volume, tiny_vit_config, tmp_path):
    vol, _, _ = sphere_volume
    card = card_for(tiny_vit_config, spacing=(0.8, 0.8), tile_size=(32, 32), batch_size=5, tta=True)
    save_model_card(tmp_path / "m", card, build_model(card))
    model, card2 = load_model(tmp_path / "m")
    pred = predict_volume(model, card2, vol, device="cpu", tta=False, batch_size=2)
    assert pred.labelmap.same_geometry(vol)
    assert set(np.unique(pred.labelmap.array)) <= {0, 1, 2}
    assert pred.device == "cpu"


def test_large_label_values_give_uint16(tiny_vit_config):
    labels = [{"value": 300, "name": "a", "color": [1, 0, 0]}, {"value": 2, "name": "b", "color": [0, 1, 0]}]
    card = new_segmentation_card(tiny_vit_config, labels, PreprocessConfig.meddinov3_demo())
    vol = Volume(np.full((2, 16, 16), 500, np.int16))
    pred = predict_volume(ThresholdModel(), card, vol, device="cpu")
    assert pred.labelmap.array.dtype == np.uint16
    assert (pred.labelmap.array == 300).all()


def test_cancel_stops_between_batches(sphere_volume, tiny_vit_config):
    vol, _, _ = sphere_volume
    token = CancelToken()
    seen = []

    def progress(stage, done, total, message=""):
        seen.append(done)
        if done >= 4:
            token.set()

    with pytest.raises(Cancelled):
        predict_volume(
            ThresholdModel(),
            card_for(tiny_vit_config, batch_size=4),
            vol,
            progress=progress,
            cancel=token,
            device="cpu",
        )
    assert seen == [0, 4]


def test_wrong_number_of_classes(tiny_vit_config):
    card = card_for(tiny_vit_config, labels=("only",))
    with pytest.raises(ValueError, match="returned 3 classes but the model card lists 1 labels"):
        predict_volume(ThresholdModel(), card, Volume(np.zeros((1, 16, 16), np.int16)), device="cpu")


@pytest.mark.parametrize("fast", [False, True])
def test_a_failed_prediction_leaves_the_grad_mode_as_it_was(fast, tiny_vit_config):
    """An error inside the batch loop abandons the slice generator; collecting it must not switch inference mode
    on in the thread (later training would silently get no gradients)."""
    import gc

    from MedDINOv3Core.fast import FastConfig

    card = card_for(tiny_vit_config, labels=("only",))
    with pytest.raises(ValueError, match="returned 3 classes"):
        predict_volume(
            ThresholdModel(),
            card,
            Volume(np.zeros((5, 16, 16), np.int16)),
            device="cpu",
            fast=FastConfig() if fast else None,
        )
    gc.collect()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_bad_inference_settings(tiny_vit_config):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        sliding_window_logits(
            nn.Conv2d(1, 2, 1), torch.zeros(1, 1, 40, 40), InferenceConfig(tile_size=(20, 20)), 16, CPU
        )
    for bad, message in [({"step": 0}, "step"), ({"batch_size": 0}, "batch_size"), ({"tile_size": [16]}, "tile_size")]:
        with pytest.raises(ValueError, match=message):
            InferenceConfig.from_dict(bad)
    with pytest.raises(ValueError, match="unknown device"):
        predict_volume(ThresholdModel(), card_for(tiny_vit_config), Volume(np.zeros((1, 16, 16))), device="tpu")


_STREAMING_CHILD = r"""
import json, resource, sys
import numpy as np, torch
from torch import nn
from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.inference import InferenceConfig, predict_volume
from MedDINOv3Core.segmentation_cards import new_segmentation_card
from MedDINOv3Core.models.vit import vit_config

torch.set_num_threads(1)
n = int(sys.argv[1])
card = new_segmentation_card(vit_config("vit_tiny"), [f"c{i}" for i in range(1, 16)], PreprocessConfig.meddinov3_demo(),
                             InferenceConfig(batch_size=4))
volume = Volume(np.random.default_rng(0).integers(-1000, 1000, (n, 256, 256), dtype=np.int16))
predict_volume(nn.Conv2d(1, 16, 1), card, volume, device="cpu")
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "io_mb": (volume.array.nbytes + volume.array.size) / 2**20}))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_slices():
    """200 slices peak at about the memory of 20: only one batch of logits is held (fp32 logits of 200 slices of
    256^2 with 16 classes would add 800 MB)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    peaks = {}
    for n in (20, 200):
        out = subprocess.run(
            [sys.executable, "-c", _STREAMING_CHILD, str(n)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=root,
        ).stdout
        peaks[n] = json.loads(out.strip().splitlines()[-1])
    # input (int16) + output (uint8) necessarily scale with the volume; everything else must not
    grown = (peaks[200]["peak_mb"] - peaks[200]["io_mb"]) - (peaks[20]["peak_mb"] - peaks[20]["io_mb"])
    assert grown < 100, peaks


def test_class_index_is_argmax_and_all_finite_sees_nan_and_both_infinities():
    from MedDINOv3Core.inference import all_finite, class_index

    logits = torch.randn(2, 5, 7, 9)
    logits[0, 1:3, 2, 2] = 10.0  # a tie: the first of the equal maxima wins, as with argmax
    logits[1, :, 4, 4] = 0.0
    assert torch.equal(class_index(logits), logits.argmax(dim=1))
    assert class_index(logits)[0, 2, 2] == 1 and class_index(logits)[1, 4, 4] == 0
    assert bool(all_finite(logits))
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = logits.clone()
        broken[1, 3, 6, 8] = bad
        assert not bool(all_finite(broken))


def test_compile_blocks_compiles_every_block_in_place_and_keeps_the_state_dict(tiny_vit_config):
    from MedDINOv3Core.device import compile_blocks
    from MedDINOv3Core.models.segmenter import Segmenter, SegmenterConfig

    model = Segmenter(tiny_vit_config, SegmenterConfig(3))
    keys = list(model.state_dict())
    assert compile_blocks(model) == tiny_vit_config.depth  # lazy: nothing compiles before a forward
    assert list(model.state_dict()) == keys
    assert all(block._compiled_call_impl is not None for block in model.backbone.blocks)

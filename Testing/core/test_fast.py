"""CPU fast mode (MedDINOv3Core.fast): slice plan, interpolation, body box, RoPE window, and predict_volume(fast=...)
on the embedded trained phantom model against the plain path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDINOv3Core.fast import (
    FastConfig,
    body_box,
    body_patches,
    computed_slices,
    fill_holes,
    interpolate_between,
    quantize_int8,
    rope_window,
    slice_step,
    token_logits,
)
from MedDINOv3Core.resource_files import resource_path


def test_slice_plan_and_interpolation():
    assert slice_step(1.0, 3.0) == 3 and slice_step(2.5, 3.0) == 1 and slice_step(1.0, 0.0) == 1
    assert computed_slices(10, 3) == [0, 3, 6, 9] and computed_slices(8, 3) == [0, 3, 6, 7]
    assert computed_slices(1, 3) == [0] and computed_slices(0, 3) == []
    a, b = torch.zeros(2, 3, 3), torch.full((2, 3, 3), 3.0)
    out = interpolate_between(a, b, 4, 7)
    assert out.shape == (3, 2, 3, 3)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="z_spacing"):
        FastConfig(z_spacing=-1)


def test_body_box_snaps_to_the_patch_grid_with_margin():
    x = torch.zeros(2, 1, 64, 64)
    x[1, 0, 20:30, 33:35] = 1.0
    assert body_box(x, 0.5, 8, 1) == (8, 40, 24, 48)
    assert body_box(x, 0.5, 8, 0) == (16, 32, 32, 40)
    assert body_box(torch.zeros(1, 1, 16, 16), 0.5, 8, 1) is None
    x[0, 0, 0, 63] = 1.0
    assert body_box(x, 0.5, 8, 1) == (0, 40, 24, 64)  # clipped to the frame


def test_body_patches_are_the_patches_with_body_grown_by_the_margin():
    x = torch.zeros(2, 1, 32, 32)
    x[1, 0, 9, 17] = 1.0  # patch (1, 2) of a 4 x 4 grid of 8-px patches
    assert body_patches(x, 0.5, 8, 0).tolist() == [6]
    assert body_patches(x, 0.5, 8, 1).tolist() == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    x[0, 0, 0, 0] = x[0, 0, 31, 31] = 1.0
    assert body_patches(x, 0.5, 8, 2) is None  # every patch: nothing to leave out
    ring = torch.zeros(1, 1, 40, 40)  # a body whose middle patch is air (a lung): a hole, kept
    ring[0, 0, 8:32, 8:32] = 1.0
    ring[0, 0, 16:24, 16:24] = 0.0
    assert body_patches(ring, 0.5, 8, 0).tolist() == [6, 7, 8, 11, 12, 13, 16, 17, 18]
    assert fill_holes(torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 1]], dtype=torch.bool)).sum() == 7  # open: no hole


def test_token_logits_of_every_patch_equal_the_model_and_air_patches_are_background():
    """The Primus decoder maps each token to its own pixels, so running only some patches changes nothing but what
    those patches attend to: with every patch kept the logits are the model's; left-out patches are background."""
    model, _ = _phantom_model()
    x = torch.randn(2, 1, 32, 48)
    with torch.inference_mode():
        assert torch.allclose(token_logits(model, x, torch.arange(24)), model(x), atol=1e-5)
        keep = torch.tensor([0, 7, 8, 23])
        part = token_logits(model, x, keep)
        blocks = part.view(2, -1, 4, 8, 6, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 24, -1, 8, 8)
        dropped = torch.ones(24, dtype=torch.bool)
        dropped[keep] = False
        assert bool((blocks[:, dropped, 0] == 30.0).all()) and bool((blocks[:, dropped, 1:] == 0).all())
        alone = model.decoder.token_logits(model.token_features(x, keep).reshape(8, -1)).view(2, 4, -1, 8, 8)
        assert torch.equal(blocks[:, keep], alone)


def _phantom_model():
    from MedDINOv3Core.weights import load_model

    return load_model(resource_path("models", "meddinov3-phantom-tiny"), device="cpu")


def test_rope_window_of_the_whole_frame_changes_nothing():
    model, _ = _phantom_model()
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        plain = model(x)
        with rope_window(model, (8, 8), (0, 0)):
            windowed = model(x)
        assert torch.equal(plain, windowed)
        with rope_window(model, (16, 16), (4, 4)):  # a crop keeps its place in a larger frame: other positions
            assert not torch.allclose(model(x), plain)
        assert torch.equal(model(x), plain)  # restored


def test_fast_prediction_agrees_with_plain_on_the_trained_phantom_model():
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.inference import predict_volume

    torch.set_num_threads(1)
    model, card = _phantom_model()
    p = make_phantom((24, 128, 128), spacing=(2.8125, 2.8125, 1.0), seed=4)
    plain = predict_volume(model, card, p.ct, device="cpu").labelmap.array
    crop = predict_volume(model, card, p.ct, device="cpu", fast=FastConfig(z_spacing=0, quantize=False))
    fast = predict_volume(model, card, p.ct, device="cpu", fast=FastConfig())
    assert crop.labelmap.array.shape == plain.shape and fast.labelmap.same_geometry(p.ct)
    agree_crop = float((crop.labelmap.array == plain).mean())
    agree_fast = float((fast.labelmap.array == plain).mean())
    assert agree_crop > 0.995, agree_crop
    assert agree_fast > 0.97, agree_fast


def test_int8_quantisation_keeps_qkv_and_stays_close():
    model, _ = _phantom_model()
    q = quantize_int8(model)
    names = {type(m).__name__ for n, m in q.named_modules() if n.endswith("qkv")}
    assert names == {"Linear"}
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        a, b = model(x), q(x)
    rel = float((a - b).abs().max() / a.abs().max())
    assert rel < 0.1, rel
    assert np.isfinite(rel)


def test_fast_extraction_runs_every_third_slice_and_keeps_the_similarity_maps(tmp_path):
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.explore import similarity_map
    from MedDINOv3Core.extraction import extract_features

    torch.set_num_threads(1)
    model, card = _phantom_model()
    p = make_phantom((13, 96, 96), spacing=(3.75, 3.75, 1.0), seed=2)
    plain = extract_features(model, card, p.ct, cache_dir=tmp_path / "plain", layers="multiscale")
    calls = []
    hook = model.backbone.patch_embed.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        fast = extract_features(
            model, card, p.ct, cache_dir=tmp_path / "fast", layers="multiscale", fast=FastConfig(quantize=False)
        )
    finally:
        hook.remove()
    assert sum(calls) == 5  # slices 0, 3, 6, 9, 12 of 13
    assert fast.key["fast"] == {"z_spacing": 3.0, "quantize": False} and "fast" not in plain.key
    f_plain, f_fast = np.asarray(plain.features, np.float32), np.asarray(fast.features, np.float32)
    assert np.allclose(f_fast[[0, 3, 6, 9, 12]], f_plain[[0, 3, 6, 9, 12]], atol=2e-3)
    assert np.allclose(np.linalg.norm(f_fast, axis=-1), 1.0, atol=2e-3)  # interpolated slices renormalised
    assert np.allclose(fast.raw_tokens(0, 1), plain.raw_tokens(0, 1), rtol=1e-2, atol=1e-2)
    for point in [(48, 48, 4), (30, 60, 7), (60, 40, 11)]:
        a, b = similarity_map(plain, point).ravel(), similarity_map(fast, point).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.98, point

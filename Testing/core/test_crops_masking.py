"""Multi-crop views and iBOT block masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDINOv3Core.data.crops import CropConfig, hu_to_unit, make_views, normalize_input
from MedDINOv3Core.data.masking import block_mask, sample_view_masks


def _slice(h=64, w=80):
    yy, xx = np.mgrid[:h, :w]
    hu = np.where((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2 < 1, 40.0, -1000.0)
    return hu_to_unit(hu)


def test_hu_to_unit_clamps():
    out = hu_to_unit(np.array([-3000.0, -1000.0, 0.0, 1000.0, 3000.0]))
    assert np.allclose(out, [0, 0, 0.5, 1, 1])
    assert torch.allclose(hu_to_unit(torch.tensor([0.0])), torch.tensor([0.5]))


def test_views_shapes_and_gram_crop_matches_global():
    cfg = CropConfig(global_sizes=(32,), local_sizes=(16,), n_global=2, n_local=3, blur_p=0.0)
    views = make_views(_slice(), cfg, 32, 16, np.random.default_rng(0), with_gram=True)
    assert views["global"].shape == (2, 3, 32, 32)
    assert views["local"].shape == (3, 3, 16, 16)
    assert views["gram"].shape == (2, 3, 64, 64)
    # The Gram crop is the same box at 2x: pooled back down it matches the global view closely.
    pooled = torch.nn.functional.avg_pool2d(views["gram"], 2)
    assert (pooled - views["global"]).abs().mean() < 0.15
    # Three identical channels, normalised like preprocess's "ct_clip_zscore" (HU in [-1000, 1000]).
    v = views["global"][0]
    assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2])
    hu = v * cfg.norm_std + cfg.norm_mean
    assert hu.min() >= -1000 - 1e-3 and hu.max() <= 1000 + 1e-3


def test_views_reproducible_and_varied():
    cfg = CropConfig(global_sizes=(32,), local_sizes=(16,), n_local=2)
    a = make_views(_slice(), cfg, 32, 16, np.random.default_rng(5))
    b = make_views(_slice(), cfg, 32, 16, np.random.default_rng(5))
    c = make_views(_slice(), cfg, 32, 16, np.random.default_rng(6))
    assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
    assert not torch.equal(a["global"], c["global"])


def test_crop_config_validation():
    with pytest.raises(ValueError, match="scale"):
        CropConfig(global_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="at least one size"):
        CropConfig(local_sizes=())
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        make_views(np.zeros((2, 3, 4)), CropConfig(), 32, 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="norm_std"):
        CropConfig(norm_std=0.0)
    x = normalize_input(torch.full((4, 4), 0.5), CropConfig(in_chans=1))
    assert x.shape == (1, 4, 4) and torch.allclose(x, torch.full_like(x, (0.0 - 65.1084) / 178.0166))


def test_crop_preprocessing_matches_preprocess_module():
    from MedDINOv3Core.data.preprocess import PreprocessConfig

    assert PreprocessConfig.from_dict(CropConfig().preprocessing()) == PreprocessConfig.meddinov3_demo()


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_block_mask_exact_ratio(ratio):
    rng = np.random.default_rng(1)
    mask = block_mask((14, 14), ratio, rng)
    assert mask.shape == (14, 14) and mask.dtype == bool
    assert mask.sum() == round(ratio * 196)


def test_block_mask_is_blocky():
    mask = block_mask((16, 16), 0.4, np.random.default_rng(3))
    # Masked patches have masked neighbours far more often than random scattering would give.
    m = mask.astype(int)
    neighbours = m[1:, :] * m[:-1, :]
    neighbour_rate = neighbours.sum() / max(m[:-1, :].sum(), 1)
    assert neighbour_rate > 0.6
    with pytest.raises(ValueError, match="mask ratio"):
        block_mask((4, 4), 1.5, np.random.default_rng(0))


def test_view_masks_fixed_count_per_sample():
    for seed in range(5):
        masks = sample_view_masks((4, 4), 2, np.random.default_rng(seed), 0.5, (0.1, 0.5))
        assert masks.shape == (2, 16)
        assert (masks.any(axis=1)).sum() == 1

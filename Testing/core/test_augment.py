"""nnU-Net-style augmentations: exact crops without augmentation, label/image alignment under rotation and
scaling, determinism from the generator, statistics kept by gamma, shapes, bad configs."""

from __future__ import annotations

import math

import pytest
import torch

from MedDINOv3Core.data.augment import (
    AugmentConfig,
    augment_intensity,
    gaussian_blur,
    mirror,
    sample_affine,
    warp_patch,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_identity_warp_is_an_exact_crop():
    image = torch.randn(40, 50)
    label = torch.randint(0, 5, (40, 50))
    top, left, h, w = 7, 11, 16, 24
    img, lab = warp_patch(
        image, label, (top + (h - 1) / 2, left + (w - 1) / 2), torch.eye(2, dtype=torch.float64), (h, w)
    )
    assert img.shape == (1, h, w) and lab.shape == (h, w) and lab.dtype == torch.int64
    assert torch.allclose(img[0], image[top : top + h, left : left + w], atol=1e-5)
    assert torch.equal(lab, label[top : top + h, left : left + w])


def test_rotation_by_90_degrees_matches_rot90_and_keeps_labels_aligned():
    image = torch.randn(32, 32)
    label = (image > 0).long()
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # offsets (dy, dx) -> (-dx, dy)
    img, lab = warp_patch(image, label, (15.5, 15.5), rot, (32, 32))
    expected = torch.rot90(image, k=1, dims=(0, 1))
    assert torch.allclose(img[0], expected, atol=1e-5) or torch.allclose(img[0], torch.rot90(image, -1), atol=1e-5)
    assert torch.equal(lab, (img[0] > 0).long())  # labels moved exactly like the image


def test_outside_the_slice_image_repeats_border_and_label_is_background():
    image = torch.full((8, 8), -3.0)
    label = torch.ones(8, 8, dtype=torch.long)
    img, lab = warp_patch(image, label, (3.5, 3.5), torch.eye(2, dtype=torch.float64) * 2.0, (8, 8))
    assert torch.allclose(img, torch.full_like(img, -3.0))
    assert lab[0, 0] == 0 and lab[4, 4] == 1


def test_affine_probabilities_and_scale_range():
    cfg = AugmentConfig(p_rotation=0.0, p_scale=1.0, scale_range=(0.7, 1.4))
    m = sample_affine(500, cfg, _gen())
    scales = torch.sqrt(torch.det(m))
    assert torch.allclose(m[:, 0, 1], torch.zeros(500, dtype=m.dtype))  # no rotation
    assert scales.min() >= 0.7 - 1e-9 and scales.max() <= 1.4 + 1e-9
    none = sample_affine(50, AugmentConfig(enabled=False), _gen())
    assert torch.equal(none, torch.eye(2, dtype=none.dtype).expand(50, 2, 2))
    default = sample_affine(2000, AugmentConfig(), _gen(1))
    changed = (default - torch.eye(2, dtype=default.dtype)).abs().amax((1, 2)) > 1e-9
    assert 0.28 < changed.double().mean() < 0.44  # 1 - 0.8 * 0.8 = 0.36


def test_intensity_augmentation_is_deterministic_and_shape_preserving():
    x = torch.randn(6, 1, 32, 32)
    cfg = AugmentConfig(p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_lowres=1, p_gamma=1, p_gamma_inverted=1)
    a = augment_intensity(x, cfg, _gen(3))
    b = augment_intensity(x, cfg, _gen(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    assert torch.equal(augment_intensity(x, AugmentConfig(enabled=False), _gen()), x)


def test_gamma_keeps_mean_and_std():
    x = torch.randn(4, 1, 24, 24) * 2 + 1
    cfg = AugmentConfig(**{k: 0.0 for k in ("p_noise", "p_blur", "p_brightness", "p_contrast", "p_lowres")})
    cfg = AugmentConfig(**{**cfg.to_dict(), "p_gamma": 1.0, "p_gamma_inverted": 0.0})
    y = augment_intensity(x, cfg, _gen())
    for a, b in zip(x, y):
        assert math.isclose(a.mean().item(), b.mean().item(), abs_tol=1e-4)
        assert math.isclose(a.std().item(), b.std().item(), rel_tol=1e-4)


def test_blur_preserves_constant_and_smooths_impulse():
    const = torch.full((1, 1, 9, 9), 2.5)
    assert torch.allclose(gaussian_blur(const, 1.0), const)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    out = gaussian_blur(impulse, 1.0)
    assert math.isclose(out.sum().item(), 1.0, rel_tol=1e-5) and out.max() < 0.2


def test_mirror_flips_image_and_label_together():
    x = torch.randn(16, 1, 8, 8)
    y = (x[:, 0] > 0).long()
    xm, ym = mirror(x, y, AugmentConfig(p_mirror=0.5), _gen())
    assert torch.equal(ym, (xm[:, 0] > 0).long())
    assert not torch.equal(xm, x)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(p_noise=1.5)
    with pytest.raises(ValueError, match="range"):
        AugmentConfig.from_dict({"scale_range": [1.4, 0.7]})
    with pytest.raises(ValueError, match="unknown option"):
        AugmentConfig.from_dict({"p_elastic": 0.2})

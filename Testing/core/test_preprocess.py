"""The one preprocess function: axial layout for any direction, intensity schemes, in-plane resampling and back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDINOv3Core.data.preprocess import (
    PreprocessConfig,
    axial_orientation,
    ct_statistics,
    prepare_volume,
    resample_inplane,
    restore_to_input,
)
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.volume_io import from_sitk, to_sitk


@pytest.fixture
def ct():
    rng = np.random.default_rng(0)
    array = rng.integers(-1100, 1500, size=(5, 12, 14)).astype(np.int16)
    return Volume(array, (0.8, 0.9, 2.5), (-50.0, 10.0, 100.0))


def relaid(volume: Volume, order, flips) -> Volume:
    """The same physical image stored with permuted / flipped index axes (SimpleITK keeps physical space)."""
    image = sitk.PermuteAxes(to_sitk(volume), list(order))
    image = sitk.Flip(image, list(flips), flipAboutOrigin=False)
    return from_sitk(image)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True), (False, True, False)])
def test_any_storage_order_gives_the_same_axial_slices(ct, order, flips):
    config = PreprocessConfig.meddinov3_demo()
    reference = prepare_volume(ct, config)
    other = relaid(ct, order, flips)
    prepared = prepare_volume(other, config)
    assert prepared.axial_shape == reference.axial_shape
    assert prepared.spacing == reference.spacing
    np.testing.assert_array_equal(prepared.slices(), reference.slices())
    # and the way back lands on the other volume's own layout
    restored = restore_to_input(prepared, prepared.slices())
    np.testing.assert_array_equal(restored, prepared.normalise(other.array))


def test_oblique_direction_picks_nearest_axes():
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    # index axes i, j, k run along (rotated) S, L, -P respectively
    d = rot @ np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], dtype=float)
    axes, flips = axial_orientation(d)
    # array axes: 0 = k (-P), 1 = j (L), 2 = i (S)  ->  axial (S, P, L) = (2, 0, 1), P flipped
    assert axes == (2, 0, 1)
    assert flips == (False, True, False)


def test_axial_view_is_a_writable_view(ct):
    other = relaid(ct, (2, 0, 1), (True, False, False))
    prepared = prepare_volume(other, PreprocessConfig.meddinov3_demo())
    out = np.zeros(other.shape, np.uint8)
    view = prepared.axial_view(out)
    view[1, 2, 3] = 7
    assert out.sum() == 7
    np.testing.assert_array_equal(prepared.from_axial(prepared.axial_view(other.array)), other.array)


def test_ct_demo_scheme_values():
    config = PreprocessConfig.meddinov3_demo()
    v = Volume(np.array([-3000, -1000, 65.1084, 1000, 3000], np.float32).reshape(1, 1, 5))
    x = prepare_volume(v, config).slices()[0, 0]
    lo, hi = (-1000 - 65.1084) / 178.0166, (1000 - 65.1084) / 178.0166
    np.testing.assert_allclose(x, [lo, lo, 0.0, hi, hi], rtol=1e-6, atol=1e-6)
    assert x.dtype == np.float32


def test_nnunet_ct_statistics_and_scheme():
    rng = np.random.default_rng(0)
    fg = rng.normal(50, 30, 100_000)
    fg[:100] = 5000  # outliers beyond the 99.5th percentile get clipped
    config = ct_statistics(fg, spacing=(0.8, 0.8))
    assert config.scheme == "ct_clip_zscore"
    assert config.clip_low == pytest.approx(np.percentile(fg, 0.5))
    assert config.clip_high == pytest.approx(np.percentile(fg, 99.5))
    clipped = np.clip(fg, config.clip_low, config.clip_high)
    assert config.mean == pytest.approx(clipped.mean()) and config.std == pytest.approx(clipped.std())
    v = Volume(fg[:6000].reshape(6, 20, 50).astype(np.float32))
    x = prepare_volume(v, {**config.to_dict(), "spacing": []}).slices()
    expected = (np.clip(v.array, config.clip_low, config.clip_high) - config.mean) / config.std
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nonzero", [False, True])
def test_mri_zscore_per_volume(nonzero):
    rng = np.random.default_rng(3)
    array = rng.gamma(2.0, 100.0, size=(40, 16, 16)).astype(np.float32)
    array[:, :4] = 0
    prepared = prepare_volume(Volume(array), PreprocessConfig.mri_zscore(nonzero=nonzero))
    x = prepared.slices()
    region = x[array != 0] if nonzero else x
    assert region.mean() == pytest.approx(0.0, abs=1e-4)
    assert region.std() == pytest.approx(1.0, abs=1e-4)


def test_inplane_resampling_keeps_field_of_view():
    # a bright square with known physical bounds on a 0.5 mm grid; the model grid is 1.0 mm
    array = np.zeros((2, 40, 60), np.float32)
    array[:, 10:20, 20:40] = 1000.0
    v = Volume(array, (0.5, 0.5, 3.0), (100.0, -40.0, 7.0))
    prepared = prepare_volume(v, PreprocessConfig("none", None, None, None, None, spacing=(1.0, 1.0)))
    assert prepared.native_shape == (40, 60) and prepared.model_shape == (20, 30)
    assert prepared.model_spacing == (1.0, 1.0)
    x = prepared.slices()
    assert x.shape == (2, 20, 30)
    # pixels [10, 20) x [20, 40) at 0.5 mm are pixels [5, 10) x [10, 20) at 1 mm: same physical square
    inside = x[:, 5:10, 10:20]
    np.testing.assert_allclose(inside, 1000.0)
    assert x.sum() == pytest.approx(inside.sum())
    # back to the native grid: nearest labels restore the square exactly
    labels = prepared.labels((array > 0).astype(np.uint8))
    assert labels.shape == (2, 20, 30) and labels[:, 5:10, 10:20].all() and labels.sum() == 2 * 50
    back = restore_to_input(prepared, labels, mode="nearest")
    np.testing.assert_array_equal(back, (array > 0).astype(np.int64))


def test_restore_of_linear_ramp_is_exact_inside():
    ramp = np.tile(np.arange(64, dtype=np.float32), (2, 48, 1))
    v = Volume(ramp, (0.7, 0.7, 1.0))
    prepared = prepare_volume(v, PreprocessConfig("none", None, None, None, None, spacing=(1.4, 1.4)))
    back = restore_to_input(prepared, prepared.slices())
    # bilinear with aligned pixel edges is exact for a linear ramp away from the borders
    np.testing.assert_allclose(back[:, :, 2:-2], ramp[:, :, 2:-2], atol=1e-4)


def test_restore_checks_shapes(ct):
    prepared = prepare_volume(ct, PreprocessConfig.meddinov3_demo(spacing=(1.6, 1.8)))
    with pytest.raises(ValueError, match="in-plane size"):
        prepared.restore(torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"expected \(5, \[C,\] H', W'\)"):
        restore_to_input(prepared, np.zeros((4, *prepared.model_shape)))


def test_resample_inplane_nearest_keeps_integer_dtype():
    lab = torch.arange(16).reshape(1, 1, 4, 4)
    out = resample_inplane(lab, (8, 8), "nearest")
    assert out.dtype == lab.dtype and set(out.unique().tolist()) == set(range(16))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"scheme": "ct_hu"}, "scheme must be one of"),
        ({"scheme": "ct_clip_zscore", "mean": None}, r"needs \['mean'\]"),
        ({"spacing": [1.0]}, "two positive numbers"),
        ({"clip_low": 10.0, "clip_high": 0.0}, "must be below"),
        ({"std": 0.0}, "std must be positive"),
        ({"windowing": 1}, "unknown option"),
    ],
)
def test_bad_configs(data, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig.from_dict(data)


def test_config_round_trip():
    config = PreprocessConfig.meddinov3_demo(spacing=(0.78125, 0.78125))
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["spacing"] == [0.78125, 0.78125]

"""Feature cache: the patch-grid -> voxel-grid mapping against the preprocess module, hashes, headers, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedDINOv3Core.data.preprocess import PreprocessConfig, prepare_volume, restore_to_input
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.feature_cache import (
    FeatureCache,
    FeatureCacheError,
    GridMapping,
    PatchUpsampler,
    bilinear_matrix,
    key_digest,
    read_header,
    volume_hash,
)

# an oblique-ish direction whose axial layout needs a permutation and flips
FLIPPED = (0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@pytest.mark.parametrize(("n_in", "n_out"), [(4, 64), (7, 13), (48, 30), (16, 16), (5, 3)])
def test_bilinear_matrix_matches_torch(n_in, n_out):
    x = torch.randn(1, 1, 1, n_in, dtype=torch.float64)
    ref = F.interpolate(x, size=(1, n_out), mode="bilinear", align_corners=False)[0, 0, 0].numpy()
    np.testing.assert_allclose(bilinear_matrix(n_in, n_out) @ x[0, 0, 0].numpy(), ref, atol=1e-12)


def _mapping(volume: Volume, spacing: tuple[float, ...], scale: int):
    prepared = prepare_volume(volume, PreprocessConfig(spacing=spacing))
    mapping = GridMapping.plan(
        volume.shape, prepared.axes, prepared.flips, prepared.native_shape, prepared.model_shape, scale, 16
    )
    return prepared, mapping


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("spacing", [(), (1.3, 0.7)])
def test_upsampler_equals_interpolate_then_preprocess_restore(scale, spacing):
    volume = Volume(np.zeros((5, 37, 29), np.int16), (0.9, 1.1, 2.0), (3.0, -4.0, 5.0), FLIPPED)
    prepared, mapping = _mapping(volume, spacing, scale)
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((mapping.n_slices, *mapping.grid)).astype(np.float32)
    # reference: bilinear upsampling of the patch map to the padded grid, crop, then the preprocess restore
    (gh, gw), (top, left), (uh, uw) = mapping.grid, mapping.pad, mapping.upsampled_shape
    up = F.interpolate(torch.from_numpy(maps)[:, None].double(), size=(gh * 16, gw * 16), mode="bilinear")
    up = up[:, :, top : top + uh, left : left + uw]
    if scale != 1:  # the model grid the preprocess restore starts from is the (un-upsampled) model grid
        reference = F.interpolate(up, size=prepared.native_shape, mode="bilinear", align_corners=False)
        reference = prepared.from_axial(reference[:, 0].numpy())
    else:
        reference = restore_to_input(prepared, up[:, 0])
    out = np.full(volume.shape, np.nan, np.float32)
    got = PatchUpsampler(mapping).volume_into(maps, out)
    assert got is out and got.shape == volume.shape
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_axial_index_and_view_agree_with_preprocess():
    volume = Volume(np.arange(4 * 6 * 5).reshape(4, 6, 5), direction=FLIPPED)
    prepared, mapping = _mapping(volume, (), 1)
    np.testing.assert_array_equal(mapping.axial_view(volume.array), prepared.axial_view(volume.array))
    zyx = np.array([[1, 2, 3], [3, 5, 0]])
    axial = mapping.to_axial_index(zyx).astype(int)
    view = prepared.axial_view(volume.array)
    for p, a in zip(zyx, axial, strict=True):
        assert view[tuple(a)] == volume.array[tuple(p)]


def test_native_to_patch_finds_the_covering_patch():
    mapping = GridMapping.plan((3, 40, 24), (0, 1, 2), (False,) * 3, (40, 24), (40, 24), 1, 16)
    assert mapping.grid == (3, 2) and mapping.pad == (4, 4)
    assert mapping.native_to_patch(0, 0) == (0, 0)  # padded rows/cols 4..: patch 0
    assert mapping.native_to_patch(11.0, 11.0) == (0, 0)  # padded 15.5 -> patch 0
    assert mapping.native_to_patch(12.0, 12.0) == (1, 1)  # padded 16.5 -> patch 1
    assert mapping.native_to_patch(39, 23) == (2, 1)


def test_volume_hash_sees_voxels_dtype_and_geometry():
    a = np.zeros((4, 8, 8), np.int16)
    base = volume_hash(a, (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    assert base == volume_hash(a.copy(), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    b = a.copy()
    b[3, 7, 7] = 1
    assert volume_hash(b, (1, 1, 1), (0, 0, 0), np.eye(3).ravel()) != base
    assert volume_hash(a.astype(np.int32), (1, 1, 1), (0, 0, 0), np.eye(3).ravel()) != base
    assert volume_hash(a, (1, 1, 1.0001), (0, 0, 0), np.eye(3).ravel()) != base
    assert volume_hash(a, (1, 1, 1), (0, 0, 0.5), np.eye(3).ravel()) != base
    assert volume_hash(a, (1, 1, 1), (0, 0, 0), np.eye(3).ravel(), chunk_bytes=7) == base
    assert key_digest({"a": 1, "b": [2]}) == key_digest({"b": [2], "a": 1})


def test_incomplete_or_foreign_directories_are_not_caches(tmp_path):
    assert read_header(tmp_path / "missing") is None
    (tmp_path / "header.json").write_text(json.dumps({"format": "meddinov3-feature-cache", "version": 1}))
    assert read_header(tmp_path) is None  # not marked complete, no arrays
    with pytest.raises(FeatureCacheError, match="not a complete feature cache"):
        FeatureCache.open(tmp_path)


def test_explore_click_path_imports_no_torch():
    code = (
        "import sys, MedDINOv3Core.explore, MedDINOv3Core.feature_cache; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

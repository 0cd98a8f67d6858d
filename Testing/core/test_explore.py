"""Feature exploration: cache reuse/invalidation, similarity maps, PCA maps, one-click regions (tiny random ViT)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedDINOv3Core.card import ModelCard
from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.data.preprocess import PreprocessConfig, prepare_volume
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.explore import (
    body_mask,
    pca_map,
    points_to_index,
    region_from_similarity,
    similarity_map,
    similarity_patches,
)
from MedDINOv3Core.extraction import extract_features
from MedDINOv3Core.feature_cache import FeatureCache
from MedDINOv3Core.models.vit import VisionTransformer, vit_config
from MedDINOv3Core.progress import Cancelled, CancelToken

OBLIQUE = (0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _random_vit(depth: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(vit_config("vit_tiny", depth=depth)).eval()
    # LayerScale starts near 0, which makes a random ViT almost the identity: give the blocks a real say.
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            p.data.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = _random_vit()
    card = ModelCard("backbone", model.config, name="tiny-random", preprocessing=PreprocessConfig().to_dict())
    phantom = make_phantom((6, 60, 52), spacing=(4.0, 4.5, 6.0), seed=3, direction=OBLIQUE)
    root = tmp_path_factory.mktemp("explore")
    cache = extract_features(model, card, phantom.ct, cache_dir=root / "cache")
    return model, card, phantom, cache, root


def test_cache_layout_and_stored_features(setup):
    model, card, phantom, cache, _ = setup
    assert cache.shape == phantom.ct.shape and cache.features.dtype == np.float16
    assert isinstance(cache.features, np.memmap)
    z, (h, w) = cache.mapping.n_slices, cache.mapping.grid
    assert cache.features.shape == (z, h, w, 64)
    # stored rows are the L2-normalised last-block tokens of the padded, normalised slice
    prepared = prepare_volume(phantom.ct, card.preprocessing)
    (top, left), (uh, uw) = cache.mapping.pad, cache.mapping.upsampled_shape
    x = torch.zeros(1, 3, h * 16, w * 16)
    x[:, :, top : top + uh, left : left + uw] = torch.from_numpy(prepared.slices(2, 3))[:, None]
    with torch.no_grad():
        ref = F.normalize(model.forward_features(x).patch_tokens[0], dim=-1).reshape(h, w, -1).numpy()
    np.testing.assert_allclose(cache.features[2].astype(np.float32), ref, atol=2e-3)
    norms = np.linalg.norm(cache.features.astype(np.float32), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_similarity_is_one_at_the_click_and_symmetric(setup):
    _, _, phantom, cache, _ = setup
    a, b = (20, 30, 2), (40, 12, 4)  # (i, j, k)
    pa = similarity_patches(cache, a)
    pb = similarity_patches(cache, b)
    rows = cache.mapping.to_axial_index(points_to_index(cache, [a, b]))
    (ka, ra, ca), (kb, rb, cb) = [(int(r[0]), *cache.mapping.native_to_patch(r[1], r[2])) for r in rows]
    assert pa[ka, ra, ca] == pytest.approx(1.0, abs=2e-3)
    assert pa.max() <= 1.0 and pa.min() >= -1.0
    assert pa[kb, rb, cb] == pytest.approx(pb[ka, ra, ca], abs=1e-6)
    full = similarity_map(cache, a)
    assert full.dtype == np.float32 and full.shape == phantom.ct.shape
    assert full[a[2], a[1], a[0]] > np.median(full)


def test_points_in_ijk_lps_and_ras_give_the_same_map(setup):
    _, _, phantom, cache, _ = setup
    ijk = np.array([25.0, 33.0, 3.0])
    lps = phantom.ct.index_to_physical(ijk)
    ras = lps * np.array([-1, -1, 1])
    m_ijk = similarity_map(cache, ijk)
    np.testing.assert_array_equal(similarity_map(cache, lps, space="lps"), m_ijk)
    np.testing.assert_array_equal(similarity_map(cache, ras, space="ras"), m_ijk)
    with pytest.raises(ValueError, match="outside the volume"):
        similarity_map(cache, (0, 0, 99))
    with pytest.raises(ValueError, match="space must be one of"):
        similarity_map(cache, ijk, space="xyz")


def test_scope_combine_and_reused_output(setup):
    _, _, _, cache, _ = setup
    a, b = (20, 30, 2), (30, 20, 2)
    buffer = np.empty(cache.shape, np.float32)
    out = similarity_map(cache, a, scope="slice", out=buffer)
    assert out is buffer
    full = similarity_map(cache, a)
    k = int(cache.mapping.to_axial_index(points_to_index(cache, a))[0, 0])
    view = cache.mapping.axial_view(out)
    np.testing.assert_allclose(view[k], cache.mapping.axial_view(full)[k], atol=1e-6)
    assert not np.delete(view, k, axis=0).any()
    pa, pb = similarity_patches(cache, a), similarity_patches(cache, b)
    np.testing.assert_allclose(similarity_patches(cache, [a, b], combine="mean"), (pa + pb) / 2, atol=1e-4)
    np.testing.assert_allclose(similarity_patches(cache, [a, b], combine="max"), np.maximum(pa, pb), atol=1e-4)
    with pytest.raises(ValueError, match="float32 array of shape"):
        similarity_map(cache, a, out=np.empty((2, 2, 2), np.float32))


def test_chunked_float16_path_equals_the_in_memory_path(setup):
    _, _, _, cache, _ = setup
    low = FeatureCache.open(cache.path, memory_limit=0)
    assert low.matrix() is None
    np.testing.assert_allclose(similarity_patches(low, (20, 30, 2)), similarity_patches(cache, (20, 30, 2)), atol=1e-6)


def test_pca_is_deterministic_black_outside_and_on_the_input_grid(setup, tmp_path):
    model, card, phantom, cache, _ = setup
    rgb = pca_map(cache)
    assert rgb.dtype == np.uint8 and rgb.shape == (*phantom.ct.shape, 3)
    np.testing.assert_array_equal(pca_map(cache), rgb)
    mask = body_mask(phantom.ct)
    assert not rgb[~mask].any() and rgb[mask].std() > 10
    # an independent extraction gives the same colours (sign fixing makes them deterministic)
    again = extract_features(model, card, phantom.ct, cache_dir=tmp_path / "again")
    np.testing.assert_array_equal(pca_map(again), rgb)
    out = Volume(rgb[..., 0], phantom.ct.spacing, phantom.ct.origin, phantom.ct.direction)
    assert out.same_geometry(phantom.ct)


def test_cache_is_reused_and_invalidated(setup, tmp_path):
    model, card, phantom, _, _ = setup
    calls = []
    handle = model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        path = tmp_path / "c"
        first = extract_features(model, card, phantom.ct, cache_dir=path)
        n = len(calls)
        assert n > 0
        extract_features(model, card, phantom.ct, cache_dir=path)
        assert len(calls) == n, "an unchanged key must reuse the cache"
        edited = phantom.ct.with_array(phantom.ct.array.copy())
        edited.array[0, 0, 0] += 1
        rebuilt = extract_features(model, card, edited, cache_dir=path)
        assert len(calls) > n and rebuilt.key["volume"] != first.key["volume"]
        assert FeatureCache.open(path).key == rebuilt.key
        n = len(calls)
        fine = extract_features(model, card, edited, cache_dir=path, upsample=2)
        assert len(calls) > n
        assert fine.mapping.grid[0] >= 2 * rebuilt.mapping.grid[0] - 1
        n = len(calls)
        multi = extract_features(model, card, edited, cache_dir=path, layers="multiscale")
        assert len(calls) > n and multi.dim == 2 * 64
        other = ModelCard("backbone", model.config, preprocessing=PreprocessConfig(spacing=(3.0, 3.0)).to_dict())
        n = len(calls)
        extract_features(model, other, edited, cache_dir=path, layers="multiscale")
        assert len(calls) > n
    finally:
        handle.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"], "no temporary directories may be left"


def test_cancel_leaves_no_cache(setup, tmp_path):
    model, card, phantom, _, _ = setup
    token = CancelToken()
    token.set()
    with pytest.raises(Cancelled):
        extract_features(model, card, phantom.ct, cache_dir=tmp_path / "x", cancel=token)
    assert list(tmp_path.iterdir()) == []


def test_segmenter_features_use_its_multiscale_stack(setup, tmp_path):
    from MedDINOv3Core.models.segmenter import Segmenter, SegmenterConfig

    _, card, phantom, _, _ = setup
    seg = Segmenter(vit_config("vit_tiny"), SegmenterConfig(n_classes=3)).eval()
    cache = extract_features(seg, card, phantom.ct, cache_dir=tmp_path / "s")
    assert cache.header["model"]["layers"] == [0, 1, 2, 3] and cache.dim == 4 * 64


def test_region_from_similarity_keeps_the_seeded_component():
    sim = np.zeros((3, 10, 10), np.float32)
    sim[1, 1:4, 1:4] = 0.9
    sim[1, 6:9, 6:9] = 0.95
    region = region_from_similarity(sim, (2, 2, 1), 0.8)  # (i, j, k)
    assert region.sum() == 9 and region[1, 1:4, 1:4].all() and not region[1, 6:9, 6:9].any()
    assert not region_from_similarity(sim, (0, 0, 0), 0.8).any()
    vol = Volume(np.zeros((3, 10, 10)), (2.0, 2.0, 3.0), (10.0, 0.0, 0.0))
    lps = vol.index_to_physical((7, 7, 1))
    assert region_from_similarity(sim, lps, 0.8, space="lps", geometry=vol)[1, 7, 7]


def test_bad_arguments_are_refused(setup, tmp_path):
    model, card, phantom, cache, _ = setup
    with pytest.raises(ValueError, match="upsample must be 1 or 2"):
        extract_features(model, card, phantom.ct, cache_dir=tmp_path / "u", upsample=3)
    with pytest.raises(ValueError, match="out of range"):
        extract_features(model, card, phantom.ct, cache_dir=tmp_path / "u", layers=[7])
    with pytest.raises(ValueError, match="scope must be one of"):
        similarity_map(cache, (1, 1, 1), scope="all")


# --------------------------------------------------------------------------------------------- real head CT (slow)


def head_ct_regions(ct: np.ndarray) -> dict[str, np.ndarray]:
    """Brain (the largest 3D component of 0..70 HU after an opening), bone (> 300 HU in the head), outside air."""
    from scipy import ndimage

    head = body_mask(Volume(ct))
    soft = ndimage.binary_opening((ct > 0) & (ct < 70), iterations=3)
    labels, _ = ndimage.label(soft)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return {
        "brain": labels == sizes.argmax(),
        "bone": (ct > 300) & head,
        "air": ~ndimage.binary_dilation(head, iterations=5),
    }


# No pretrained ViT weights can be downloaded here, and a randomly initialised ViT cannot separate brain from air
# (a constant patch embeds as c * v, so air and soft tissue, both below the normalisation mean, point the same way).
# The test therefore uses a model card trained by this project: by default the embedded demo model
# (Resources/models/meddinov3-phantom-tiny, a tiny segmenter trained on phantoms by `python -m training finetune`,
# see its RECIPE.md); a card placed in Testing/.data/models/explore-backbone (git-ignored) takes precedence.
# The separation it shows is largely intensity-driven: it proves the maps are computed and placed correctly, not the
# anatomical quality of MedDINOv3 features.
_LOCAL_CARD = Path(__file__).resolve().parents[1] / ".data" / "models" / "explore-backbone"
EXPLORE_CARD = (
    _LOCAL_CARD
    if _LOCAL_CARD.is_dir()
    else Path(__file__).resolve().parents[2] / "Resources" / "models" / ("meddinov3-phantom-tiny")
)


@pytest.mark.slow
def test_real_head_ct_click_in_the_brain_lights_up_the_brain(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from data_fetch import DataUnavailable, fetch_cranium_ct

    from MedDINOv3Core.card import is_model_card
    from MedDINOv3Core.volume_io import read_volume
    from MedDINOv3Core.weights import load_model

    if not is_model_card(EXPLORE_CARD):
        pytest.skip(f"no trained model card at {EXPLORE_CARD} (see the comment above this test)")
    try:
        ct = read_volume(fetch_cranium_ct())
    except DataUnavailable as exc:
        pytest.skip(str(exc))
    model, card = load_model(EXPLORE_CARD)
    cache = extract_features(model, card, ct, cache_dir=tmp_path / "cache", batch_size=8)  # default layers
    regions = head_ct_regions(ct.array)
    click = (82, 108, 60)  # (i, j, k): inside the brain, beside the lateral ventricles
    assert regions["brain"][click[2], click[1], click[0]]
    sim = similarity_map(cache, click)
    means = {name: float(sim[mask].mean()) for name, mask in regions.items()}
    print("mean similarity to a click in the brain:", {k: round(v, 3) for k, v in means.items()})
    assert means["brain"] > means["bone"] and means["brain"] > means["air"], means

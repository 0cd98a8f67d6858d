"""Cases ``extract`` (feature extraction, plain vs fast), ``click`` (a whole-volume similarity map vs one pass over
the output array) and ``pca`` (the PCA colour map of a cached volume) of MedDINOv3Core.explore (issues 8, 19)."""

from __future__ import annotations

import inspect
import shutil
import tempfile
from pathlib import Path

import numpy as np

from training.bench import BenchSettings, Case, Prepared
from training.bench.common import phantom_ct, size, slices, vit_config


def synthetic_cache(path: Path, n_slices: int, side: int, dim: int, seed: int = 0):
    """A complete cache of random unit features for a (n_slices, side, side) identity-geometry volume (the click and
    PCA costs depend only on the sizes)."""
    from MedDINOv3Core.explore import patch_fraction
    from MedDINOv3Core.feature_cache import CacheWriter, FeatureCache, GridMapping

    mapping = GridMapping.plan((n_slices, side, side), (0, 1, 2), (False,) * 3, (side, side), (side, side), 1, 16)
    writer = CacheWriter(path, (n_slices, *mapping.grid, dim))
    rng = np.random.default_rng(seed)
    for k in range(n_slices):
        f = rng.standard_normal((*mapping.grid, dim), dtype=np.float32)
        writer.features[k] = (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float16)
    yy, xx = np.mgrid[:side, :side]
    disc = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (0.4 * side) ** 2
    mask = np.broadcast_to(disc, (n_slices, side, side))
    writer.foreground[:] = patch_fraction(mapping, mask)
    header = {
        "key": {"synthetic": True, "seed": seed},
        "grid": mapping.to_dict(),
        "geometry": {"spacing": (0.8, 0.8, 2.0), "origin": (0.0, 0.0, 0.0), "direction": np.eye(3).ravel().tolist()},
        "model": {"name": "synthetic", "layers": [], "dim": dim},
    }
    return FeatureCache.open(writer.commit(header, mask))


def _cache_setup(settings: BenchSettings):
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    dim = 32 if settings.toy else 768
    cache = synthetic_cache(tmp / "cache", slices(settings), size(settings), dim)
    return tmp, cache


def _click_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.explore import similarity_map

    tmp, cache = _cache_setup(settings)
    out = np.empty(cache.shape, np.float32)
    rng = np.random.default_rng(1)
    n, s = slices(settings), size(settings)
    clicks = iter([tuple(int(v) for v in rng.integers(0, [s, s, n])) for _ in range(4 * settings.repeats + 8)])
    return Prepared(
        {
            "fill_output": lambda: out.fill(0.0),
            "click_volume": lambda: similarity_map(cache, next(clicks), out=out),
            "click_slice": lambda: similarity_map(cache, next(clicks), scope="slice", out=out),
        },
        reference="fill_output",
        settings={"cache": [n, s, s], "dim": cache.dim if hasattr(cache, "dim") else None},
        warmup=lambda: similarity_map(cache, next(clicks), out=out),  # the first click makes the float32 copy
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
    )


def _pca_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.explore import pca_map, similarity_map

    tmp, cache = _cache_setup(settings)
    out = np.empty(cache.shape, np.float32)
    return Prepared(
        {"click_volume": lambda: similarity_map(cache, (1, 1, 0), out=out), "pca": lambda: pca_map(cache)},
        reference="click_volume",
        settings={"cache": list(cache.shape)},
        warmup=lambda: similarity_map(cache, (0, 0, 0), out=out),
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
    )


def _extract_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.explore import similarity_map
    from MedDINOv3Core.extraction import extract_features
    from MedDINOv3Core.models.vit import VisionTransformer
    from MedDINOv3Core.weights import load_model

    if settings.model:
        model, card = load_model(settings.model, device="cpu")
    else:
        from MedDINOv3Core.card import ModelCard
        from MedDINOv3Core.data.preprocess import PreprocessConfig

        model = VisionTransformer(vit_config(settings)).eval()
        card = ModelCard("backbone", model.config, preprocessing=PreprocessConfig.meddinov3_demo().to_dict())
    ct = phantom_ct(settings).ct
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    has_fast = "fast" in inspect.signature(extract_features).parameters
    counter = iter(range(10**6))

    def run(fast: bool):
        def call():  # a new cache directory every call: nothing is reused
            options = {"fast": True} if fast else {}
            folder = tmp / f"{'fast' if fast else 'plain'}-{next(counter)}"
            cache = extract_features(
                model, card, ct, cache_dir=folder, batch_size=settings.batch_size, device=settings.device, **options
            )
            return cache

        return call

    variants = {"plain": run(False)}
    if has_fast:
        variants["fast"] = run(True)

    def metrics(outputs, medians):
        if "fast" not in outputs:
            return {}
        rng = np.random.default_rng(2)
        body = np.argwhere(ct.array > -500)
        corrs = []
        for idx in rng.choice(len(body), size=5, replace=False):
            z, y, x = (int(v) for v in body[idx])
            a = similarity_map(outputs["plain"], (x, y, z))
            b = similarity_map(outputs["fast"], (x, y, z))
            corrs.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
        return {"similarity_map_correlation_fast_vs_plain": [round(c, 4) for c in corrs], "min": round(min(corrs), 4)}

    return Prepared(
        variants,
        reference="plain",
        settings={"volume": list(ct.shape), "spacing_xyz_mm": list(ct.spacing), "model": card.name},
        metrics=metrics,
        per_item=ct.shape[0],
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
    )


CASES = (
    Case("extract", "feature extraction into a cache: plain vs fast, similarity-map correlation", _extract_setup),
    Case("click", "a whole-volume similarity click vs one fill of the output array", _click_setup),
    Case("pca", "the PCA colour map of a cached volume vs a whole-volume click", _pca_setup),
)

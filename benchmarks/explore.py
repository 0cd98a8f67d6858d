"""Benchmark feature exploration on this machine: extraction slices/s, click latency and PCA over a cached volume.

    .venv/bin/python benchmarks/explore.py [--slices 100] [--size 512] [--dim 768] [--extract-slices 8]
        [--preset vit_base] [--threads 2] [--json out.json]

- extraction: ``extract_features`` of a random-weights backbone (``--preset``) over ``--extract-slices`` slices of
  ``--size``^2 (timing does not depend on the weights);
- clicks: a cache of ``--slices`` x ``--size``^2 with ``--dim`` features (random unit vectors written through the
  real CacheWriter: the click cost depends only on the sizes), opened with FeatureCache.open; times the first click
  (which makes the in-memory float32 copy), the median of later whole-volume clicks, slice-scope clicks, the chunked
  float16 path (no in-memory copy), and ``pca_map``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedDINOv3Core.data.volume import Volume  # noqa: E402
from MedDINOv3Core.explore import pca_map, similarity_map  # noqa: E402
from MedDINOv3Core.feature_cache import CacheWriter, FeatureCache, GridMapping  # noqa: E402


def synthetic_cache(path: Path, slices: int, size: int, dim: int, seed: int = 0) -> FeatureCache:
    """A complete cache of random unit features for a (slices, size, size) identity-geometry volume."""
    mapping = GridMapping.plan((slices, size, size), (0, 1, 2), (False,) * 3, (size, size), (size, size), 1, 16)
    writer = CacheWriter(path, (slices, *mapping.grid, dim))
    rng = np.random.default_rng(seed)
    for k in range(slices):
        f = rng.standard_normal((*mapping.grid, dim), dtype=np.float32)
        writer.features[k] = (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float16)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    mask = np.broadcast_to(disc, (slices, size, size))
    from MedDINOv3Core.explore import patch_fraction

    writer.foreground[:] = patch_fraction(mapping, mask)
    header = {
        "key": {"synthetic": True, "seed": seed},
        "grid": mapping.to_dict(),
        "geometry": {"spacing": (0.8, 0.8, 2.0), "origin": (0.0, 0.0, 0.0), "direction": np.eye(3).ravel().tolist()},
        "model": {"name": "synthetic", "layers": [], "dim": dim},
    }
    return FeatureCache.open(writer.commit(header, mask))


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_clicks(args, results: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = synthetic_cache(Path(tmp) / "cache", args.slices, args.size, args.dim)
        results["cache_write_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cache = FeatureCache.open(cache.path)
        results["open_s"] = time.perf_counter() - t
        out = np.empty(cache.shape, np.float32)
        rng = np.random.default_rng(1)
        clicks = [tuple(int(v) for v in rng.integers(0, [args.size, args.size, args.slices])) for _ in range(50)]
        it = iter(clicks)
        # baseline on this machine right now: one pass writing the output array (a click can hardly beat it)
        results["fill_output_ms_median"] = 1000 * statistics.median(timed(lambda: out.fill(0.0), args.repeat))
        results["first_click_s"] = timed(lambda: similarity_map(cache, next(it), out=out), 1)[0]
        volume = timed(lambda: similarity_map(cache, next(it), out=out), args.repeat)
        results["click_volume_ms_median"] = 1000 * statistics.median(volume)
        results["click_volume_ms_min"] = 1000 * min(volume)
        results["click_volume_over_fill"] = results["click_volume_ms_median"] / results["fill_output_ms_median"]
        sl = timed(lambda: similarity_map(cache, next(it), scope="slice", out=out), args.repeat)
        results["click_slice_ms_median"] = 1000 * statistics.median(sl)
        # the two halves of a whole-volume click
        from MedDINOv3Core.explore import similarity_patches

        patches = similarity_patches(cache, clicks[0])
        results["click_similarity_only_ms"] = 1000 * statistics.median(
            timed(lambda: similarity_patches(cache, next(it)), args.repeat)
        )
        results["click_upsample_only_ms"] = 1000 * statistics.median(
            timed(lambda: cache.upsampler.volume_into(patches, out), args.repeat)
        )
        low = FeatureCache.open(cache.path, memory_limit=0)
        results["click_volume_float16_chunked_ms"] = 1000 * statistics.median(
            timed(lambda: similarity_map(low, next(it), out=out), 3)
        )
        results["pca_s"] = statistics.median(timed(lambda: pca_map(cache), 3))


def bench_extraction(args, results: dict) -> None:
    import torch

    from MedDINOv3Core.data.preprocess import PreprocessConfig
    from MedDINOv3Core.explore import extract_features
    from MedDINOv3Core.models.vit import VisionTransformer, vit_config
    from MedDINOv3Core.weights import ModelCard

    torch.manual_seed(0)
    model = VisionTransformer(vit_config(args.preset)).eval()
    card = ModelCard("backbone", model.config, preprocessing=PreprocessConfig().to_dict())
    rng = np.random.default_rng(0)
    ct = Volume(rng.normal(0, 300, (args.extract_slices, args.size, args.size)).astype(np.int16))
    with tempfile.TemporaryDirectory() as tmp:
        for layers in ("last", "multiscale"):
            t = time.perf_counter()
            extract_features(
                model, card, ct, cache_dir=Path(tmp) / layers, layers=layers, batch_size=args.batch_size, device="cpu"
            )
            seconds = time.perf_counter() - t
            results[f"extract_{layers}_slices_per_s"] = args.extract_slices / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--extract-slices", type=int, default=8, help="0 skips the extraction benchmark")
    parser.add_argument("--preset", default="vit_base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results: dict = {k: v for k, v in vars(args).items() if k != "json"}
    bench_clicks(args, results)
    if args.extract_slices:
        import torch

        torch.set_num_threads(args.threads)
        bench_extraction(args, results)
    for k, v in results.items():
        print(f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

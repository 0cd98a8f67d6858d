"""Benchmark a similarity click through the Slicer logic against the core computation alone, side by side.

    .venv/bin/python benchmarks/slicer_click.py [--slices 100] [--size 512] [--dim 768] [--repeat 20] [--json out.json]

A real MRML scene from slicer-core holds a (slices, size, size) CT volume node; a feature cache of random unit
features for that exact geometry (``synthetic_cache`` of training/bench/case_explore.py: the cost depends only on
the sizes) is attached with ``MedDINOv3Logic.attach_features``. Then, alternating in one process over the same
random clicks:

- core: ``MedDINOv3Core.explore.similarity_map`` into a reused float32 buffer (what every click must compute);
- logic: ``MedDINOv3Logic.show_similarity`` (RAS -> LPS, the same map, and the update of the ONE overlay node:
  array copy into the node's image data, window/level, Modified events), i.e. what a click in Slicer costs
  beyond rendering.

Reports the median of each, the overhead in ms and the ratio logic / core. Needs slicer-core (CPython 3.11 x86_64).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "MedDINOv3Slicer"), str(ROOT / "benchmarks")]

from MedDINOv3Core.data.volume import Volume  # noqa: E402
from MedDINOv3Core.explore import similarity_map  # noqa: E402
from training.bench.case_explore import synthetic_cache  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    import slicer

    from MedDINOv3SlicerLib.geometry import add_volume_node, ijk_to_ras_array
    from MedDINOv3SlicerLib.logic import MedDINOv3Logic

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    shape = (args.slices, args.size, args.size)
    ct = Volume(np.zeros(shape, np.int16), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0))  # the synthetic cache's geometry
    node = add_volume_node(scene, ct, "CT")
    with tempfile.TemporaryDirectory() as tmp:
        cache = synthetic_cache(Path(tmp) / "cache", *shape, args.dim)
        logic = MedDINOv3Logic(scene, work_dir=Path(tmp) / "work", user_dir=Path(tmp) / "user")
        cache = logic.attach_features(node, cache.path)
        rng = np.random.default_rng(1)
        clicks = [
            tuple(int(v) for v in rng.integers(0, [args.size, args.size, args.slices])) for _ in range(args.repeat)
        ]
        ijk_to_ras = ijk_to_ras_array(ct)
        out = np.empty(shape, np.float32)
        similarity_map(cache, clicks[0], out=out)  # first click: the in-memory float32 copy of the cache
        logic.show_similarity(node, (ijk_to_ras @ [*clicks[0], 1.0])[:3])  # creates the overlay node
        core, through_logic = [], []
        for ijk in clicks:
            t = time.perf_counter()
            similarity_map(cache, ijk, out=out)
            core.append(time.perf_counter() - t)
            ras = (ijk_to_ras @ [*ijk, 1.0])[:3]
            t = time.perf_counter()
            logic.show_similarity(node, ras)
            through_logic.append(time.perf_counter() - t)
        logic.cleanup()
    result = {
        "volume": list(shape),
        "dim": args.dim,
        "clicks": args.repeat,
        "core_median_ms": 1000 * statistics.median(core),
        "logic_median_ms": 1000 * statistics.median(through_logic),
    }
    result["overhead_ms"] = result["logic_median_ms"] - result["core_median_ms"]
    result["ratio_logic_over_core"] = result["logic_median_ms"] / result["core_median_ms"]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

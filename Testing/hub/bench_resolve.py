"""Time MedDINOv3Core.hub.resolve_model for a ViT-B/16-sized MedDINOv3 teacher checkpoint (random weights, the
released file's layout) served by the loopback Hub: first call (download + SHA-256 + conversion) against later calls
(cached: no request, no hashing, the converted card reused).

    .venv/bin/python Testing/hub/bench_resolve.py [--repeat 5]

Prints one JSON object. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_hub import FakeHub, FakeRepo, hub_env, run_client  # noqa: E402

CLIENT = r"""
import json, sys, time
t0 = time.perf_counter()
import torch  # what every caller (predict, Slicer jobs) has imported anyway
from huggingface_hub import hf_hub_download, try_to_load_from_cache
import MedDINOv3Core.weights
from MedDINOv3Core.hub import resolve_model
t1 = time.perf_counter()
path = resolve_model("vitb")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "resolve_s": t2 - t1, "path": str(path)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="cached resolves to time")
    args = parser.parse_args()
    from MedDINOv3Core.models.vit import VisionTransformer, vit_config

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = vit_config("vit_base").replace(qkv_bias="none", norm_eps=1e-6, rope_dtype="bf16")
        teacher = {f"backbone.{k}": v for k, v in VisionTransformer(config).state_dict().items()}
        torch.save({"teacher": teacher}, tmp / "model.pth")
        data = (tmp / "model.pth").read_bytes()
        registry = tmp / "models.json"
        entry = {"repo_id": "bench/vitb", "files": ["model.pth"], "weights": "model.pth", "task": "backbone",
                 "format": "meddinov3_teacher", "license": "apache-2.0", "description": "ViT-B/16 teacher"}  # fmt: skip
        registry.write_text(json.dumps({"format_version": 1, "models": {"vitb": entry}}))
        with FakeHub({"bench/vitb": FakeRepo({"model.pth": data})}) as hub:
            env = hub_env(hub, tmp, registry)
            runs = []
            for _ in range(1 + args.repeat):
                n = len(hub.requests)
                proc = run_client(CLIENT, env)
                if proc.returncode:
                    raise SystemExit(proc.stderr)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result["requests"] = len(hub.requests) - n
                runs.append(result)
    cached = sorted(r["resolve_s"] for r in runs[1:])
    print(
        json.dumps(
            {
                "file_mb": round(len(data) / 2**20, 1),
                "first_resolve_s": round(runs[0]["resolve_s"], 3),
                "first_requests": runs[0]["requests"],
                "cached_resolve_s_median": round(cached[len(cached) // 2], 4),
                "cached_requests": [r["requests"] for r in runs[1:]],
                "import_s_median": round(sorted(r["import_s"] for r in runs)[len(runs) // 2], 3),
            }
        )
    )


if __name__ == "__main__":
    main()

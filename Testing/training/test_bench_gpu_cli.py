"""`python -m training bench` on the GPU (issue 19): every case at toy size on CUDA, the device named, its memory
reported.

Marked ``gpu`` and skipped where CUDA is not available, like Testing/core/test_gpu.py;
``MEDDINOV3_TEST_DEVICE=cpu`` runs it on the CPU, which checks the test itself on machines without a GPU.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

DEVICE = os.environ.get("MEDDINOV3_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_every_benchmark_case_runs_on_the_device(tmp_path):
    """The harness on the device: every case at toy size, the device named, its memory reported."""
    from training.bench import all_cases
    from training.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", *sorted(all_cases()), "--toy", "--repeats", "1", "--device", DEVICE, "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    for r in results:
        if DEVICE.startswith("cuda"):
            assert r["machine"]["gpu"], r["case"]
            assert all(row["cuda_max_allocated_mb"] is not None for row in r["variants"].values()), r["case"]

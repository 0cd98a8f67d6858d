"""Shared test set-up: offline Hugging Face, deterministic torch, a tiny backbone config, the dciodvfy validator."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Must happen before huggingface_hub is imported anywhere: the Hub cannot be reached from CI machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_vit_config():
    from MedDINOv3Core.models.vit import vit_config

    return vit_config("vit_tiny")


@pytest.fixture
def dciodvfy():
    """``check(path) -> list of error lines`` from dicom3tools' dciodvfy (skips when it is not installed)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")

    def check(path: Path) -> list[str]:
        result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]

    return check

"""Shared test set-up: offline Hugging Face, deterministic torch, a tiny backbone config."""

from __future__ import annotations

import os

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

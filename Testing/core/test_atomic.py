"""Atomic outputs: complete or absent, never half-written, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from MedDINOv3Core.atomic import atomic_directory, atomic_files, atomic_path, replace_directory, write_json, write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_file_replaced_only_on_success_with_umask_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        target = write_text(tmp_path / "a.txt", "one")
        assert target.read_text(encoding="utf-8") == "one" and _mode(target) == 0o644  # not mkstemp's private 0600
        with pytest.raises(RuntimeError):
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                raise RuntimeError("writer failed")
        assert target.read_text(encoding="utf-8") == "one"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
        write_json(tmp_path / "b.json", {"x": 1})
        assert (tmp_path / "b.json").read_text(encoding="utf-8") == '{\n  "x": 1\n}\n'
    finally:
        os.umask(old_umask)


def test_directory_replaced_only_on_success(tmp_path):
    target = tmp_path / "card"
    with atomic_directory(target) as tmp:
        (tmp / "f").write_text("v1")
    assert (target / "f").read_text(encoding="utf-8") == "v1" and _mode(target) & 0o055 == 0o055
    with pytest.raises(ValueError):
        with atomic_directory(target) as tmp:
            (tmp / "f").write_text("v2")
            raise ValueError("stop")
    assert (target / "f").read_text(encoding="utf-8") == "v1"
    with atomic_directory(target) as tmp:
        (tmp / "g").write_text("v3")
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card"]


def test_companion_files_renamed_main_file_last(tmp_path):
    target = tmp_path / "img.mhd"
    with atomic_files(target) as tmp:
        (tmp / "img.mhd").write_text("header")
        (tmp / "img.zraw").write_text("data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.mhd", "img.zraw"]
    with pytest.raises(RuntimeError):
        with atomic_files(target) as tmp:
            (tmp / "img.mhd").write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text(encoding="utf-8") == "header"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.mhd", "img.zraw"]


def test_replace_directory_swaps_a_filled_folder(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "old").write_text("v1")
    tmp = tmp_path / ".cache.tmp"
    tmp.mkdir()
    (tmp / "new").write_text("v2")
    assert replace_directory(tmp, target) == target
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_shared_outputs_get_umask_permissions(tmp_path):
    """A model card (safetensors writes model.safetensors 0600) and a feature cache (a mkdtemp folder, 0700) end up
    0644 files in 0755 folders under umask 022, like any new file."""
    import numpy as np
    import torch

    from MedDINOv3Core.card import load_model_card
    from MedDINOv3Core.feature_cache import CacheWriter
    from MedDINOv3Core.resource_files import resource_path
    from MedDINOv3Core.weights import save_model_card

    old_umask = os.umask(0o022)
    try:
        card = load_model_card(resource_path("models", "meddinov3-phantom-tiny"))
        card_dir = save_model_card(tmp_path / "card", card, {"w": torch.zeros(2)}, extra_files={"README.md": "x"})
        writer = CacheWriter(tmp_path / "cache", (1, 2, 2, 3))
        cache_dir = writer.commit({}, np.zeros((1, 2, 2)))
        for folder in (card_dir, cache_dir):
            assert _mode(folder) == 0o755, folder
            files = sorted(folder.iterdir())
            assert files and {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}
    finally:
        os.umask(old_umask)

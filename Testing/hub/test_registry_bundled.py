"""Bundled registry entries: model cards shipped with the project, selectable by name, never downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from MedDINOv3Core.hub import ModelNotFoundError, list_models, resolve_model
from MedDINOv3Core.registry import Registry, RegistryError, load_registry
from MedDINOv3Core.weights import load_model


def test_embedded_demo_model_resolves_by_name_without_network():
    registry = load_registry()
    entry = registry["meddinov3-phantom-tiny"]
    assert entry.bundled and entry.repo_id == "" and entry.task == "segmentation"
    folder = (Path(registry.source).parent / entry.path).resolve()
    path = resolve_model("meddinov3-phantom-tiny")
    assert path.resolve() == folder
    model, card = load_model(path)
    assert card.name == "meddinov3-phantom-tiny" and [lab["name"] for lab in card.labels] == [
        lab["name"] for lab in entry.labels
    ]
    status = {s.entry.name: s for s in list_models()}["meddinov3-phantom-tiny"]
    assert status.cached and status.card.resolve() == folder


def _registry(tmp_path, entry) -> Registry:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"format_version": 1, "models": {"mine": entry}}), encoding="utf-8")
    return load_registry(path)


def test_bundled_entry_bad_inputs(tmp_path):
    base = {"path": "cards/mine", "task": "backbone", "license": "apache-2.0", "description": "x"}
    with pytest.raises(RegistryError, match=r"takes only .*remove \['repo_id'\]"):
        _registry(tmp_path, {**base, "repo_id": "org/name"})
    with pytest.raises(RegistryError, match="path: a relative folder name"):
        _registry(tmp_path, {**base, "path": str(tmp_path.resolve())})
    with pytest.raises(RegistryError, match=r"missing required key\(s\) \['license'\]"):
        _registry(tmp_path, {k: v for k, v in base.items() if k != "license"})
    registry = _registry(tmp_path, base)
    assert registry["mine"].path == str((tmp_path / "cards" / "mine").resolve())
    with pytest.raises(ModelNotFoundError, match="bundled model 'mine' is missing its folder"):
        resolve_model("mine", registry=registry)

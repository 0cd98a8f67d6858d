"""Packaging: the wheel carries every package, the recipes, the registry and the embedded demo model, and an
installed copy (not the checkout) finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_listed_packages_match_the_source_tree():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for top in ("MedDINOv3Core", "training")
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) | any(d.glob("*.yaml"))
    }
    resources = {name for name in listed if name.startswith("MedDINOv3Core.Resources")}
    assert listed - resources == on_disk, "pyproject [tool.setuptools] packages must list every package folder"
    assert config["package-dir"] == {"MedDINOv3Core.Resources": "Resources"}


@pytest.mark.slow
def test_installed_wheel_finds_registry_and_demo_model(tmp_path: Path):
    pytest.importorskip("setuptools", minversion="77")
    # build from a copy: setuptools writes build/ and *.egg-info into the source folder
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "Testing", "benchmarks", "build", "dist", "*.egg-info", "__pycache__", "*_out")
    shutil.copytree(ROOT, src, ignore=skip)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)], check=True)
    (wheel,) = wheels.glob("meddinov3-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "MedDINOv3Core/Resources/models.json",
        "MedDINOv3Core/Resources/models.schema.json",
        "MedDINOv3Core/Resources/models/meddinov3-phantom-tiny/model.safetensors",
        "MedDINOv3Core/Resources/models/meddinov3-phantom-tiny/config.json",
        "training/configs/finetune_tiny_cpu.yaml",
        "training/commands/demo.py",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("Testing/", "benchmarks/")) for n in names)

    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    probe = (
        "import MedDINOv3Core, training.demo as d; from MedDINOv3Core.registry import load_registry;"
        "from MedDINOv3Core.card import load_model_card;"
        "print(MedDINOv3Core.__file__); print(load_registry().source);"
        "print(load_model_card(d.default_model()).name)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MEDDINOV3_REGISTRY"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0].startswith(str(target)), out  # the installed copy, not the checkout
    assert out[1] == str(target / "MedDINOv3Core" / "Resources" / "models.json")
    assert out[2] == "meddinov3-phantom-tiny"
    listing = subprocess.run(
        [sys.executable, "-m", "training", "models"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    assert "meddinov3-phantom-tiny" in listing.stdout

"""Shared test set-up: offline Hugging Face, deterministic torch, a tiny backbone config, the dciodvfy validator, and
a real MRML scene from slicer-core for the Slicer module's tests (MedDINOv3Slicer on sys.path for its Lib)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

# Must happen before huggingface_hub is imported anywhere: the Hub cannot be reached from CI machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "MedDINOv3Slicer") not in sys.path:
    sys.path.insert(0, str(ROOT / "MedDINOv3Slicer"))

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


@pytest.fixture
def scene():
    """A fresh vtkMRMLScene (slicer-core: CPython 3.11 x86_64 only), also set as ``slicer.mrmlScene`` (some slicer.util
    helpers need it), restored after."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core is not installed (CPython 3.11 x86_64 only)")
    previous = getattr(slicer, "mrmlScene", None)
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s
    # as in the application, the subject hierarchy node exists from the start
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(s)
    yield s
    s.Clear(1)
    slicer.mrmlScene = previous


@pytest.fixture
def plastimatch(tmp_path):
    """``convert(rtstruct, ct_dir) -> {name: Volume}``: plastimatch's own rasterisation of our structure set.

    Nested contours are XOR'd (``--xor-contours``), the semantics our writer documents for holes.
    """
    exe = shutil.which("plastimatch")
    if exe is None:
        pytest.skip("plastimatch not installed (Debian package plastimatch; .ci/run installs it)")
    import SimpleITK as sitk

    from MedDINOv3Core.volume_io import from_sitk

    def convert(rtstruct: Path, ct_dir: Path, xor: bool = True) -> dict[str, Any]:
        out = tmp_path / f"plastimatch_{rtstruct.stem}_{int(xor)}"
        cmd = [exe, "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_dir)]
        cmd += ["--output-prefix", str(out), "--prefix-format", "nrrd"] + (["--xor-contours"] if xor else [])
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return {p.stem: from_sitk(sitk.ReadImage(str(p))) for p in sorted(out.glob("*.nrrd"))}

    return convert


@pytest.fixture(scope="session", autouse=True)
def _features_in_tmp(tmp_path_factory):
    """The Slicer logic keeps feature caches under pytest's temporary folder, never in the user's ~/.cache."""
    try:
        from MedDINOv3SlicerLib import logic
    except ImportError:  # without slicer-core (the static tests, plain library runs)
        yield
        return
    root = tmp_path_factory.mktemp("features")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logic, "default_features_root", lambda: root)
        yield

"""Fixtures for the DICOM tests: a labelled phantom on small CT grids, and the independent tools (dciodvfy,
plastimatch) as callables that skip when the Debian packages are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from MedDINOv3Core.data.volume import Volume


@pytest.fixture
def dciodvfy():
    """``check(path) -> list of error lines`` from dicom3tools' dciodvfy."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")

    def check(path: Path) -> list[str]:
        result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        lines = (result.stdout + result.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return check


@pytest.fixture
def plastimatch(tmp_path):
    """``convert(rtstruct, ct_dir) -> {name: Volume}``: plastimatch's own rasterisation of our structure set.

    Nested contours are XOR'd (``--xor-contours``), the semantics our writer documents for holes.
    """
    exe = shutil.which("plastimatch")
    if exe is None:
        pytest.skip("plastimatch not installed (Debian package plastimatch; .ci/run installs it)")
    import SimpleITK as sitk

    def convert(rtstruct: Path, ct_dir: Path, xor: bool = True) -> dict[str, Volume]:
        out = tmp_path / f"plastimatch_{rtstruct.stem}_{int(xor)}"
        cmd = [exe, "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_dir)]
        cmd += ["--output-prefix", str(out), "--prefix-format", "nrrd"] + (["--xor-contours"] if xor else [])
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return {p.stem: Volume.from_sitk(sitk.ReadImage(str(p))) for p in sorted(out.glob("*.nrrd"))}

    return convert

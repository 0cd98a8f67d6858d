"""Fixtures for the DICOM tests: a labelled phantom on small CT grids, and the independent tools (dciodvfy,
plastimatch) as callables that skip when the Debian packages are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.volume_io import from_sitk


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
        return {p.stem: from_sitk(sitk.ReadImage(str(p))) for p in sorted(out.glob("*.nrrd"))}

    return convert


@pytest.fixture(scope="session")
def real_head_ct(pytestconfig):
    """The real head CT of Debian's invesalius-examples ("ProMED CT 0051", GPL-2), fetched once into pytest's cache.

    Returns ``(108, 256, 256)`` int16 HU (z, y, x); spacing 0.9570312 x 0.9570312 x 1.5 mm. Skips when apt-get or
    the package archive cannot be reached.
    """
    import tarfile

    import numpy as np

    cache = Path(pytestconfig.cache.mkdir("invesalius_examples"))
    matrix = cache / "matrix.dat"
    if not matrix.is_file():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            pytest.skip("real head CT needs apt-get and dpkg-deb (Debian package invesalius-examples)")
        try:
            subprocess.run(["apt-get", "download", "invesalius-examples"], cwd=cache, check=True, capture_output=True,
                           timeout=300)  # fmt: skip
            deb = next(cache.glob("invesalius-examples_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "x")], check=True, capture_output=True, timeout=120)
        except (subprocess.SubprocessError, StopIteration, OSError) as exc:
            pytest.skip(f"could not fetch Debian package invesalius-examples: {exc}")
        inv3 = next((cache / "x").rglob("Cranium.inv3"))
        with tarfile.open(inv3) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("matrix.dat"))
            matrix.write_bytes(tar.extractfile(member).read())
        shutil.rmtree(cache / "x", ignore_errors=True)
        deb.unlink()
    return np.fromfile(matrix, dtype="<i2").reshape(108, 256, 256)

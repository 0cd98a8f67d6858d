"""Fixtures for the DICOM tests: the real head CT (dciodvfy and plastimatch are in Testing/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


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

"""Fetch real test data on demand into Testing/.data/ (git-ignored): never committed, cached after the first run.

Real head CT: the Debian package ``invesalius-examples`` (GPL-2) holds ``Cranium.inv3``, a gzip tarball with
``matrix.dat`` (raw int16 HU, (z, y, x) = (108, 256, 256), spacing 0.957 x 0.957 x 1.5 mm). ``fetch_cranium_ct``
downloads the package with ``apt-get download``, unpacks it with ``dpkg -x`` and writes the volume as NIfTI.

The project file stores no orientation (``main.plist`` says only "orientation": 1, axial), so it is read from the
anatomy: the head holder (posterior) lies at row 0 and the face at the last rows, so rows run posterior -> anterior
(-y in LPS); a mid-sagittal cut shows the vertex at the last slice, so slices run inferior -> superior (+z). Columns
are taken as right -> left (+x), the DICOM convention (left/right cannot be told from a symmetric skull).

Run ``python Testing/data_fetch.py`` to prefetch everything (CI does this before the tests).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATA_DIR = Path(os.environ.get("MEDDINOV3_TEST_DATA", Path(__file__).resolve().parent / ".data"))
CRANIUM_SHAPE = (108, 256, 256)
CRANIUM_SPACING = (0.9570312, 0.9570312, 1.5)
CRANIUM_DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # rows posterior -> anterior (see above)


class DataUnavailable(RuntimeError):
    """The data could not be fetched (no apt, no network); tests skip with this message."""


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataUnavailable(f"`{' '.join(cmd)}` could not run: {exc}") from exc
    if out.returncode != 0:
        raise DataUnavailable(f"`{' '.join(cmd)}` failed ({out.returncode}): {out.stderr.strip()[-300:]}")


def fetch_cranium_ct(data_dir: Path = DATA_DIR) -> Path:
    """Path of ``cranium_ct.nii.gz`` (int16 HU, LPS geometry with the package's spacing), fetched on first use.

    Raises DataUnavailable when apt-get/dpkg are missing or the Debian mirror cannot be reached.
    """
    import SimpleITK as sitk

    target = data_dir / "cranium_ct.nii.gz"
    if target.is_file():
        image = sitk.ReadImage(str(target))
        if np.allclose(image.GetDirection(), CRANIUM_DIRECTION):
            return target
        image.SetDirection(CRANIUM_DIRECTION)  # a cache from before the orientation was known: fix it in place
        partial = data_dir / "cranium_ct.partial.nii.gz"
        sitk.WriteImage(image, str(partial))
        os.replace(partial, target)
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DataUnavailable("apt-get/dpkg not found: the real CT comes from the Debian package invesalius-examples")
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", "invesalius-examples"], work)
        debs = sorted(work.glob("invesalius-examples_*.deb"))
        if not debs:
            raise DataUnavailable("apt-get download invesalius-examples produced no .deb file")
        _run(["dpkg", "-x", str(debs[0]), str(work / "pkg")], work)
        inv3 = next((work / "pkg").rglob("Cranium.inv3"), None)
        if inv3 is None:
            raise DataUnavailable("the invesalius-examples package has no Cranium.inv3")
        with tarfile.open(inv3, "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("matrix.dat")), None)
            if member is None:
                raise DataUnavailable("Cranium.inv3 holds no matrix.dat")
            raw = tar.extractfile(member).read()
        expected = int(np.prod(CRANIUM_SHAPE)) * 2
        if len(raw) != expected:
            raise DataUnavailable(f"matrix.dat has {len(raw)} bytes, expected {expected} for int16 {CRANIUM_SHAPE}")
        array = np.frombuffer(raw, dtype="<i2").reshape(CRANIUM_SHAPE)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(CRANIUM_SPACING)
        image.SetDirection(CRANIUM_DIRECTION)
        partial = work / "cranium_ct.nii.gz"
        sitk.WriteImage(image, str(partial))
        os.replace(partial, target)
    log.info("fetched the real head CT into %s", target)
    return target


def write_synthetic_ct(directory: Path, n_volumes: int = 2, shape: tuple[int, int, int] = (6, 48, 48), seed: int = 0):
    """Small seeded CT-like volumes (air, a soft-tissue disc with a bone ring, noise) as NIfTI files in ``directory``.

    For fast pretraining tests that need no download. Returns the directory.
    """
    import SimpleITK as sitk

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    for k in range(n_volumes):
        cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        radius = min(h, w) * rng.uniform(0.3, 0.4)
        vol = np.full(shape, -1000.0)
        vol[:, r2 < radius**2] = 40.0
        vol[:, (r2 < radius**2) & (r2 > (0.85 * radius) ** 2)] = 700.0
        vol[:, (yy - cy) ** 2 / 4 + (xx - cx - radius / 3) ** 2 < (radius / 4) ** 2] = 60.0
        vol += rng.normal(0.0, 15.0, shape)
        image = sitk.GetImageFromArray(vol.astype(np.int16))
        image.SetSpacing((0.8, 0.8, 2.0))
        sitk.WriteImage(image, str(directory / f"synthetic_{k}.nii.gz"))
    return directory


def main() -> int:
    try:
        print(fetch_cranium_ct())
    except DataUnavailable as exc:
        print(f"real CT unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

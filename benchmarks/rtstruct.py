"""Time CT series + RT Structure Set export and import on a synthetic abdomen, checked by plastimatch.

Usage: ``python benchmarks/rtstruct.py [--shape Z Y X] [--out DIR]``. Prints seconds per step, the structure set's
size and the lowest per-structure DSC of our reader and of plastimatch (when installed) against the labelmap.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def main() -> None:
    import pydicom
    import SimpleITK as sitk

    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.dicom import align_to_grid, read_rtstruct, read_series, write_rtstruct, write_series
    from MedDINOv3Core.volume_io import from_sitk

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--out", help="work folder (a temporary one by default)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_rtstruct_"))
    shutil.rmtree(out / "ct", ignore_errors=True)

    ct, labels, table = make_phantom(tuple(args.shape), seed=0)
    present = set(np.unique(labels.array).tolist()) - {0}
    rois = [(t["value"], t["name"], tuple(round(255 * c) for c in t["color"])) for t in table if t["value"] in present]
    times = {}

    def timed(name, fn, *a, **kw):
        t0 = time.perf_counter()
        result = fn(*a, **kw)
        times[name] = time.perf_counter() - t0
        return result

    series = timed("write_series", write_series, ct, out / "ct")
    path = timed("write_rtstruct", write_rtstruct, labels, series, rois, out / "rs.dcm")
    read = timed("read_series", read_series, out / "ct")
    masks = timed("read_rtstruct", read_rtstruct, path, read)
    expected = align_to_grid(labels, read.volume)
    own = min(dsc(masks[name], expected == value) for value, name, _ in rois)
    theirs = None
    if shutil.which("plastimatch"):
        cmd = ["plastimatch", "convert", "--input", str(path), "--referenced-ct", str(out / "ct")]
        cmd += ["--output-prefix", str(out / "pl"), "--prefix-format", "nrrd", "--xor-contours"]
        timed("plastimatch_convert", subprocess.run, cmd, check=True, capture_output=True)
        theirs = min(
            dsc(align_to_grid(from_sitk(sitk.ReadImage(str(out / "pl" / f"{name}.nrrd"))), labels) > 0,
                labels.array == value)
            for value, name, _ in rois
        )  # fmt: skip
    ds = pydicom.dcmread(path)
    contours = sum(len(rc.ContourSequence) for rc in ds.ROIContourSequence)
    points = sum(int(c.NumberOfContourPoints) for rc in ds.ROIContourSequence for c in rc.ContourSequence)
    print(f"grid (z, y, x) {ct.shape}, spacing {ct.spacing}")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    print(f"{len(rois)} ROIs, {contours} contours, {points} points, {path.stat().st_size / 1e6:.1f} MB")
    print(f"lowest DSC: own reader {own:.4f}" + ("" if theirs is None else f", plastimatch {theirs:.4f}"))


if __name__ == "__main__":
    main()

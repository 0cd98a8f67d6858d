"""Test data for the DICOM tests: a labelled phantom on small CT grids in the orientations planning systems meet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MedDINOv3Core.data.volume import Volume

SHAPE = (9, 40, 48)  # (z, y, x)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-12.0, 30.5, 100.0)
ROIS = [(1, "Ring", (255, 0, 0)), (2, "Islands", (0, 200, 0), "OAR"), (3, "Ell", (0, 0, 255))]

# Directions (columns = LPS directions of the x, y, z array axes) covering the cases planning systems meet.
GEOMETRIES = {
    "head_first": (1, 0, 0, 0, 1, 0, 0, 0, 1),  # HFS, slices stacked inferior -> superior
    "feet_first_order": (1, 0, 0, 0, 1, 0, 0, 0, -1),  # same planes stacked superior -> inferior
    "flipped_rows_cols": (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # prone-like: rows run to the right, columns anterior
    "feet_first_supine": (-1, 0, 0, 0, 1, 0, 0, 0, -1),  # FFS: rows run to the right, normal points inferior
}


def phantom_labels(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Three structures: 1 a ring (a hole through several slices), 2 two islands on slices 2-4, 3 an L shape whose
    left-right and anterior-posterior asymmetry exposes any mirroring."""
    lab = np.zeros(shape, np.uint8)
    lab[2:8, 5:25, 5:20] = 1
    lab[3:7, 10:18, 9:15] = 0
    lab[2:5, 28:35, 25:30] = 2
    lab[2:5, 28:36, 35:45] = 2
    lab[4:9, 8:14, 28:44] = 3
    lab[4:9, 14:24, 28:33] = 3
    lab[6, 20, 40] = 3  # a lone voxel
    lab[6, 21, 41] = 3  # touching the lone voxel only at a corner
    return lab


def make_ct(direction=GEOMETRIES["head_first"], shape=SHAPE) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.integers(-1000, 1500, shape).astype(np.int16), SPACING, ORIGIN, direction)


# Damaged DICOM series, shared by test_series_bad_inputs.py and Testing/training/bad_inputs/test_bad_dicom_series.py.


def write_gap_series(folder: Path) -> Path:
    """``make_ct()`` as a DICOM series in ``folder`` with its 5th slice deleted (a gap in the slice positions)."""
    from MedDINOv3Core.dicom.series import write_series

    written = write_series(make_ct(), folder)
    written.files[4].unlink()
    return folder


def write_truncated_pixels(folder: Path) -> Path:
    """``make_ct()`` as a DICOM series in ``folder`` whose 5th file lost its last 1000 bytes (whole header, short
    pixel data)."""
    from MedDINOv3Core.dicom.series import write_series

    written = write_series(make_ct(), folder)
    data = written.files[4].read_bytes()
    written.files[4].write_bytes(data[:-1000])  # the header is whole, the pixel data short
    return folder


def write_two_series(root: Path) -> tuple:
    """Two series of 9 slices, their files side by side in ``root/two``: ``(folder, written a, written b)``."""
    from MedDINOv3Core.dicom.series import write_series

    ct = make_ct()
    a = write_series(ct, root / "a", series_description="first")
    b = write_series(ct, root / "b", series_description="second")
    (root / "two").mkdir()
    for prefix, written in (("a", a), ("b", b)):
        for f in written.files:
            f.rename(root / "two" / f"{prefix}_{f.name}")
    return root / "two", a, b


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def sample_on_grid(image: Volume, grid: Volume) -> np.ndarray:
    """``image``'s values at ``grid``'s voxel centres (nearest voxel, 0 outside): compares any two geometries."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    points = grid.index_to_physical(np.stack([x, y, z], -1).reshape(-1, 3))
    idx = np.round(image.physical_to_index(points)).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(image.shape[::-1])), axis=1)
    values = np.zeros(len(points), image.array.dtype)
    values[inside] = image.array[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
    return values.reshape(grid.shape)

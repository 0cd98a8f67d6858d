"""Volume: voxels as a (z, y, x) numpy array plus geometry in SimpleITK's LPS convention.

Geometry follows SimpleITK exactly, so a read -> write round trip keeps it bit for bit:
- ``spacing``: (sx, sy, sz) in mm, along the i, j, k (x, y, z array) axes;
- ``origin``: LPS position (mm) of the centre of voxel (i, j, k) = (0, 0, 0);
- ``direction``: 9 floats, row-major 3x3 matrix whose COLUMNS are the LPS directions of the i, j, k axes.
Physical point p = origin + direction @ (spacing * (i, j, k)).

This module knows no file format and no IO library (it never imports SimpleITK): reading and writing files (NIfTI,
NRRD, .seg.nrrd, MetaImage, DICOM series folders) and the conversions to and from an in-memory SimpleITK image
(``to_sitk`` / ``from_sitk``) are MedDINOv3Core/volume_io.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume holds a 3D (z, y, x) array, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in np.asarray(self.direction, dtype=np.float64).ravel())
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("spacing and origin need 3 values and direction 9 (row-major 3x3)")
        if min(self.spacing) <= 0:
            raise ValueError(f"voxel spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_physical(self, ijk) -> np.ndarray:
        """Continuous index (i, j, k) = (x, y, z) array axes -> LPS point in mm. Accepts (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def physical_to_index(self, point) -> np.ndarray:
        """LPS point(s) (..., 3) in mm -> continuous index (i, j, k)."""
        p = np.asarray(point, dtype=np.float64) - np.asarray(self.origin)
        return (p @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def same_geometry(self, other: Volume, tol: float = 0.0) -> bool:
        """True when shape, spacing, origin and direction agree (exactly by default)."""
        if self.shape != other.shape:
            return False
        a = np.r_[self.spacing, self.origin, self.direction]
        b = np.r_[other.spacing, other.origin, other.direction]
        return bool(np.all(np.abs(a - b) <= tol))

    def with_array(self, array: np.ndarray) -> Volume:
        """A new Volume with ``array`` (same shape) and this volume's geometry."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    @classmethod
    def geometry_of(
        cls,
        shape,
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    ) -> Volume:
        """A Volume holding only a (z, y, x) shape and a geometry: its array is a read-only zero-strided view of one
        uint8 zero, so it costs no voxel memory (for code that needs a grid, not voxels)."""
        return cls(np.broadcast_to(np.zeros((), np.uint8), tuple(int(n) for n in shape)), spacing, origin, direction)

    def geometry_only(self) -> Volume:
        """This volume's shape and geometry without its voxels (``Volume.geometry_of``)."""
        return Volume.geometry_of(self.shape, self.spacing, self.origin, self.direction)

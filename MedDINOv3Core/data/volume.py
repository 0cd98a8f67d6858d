"""Volume: voxels as a (z, y, x) numpy array plus geometry in SimpleITK's LPS convention.

Geometry follows SimpleITK exactly, so a read -> write round trip keeps it bit for bit:
- ``spacing``: (sx, sy, sz) in mm, along the i, j, k (x, y, z array) axes;
- ``origin``: LPS position (mm) of the centre of voxel (i, j, k) = (0, 0, 0);
- ``direction``: 9 floats, row-major 3x3 matrix whose COLUMNS are the LPS directions of the i, j, k axes.
Physical point p = origin + direction @ (spacing * (i, j, k)).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from MedDINOv3Core.atomic import atomic_path

log = logging.getLogger(__name__)


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

    def to_sitk(self):
        """A SimpleITK image with this geometry (the array is copied)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image) -> Volume:
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got a {image.GetDimension()}D one")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
            )
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


# ----------------------------------------------------------------------------------------------- reading and writing

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd) or a folder holding one DICOM series"


class VolumeReadError(ValueError):
    """An input that cannot be used as a 3D scalar volume; the message names the file and what to do."""


def image_suffix(path: str | os.PathLike) -> str:
    """The recognised image suffix of ``path`` (".nii.gz", ".seg.nrrd", ...), lower case, or "" if none."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def _dicom_series_files(folder: Path) -> list[str]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeReadError(
            f"{folder} is a folder but holds no DICOM image series; give a folder of DICOM slices (.dcm) or a "
            f"volume file: {SUPPORTED}"
        )
    files = {uid: reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    uid = max(files, key=lambda u: len(files[u]))
    if len(series) > 1:
        log.warning(
            "%s holds %d DICOM series; reading the largest (%s, %d files). Put one series per folder to choose.",
            folder,
            len(series),
            uid,
            len(files[uid]),
        )
    return list(files[uid])


def _check_finite(array: np.ndarray, where: str, chunk: int = 32) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = sum(int(np.count_nonzero(~np.isfinite(array[k : k + chunk]))) for k in range(0, array.shape[0], chunk))
    if bad:
        raise VolumeReadError(
            f"{where} contains {bad} non-finite voxel(s) (NaN or Inf); replace them (for example with the "
            "volume's minimum) before segmenting"
        )


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D scalar volume with its exact geometry.

    Args:
        path: a NIfTI / NRRD / MetaImage file, or a folder holding a DICOM series (the largest series if several).

    Raises:
        FileNotFoundError: the path does not exist.
        VolumeReadError (a ValueError): empty or unreadable files, 2D, 4D or vector images, non-finite voxels; the
            message names the file and what to do.
    """
    import SimpleITK as sitk

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}; check the path ({SUPPORTED})")
    if p.is_dir():
        files = _dicom_series_files(p)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise VolumeReadError(f"could not read the DICOM series in {p}: {_first_line(exc)}") from exc
        where = f"DICOM series in {p}"
    else:
        if p.stat().st_size == 0:
            raise VolumeReadError(f"{p} is empty (0 bytes); export or copy the volume again")
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            raise VolumeReadError(
                f"could not read {p} as an image ({_first_line(exc)}); supported inputs are {SUPPORTED}"
            ) from exc
        where = str(p)
    dim, size = image.GetDimension(), image.GetSize()
    if dim == 2 or (dim == 3 and size[2] == 1 and p.is_file() and image_suffix(p) == ""):
        raise VolumeReadError(
            f"{where} is a 2D image (size {size}); MedDINOv3 segments 3D volumes: give a 3D file or, for DICOM, "
            "the folder holding all slices of the series"
        )
    if dim != 3:
        raise VolumeReadError(
            f"{where} is a {dim}D image (size {size}); extract one 3D volume (one time point or channel) first"
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise VolumeReadError(
            f"{where} has {components} components per voxel (a vector or colour image); convert it to a "
            "single-channel (scalar) volume first"
        )
    volume = Volume.from_sitk(image)
    _check_finite(volume.array, where)
    log.debug("read %s: shape (z, y, x) %s, spacing %s", where, volume.shape, volume.spacing)
    return volume


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "ERROR" in line.upper() or "exception" in line.lower()), "")
    return (detail or (lines[-1] if lines else type(exc).__name__))[:300]


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` with its exact geometry, atomically (a temporary name in the same folder, then os.replace).

    Args:
        volume: the volume.
        path: ``.nii`` / ``.nii.gz`` / ``.nrrd`` / ``.mha`` / ``.mhd`` (+ its ``.raw``/``.zraw`` data file), or a
            folder name without suffix for a DICOM CT series (MedDINOv3Core.dicom.series.write_series). For a
            ``.seg.nrrd`` with segment names and colours use MedDINOv3Core.data.segfile.write_segmentation.
        compress: compress the voxel data where the format allows.

    Returns:
        the written path. NIfTI stores geometry in float32 (and the direction as a quaternion/sform), so it keeps
        geometry to float32 precision; NRRD and MetaImage keep it exactly.
    """
    import SimpleITK as sitk

    p = Path(path).expanduser()
    suffix = image_suffix(p)
    if suffix == ".seg.nrrd":
        from MedDINOv3Core.data.segfile import write_segmentation

        return write_segmentation(volume, p)
    if suffix == "" and not p.suffix:
        from MedDINOv3Core.dicom.series import write_series

        write_series(volume, p)
        return p
    if suffix in ("", ".nhdr"):
        raise ValueError(
            f"cannot write {p}: unsupported file type; use .nii.gz, .nii, .nrrd, .seg.nrrd, .mha or .mhd, or a "
            "folder name without suffix for a DICOM series"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    if suffix == ".mhd":
        # Header + data file: write both under their final names in a temporary folder, then move data, header.
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{p.name}.tmp-", dir=p.parent))
        try:
            sitk.WriteImage(image, str(tmp_dir / p.name), compress)
            for f in sorted(tmp_dir.iterdir(), key=lambda f: f.suffix == ".mhd"):
                os.replace(f, p.parent / f.name)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return p
    with atomic_path(p, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    log.debug("wrote %s", p)
    return p

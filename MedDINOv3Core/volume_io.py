"""Volume files in and out: every format the project reads and writes, behind one module.

- :func:`read_volume`: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .seg.nrrd as a plain labelmap), MetaImage (.mha, .mhd)
  or a folder holding a DICOM series (read with SimpleITK's GDCM series reader; the largest series if several).
  The checks on what is read (3D, one component per voxel, finite voxels, non-empty file) live here and raise
  :class:`VolumeReadError` with a message that names the file and what to do.
- :func:`write_volume`: the format from the suffix; ``.seg.nrrd`` goes to :func:`write_segmentation`, a name
  without suffix to :func:`MedDINOv3Core.dicom.series.write_series` (a DICOM CT series folder). Files are written
  atomically (MedDINOv3Core/atomic.py).
- :func:`write_segmentation` / :func:`read_segmentation`: 3D Slicer ``.seg.nrrd`` files (slicerio): a labelmap plus
  segment names, colours and terminology.
- :func:`to_sitk` / :func:`from_sitk`: a Volume to and from an in-memory SimpleITK image, with its exact geometry.

:class:`~MedDINOv3Core.data.volume.Volume` itself knows no file format and no IO library (it never imports
SimpleITK); this module sits above it and above the DICOM package (MedDINOv3Core/dicom), which never imports this
module.

Segmentation files: one segment per model label (``labelValue`` = the label's value), all in layer 0, with the
labelmap's exact geometry in LPS. Label terminology is taken from ``Label.terminology``: either slicerio's form
(``"category": [scheme, code, meaning]``) or coded-concept mappings (``"category": {"scheme": ..., "code": ...,
"meaning": ...}``); a terminology without both ``category`` and ``type`` is not written
(MedDINOv3Core/terminology.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.atomic import atomic_files, atomic_path
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.terminology import slicer_terminology

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------- in-memory images


def to_sitk(volume: Volume):
    """A SimpleITK image with ``volume``'s geometry (the array is copied)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def from_sitk(image) -> Volume:
    """A :class:`Volume` from a 3D scalar SimpleITK image, with its exact geometry (the voxels are copied)."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got a {image.GetDimension()}D one")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


# ------------------------------------------------------------------------------------------------ volume files

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
    volume = from_sitk(image)
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
            ``.seg.nrrd`` with segment names and colours use :func:`write_segmentation`.
        compress: compress the voxel data where the format allows.

    Returns:
        the written path. NIfTI stores geometry in float32 (and the direction as a quaternion/sform), so it keeps
        geometry to float32 precision; NRRD and MetaImage keep it exactly.
    """
    import SimpleITK as sitk

    p = Path(path).expanduser()
    suffix = image_suffix(p)
    if suffix == ".seg.nrrd":
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
    image = to_sitk(volume)
    if suffix == ".mhd":
        # Header + data file: both under their final names in a temporary folder, then the data, then the header.
        with atomic_files(p) as tmp_dir:
            sitk.WriteImage(image, str(tmp_dir / p.name), compress)
        return p
    with atomic_path(p, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    log.debug("wrote %s", p)
    return p


# ---------------------------------------------------------------------------------------- 3D Slicer .seg.nrrd


def write_segmentation(volume: Volume, path: str | os.PathLike, labels: Sequence[Any] = ()) -> Path:
    """Write a labelmap Volume as a Slicer ``.seg.nrrd``, atomically (temp name in the same folder + os.replace).

    Args:
        volume: integer labelmap (z, y, x) with its geometry.
        path: the output file (should end in ``.seg.nrrd``).
        labels: the model's labels (MedDINOv3Core.card.Label, or card dicts); empty = one segment per
            non-zero value present, named "Segment_<value>".

    Returns:
        the written path.
    """
    import slicerio

    from MedDINOv3Core.card import DEFAULT_COLORS, parse_labels

    p = Path(path).expanduser()
    array = np.asarray(volume.array)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"a segmentation must hold integer labels, got {array.dtype} voxels for {p}")
    if labels:
        parsed = parse_labels(labels)
    else:
        values = [int(v) for v in np.unique(array) if v != 0]
        parsed = parse_labels(
            [
                {"value": v, "name": f"Segment_{v}", "color": list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)])}
                for i, v in enumerate(values)
            ]
        )
    segments = []
    for label in parsed:
        segment: dict[str, Any] = {
            "id": f"Segment_{label.value}",
            "labelValue": int(label.value),
            "layer": 0,
            "name": label.name,
            "color": [float(c) for c in label.color],
        }
        term = slicer_terminology(label.terminology)
        if term is not None:
            segment["terminology"] = term
        segments.append(segment)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = volume.direction_matrix * np.asarray(volume.spacing)[None, :]
    ijk_to_lps[:3, 3] = volume.origin
    segmentation = {
        "voxels": np.ascontiguousarray(array.transpose(2, 1, 0)),  # (i, j, k), written in Fortran order
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": segments,
    }
    with atomic_path(p, suffix=".seg.nrrd") as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    log.debug("wrote segmentation %s (%d segments)", p, len(segments))
    return p


def read_segmentation(path: str | os.PathLike) -> tuple[Volume, list[dict[str, Any]]]:
    """Read a single-layer ``.seg.nrrd``: (labelmap Volume, slicerio segment dicts with name/color/labelValue)."""
    import slicerio

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"segmentation file not found: {p}")
    seg = slicerio.read_segmentation(str(p))
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim != 3:
        raise ValueError(f"{p} holds overlapping segments (several layers); only single-layer files are supported")
    m = np.asarray(seg["ijkToLPS"], dtype=np.float64)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / spacing[None, :]
    volume = Volume(voxels.transpose(2, 1, 0), tuple(spacing), tuple(m[:3, 3]), tuple(direction.ravel()))
    return volume, list(seg["segments"])

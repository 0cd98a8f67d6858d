"""Volume files in and out: every format the project reads and writes, behind one module.

- :func:`read_volume`: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .seg.nrrd as a plain labelmap), MetaImage (.mha, .mhd)
  or a folder holding a DICOM series, read by the project's own DICOM reader
  (:func:`MedDINOv3Core.dicom.series_reader.read_series`, as export-rtstruct reads it): a missing, duplicate,
  truncated or undecodable slice or uneven spacing is refused rather than stretched over; of several series the
  largest is read, several of equal size must be chosen with ``folder::SeriesInstanceUID``.
  The checks on what is read (3D, one component per voxel, finite voxels, non-empty file) live here, those on the
  file's own bytes that SimpleITK would hide (truncation, NaN/Inf in NIfTI) in MedDINOv3Core/volume_checks.py; both
  raise :class:`VolumeReadError` with a message that names the file and what to do.
- :func:`write_volume`: the format from the suffix; ``.seg.nrrd`` goes to :func:`write_segmentation`, a name
  without suffix to :func:`MedDINOv3Core.dicom.series.write_series` (a DICOM CT series folder).
  :func:`write_rgb_volume`: a colour (RGB vector) volume such as explore's PCA colours. Files are written atomically
  (MedDINOv3Core/atomic.py).
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
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.atomic import atomic_files, atomic_path
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.labelmaps import integer_labels
from MedDINOv3Core.terminology import slicer_terminology
from MedDINOv3Core.volume_checks import VolumeReadError, check_finite, declared_size, precheck_file

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


def image_suffix(path: str | os.PathLike) -> str:
    """The recognised image suffix of ``path`` (".nii.gz", ".seg.nrrd", ...), lower case, or "" if none."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


SERIES_SEPARATOR = "::"
"""``folder::SeriesInstanceUID`` picks one series of a DICOM folder holding several."""


def split_series_choice(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``(folder, Series Instance UID)`` of a ``folder::SeriesInstanceUID`` input, else ``(path, None)``."""
    text = os.fspath(path)
    folder, sep, uid = text.rpartition(SERIES_SEPARATOR)
    if sep and folder and uid and not Path(text).expanduser().exists():
        return Path(folder).expanduser(), uid.strip()
    return Path(text).expanduser(), None


def _read_dicom_folder(folder: Path, series_instance_uid: str | None) -> tuple[Volume, str]:
    """The series in ``folder`` (``MedDINOv3Core.dicom.series_reader.read_series``) and its name for messages.

    Its checks (missing, duplicate or undecodable slices, uneven spacing, tilt, mixed sizes) become one-line
    :class:`VolumeReadError`s. A series whose pixels pydicom has no decoder for (e.g. JPEG without pylibjpeg) is read
    with SimpleITK's GDCM reader from the same checked and sorted slice files.
    """
    from MedDINOv3Core.dicom.series_reader import PixelDecodeError, SeveralSeriesError, read_series

    where = f"DICOM series in {folder}"
    try:
        series = read_series(folder, series_instance_uid, largest=True)
    except SeveralSeriesError as exc:
        listed = "; ".join(f"{uid} ({n} files, {desc!r})" for uid, n, desc in exc.series)
        raise VolumeReadError(
            f"{folder} holds {len(exc.series)} DICOM series of the same size: {listed}; choose one by pointing the "
            f"input at a folder holding only that series, or at {folder}{SERIES_SEPARATOR}<SeriesInstanceUID>"
        ) from exc
    except PixelDecodeError as exc:
        if not exc.missing_handler:
            raise VolumeReadError(f"could not read the {where}: {exc}") from exc
        return _read_with_gdcm(exc.files, where, exc), where
    except FileNotFoundError as exc:
        if series_instance_uid is None:
            raise VolumeReadError(
                f"{folder} is a folder but holds no DICOM image series; give a folder of DICOM slices (.dcm) or a "
                f"volume file: {SUPPORTED}"
            ) from exc
        raise VolumeReadError(f"could not read the {where}: {exc}") from exc
    except ValueError as exc:
        raise VolumeReadError(f"could not read the {where}: {exc}") from exc
    if series_instance_uid is not None:
        where = f"DICOM series {series_instance_uid} in {folder}"
    return series.volume, where


def _read_with_gdcm(files: Sequence[Path], where: str, cause: Exception) -> Volume:
    """The checked, sorted slice ``files`` read with SimpleITK (GDCM decodes what pydicom cannot without plugins)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"could not read the {where}: {cause}") from exc
    log.debug("%s: pydicom could not decode its pixels, read with GDCM instead", where)
    return from_sitk(image)


def _check_values(volume: Volume, where: str) -> None:
    """Refuse complex voxels and bad spacing; warn (one line) on constant volumes and implausible CT values."""
    array = volume.array
    if np.iscomplexobj(array):
        raise VolumeReadError(
            f"{where} holds complex voxels ({array.dtype}); MedDINOv3 needs a real-valued scalar volume: save the "
            "magnitude (or real part) first"
        )
    check_finite(array, where)
    if array.size == 0 or array.dtype == bool:
        return
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        log.warning("%s is constant (every voxel is %g): a blank image or an empty label map?", where, lo)
    elif lo < -2000 or hi > 10000 or hi < -500:
        log.warning(
            "%s has values in [%g, %g], implausible for CT in Hounsfield units (expected about [-1024, 3071]); "
            "check the modality and the rescale slope/intercept",
            where,
            lo,
            hi,
        )


def _read_file(p: Path) -> tuple[Volume, str]:
    """A volume file through SimpleITK, after the checks on its own bytes; 2D, 4D and vector images refused."""
    import SimpleITK as sitk

    if p.stat().st_size == 0:
        raise VolumeReadError(f"{p} is empty (0 bytes); export or copy the volume again")
    where = str(p)
    precheck_file(p, where, image_suffix(p))
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        precheck_file(p, where, image_suffix(p), quick=False)  # names damage that SimpleITK reports obscurely
        reason = _itk_reason(exc)
        if "allocate" in reason.lower():
            declared = declared_size(p)
            reason = f"{reason.rstrip('.')}: {declared}" if declared else reason
        elif re.search(r"expected \d+ bytes but received|fread got only|data not read completely", reason):
            reason = f"the file is truncated: {reason}"
        elif "File cannot be read" in reason and image_suffix(p) in (".mha", ".mhd"):
            # MetaIO says "No such file or directory" when the voxel data is short or its data file is missing
            reason = "the voxel data is shorter than the header declares, damaged, or its data file is missing"
        raise VolumeReadError(f"could not read {p} as an image ({reason}); supported inputs are {SUPPORTED}") from exc
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
    return from_sitk(image), where


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D scalar volume with its exact geometry.

    Args:
        path: a NIfTI / NRRD / MetaImage file, or a folder holding a DICOM series (searched recursively; the
            largest series if several, ``folder::SeriesInstanceUID`` to choose one, which several series of the
            same size require).

    Raises:
        FileNotFoundError: the path does not exist.
        VolumeReadError (a ValueError): empty, truncated or unreadable files, DICOM series with a missing,
            duplicate, truncated or undecodable slice or uneven spacing, 2D, 4D, vector or complex images,
            non-finite voxels (NIfTI included: its reader would turn them into 0), zero or negative spacing; the
            message names the file and what to do. A constant volume, or values implausible for CT in HU, give
            one warning line (logging) and are read.
    """
    p, series_uid = split_series_choice(path)
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}; check the path ({SUPPORTED})")
    if series_uid is not None and not p.is_dir():
        raise VolumeReadError(f"{p}{SERIES_SEPARATOR}{series_uid}: {SERIES_SEPARATOR} follows a DICOM folder only")
    if p.is_dir():
        volume, where = _read_dicom_folder(p, series_uid)
    else:
        volume, where = _read_file(p)
    spacing = volume.spacing
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeReadError(
            f"{where} has voxel spacing {tuple(spacing)}; spacing must be positive and finite: fix the header "
            "(pixdim / spacings / ElementSpacing) and export again"
        )
    _check_values(volume, where)
    log.debug("read %s: shape (z, y, x) %s, spacing %s", where, volume.shape, volume.spacing)
    return volume


_ITK_NOISE = re.compile(r"^(Exception thrown in SimpleITK \w+:.*|.*\.(?:cxx|hxx|cpp|h|txx):\d+:?)$")
_ITK_PREFIX = re.compile(r"^(?:itk::)?(?:ITK )?ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?", re.IGNORECASE)


def _itk_reason(exc: BaseException) -> str:
    """The meaningful line of an ITK/SimpleITK RuntimeError, without ITK's source file path and object address.

    NRRD errors are a stack of "[nrrd] function: message" lines whose last one says what went wrong; other ITK
    errors put it after "ITK ERROR: Class(0x...):" (with the next line when that says the reason).
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not _ITK_NOISE.match(line)]
    nrrd = [line.removeprefix("[nrrd]").strip() for line in lines if line.startswith("[nrrd]")]
    nrrd = [line for line in nrrd if line and not line.endswith((":", "trouble"))]
    if nrrd:
        return re.sub(r"^_?\w+:\s*", "", nrrd[-1])[:300]
    lines = [_ITK_PREFIX.sub("", line) for line in lines if not line.startswith("[nrrd]")]
    lines = [line for line in lines if line]
    if not lines:
        return type(exc).__name__
    reason = lines[0]
    if len(lines) > 1 and lines[1].lower().startswith("reason"):
        reason = f"{reason} {lines[1]}"
    return reason[:300]


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
    _write_image(to_sitk(volume), p, suffix, compress)
    return p


def write_rgb_volume(rgb: np.ndarray, like: Volume, path: str | os.PathLike) -> Path:
    """A uint8 (z, y, x, 3) colour map (e.g. PCA colours) -> an RGB vector image with the geometry of ``like``,
    atomically and compressed; the format from the suffix (.nrrd, .nii.gz, .mha, ...)."""
    import SimpleITK as sitk

    p = Path(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True)
    image.SetSpacing(like.spacing)
    image.SetOrigin(like.origin)
    image.SetDirection(like.direction)
    _write_image(image, p, image_suffix(p) or p.suffix, True)
    return p


def _write_image(image, p: Path, suffix: str, compress: bool) -> None:
    """Write a SimpleITK image to ``p`` (format from ``suffix``) atomically: a temporary name in the same folder,
    then os.replace."""
    import SimpleITK as sitk

    if suffix == ".mhd":
        # Header + data file: both under their final names in a temporary folder, then the data, then the header.
        with atomic_files(p) as tmp_dir:
            sitk.WriteImage(image, str(tmp_dir / p.name), compress)
        return
    with atomic_path(p, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    log.debug("wrote %s", p)


# ---------------------------------------------------------------------------------------- 3D Slicer .seg.nrrd


def write_segmentation(volume: Volume, path: str | os.PathLike, labels: Sequence[Any] = ()) -> Path:
    """Write a labelmap Volume as a Slicer ``.seg.nrrd``, atomically (temp name in the same folder + os.replace).

    Args:
        volume: labelmap (z, y, x) with its geometry: integer labels; a bool array is written as uint8 and a
            floating-point array holding only whole numbers as the smallest integer type that holds its values.
        path: the output file (should end in ``.seg.nrrd``).
        labels: the model's labels (MedDINOv3Core.card.Label, or card dicts); empty = one segment per
            non-zero value present, named "Segment_<value>".

    Returns:
        the written path.

    Raises:
        labelmaps.NotALabelMap: (a ValueError) the array holds non-integer values or is not numeric; nothing is
            written.
    """
    import slicerio

    from MedDINOv3Core.card import DEFAULT_COLORS, parse_labels

    p = Path(path).expanduser()
    source = np.asarray(volume.array)
    array = integer_labels(source, what=f"segmentation for {p}")
    if source.dtype.kind == "f" and array.size:  # whole numbers cast to int64: the smallest type that holds them
        array = array.astype(np.result_type(np.min_scalar_type(int(array.min())), np.min_scalar_type(int(array.max()))))
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

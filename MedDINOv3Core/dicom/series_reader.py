"""Reading a DICOM image series into a Volume and its DicomSeries identity (conventions: ``series``).

The folder is scanned, one series chosen (several of equal size make the caller choose), the slices sorted along
their normal and checked (uniform spacing, no duplicates or gaps, one plane), then the pixels decoded and rescaled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.series import (
    ENHANCED_SOP_CLASSES,
    PATIENT_KEYWORDS,
    PATIENT_POSITIONS,
    STUDY_KEYWORDS,
    DicomSeries,
    _str,
)
from MedDINOv3Core.progress import ProgressCallback

log = logging.getLogger(__name__)


class SeveralSeriesError(ValueError):
    """The folder holds several image series and none was chosen; ``series`` lists them as
    ``(Series Instance UID, number of files, Series Description)``."""

    def __init__(self, message: str, series: Sequence[tuple[str, int, str]]) -> None:
        super().__init__(message)
        self.series = list(series)


class PixelDecodeError(ValueError):
    """A slice's pixels cannot be decoded. ``missing_handler``: the file is whole but pydicom has no decoder for its
    transfer syntax (another reader may succeed); otherwise the pixel data is truncated or damaged. ``files``: the
    series' slice files in volume order, already checked for gaps, duplicates and uneven spacing."""

    def __init__(self, message: str, path: Path, missing_handler: bool, files: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.missing_handler = missing_handler
        self.files = tuple(files)


def _looks_like_dicom(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (the "DICM" prefix after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _scan(files: Iterable[Path], damaged: list[Path] | None = None) -> dict[str, list[tuple[Path, object]]]:
    """Headers (no pixels) of the DICOM image files among ``files``, grouped by Series Instance UID.

    DICOM files (with the "DICM" prefix) whose header cannot be read or lacks the image position and orientation
    (as a truncated slice does) are appended to ``damaged``, so a gap they leave can be explained.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[Path, object]]] = {}
    for path in files:
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError, KeyError):
            if damaged is not None and _looks_like_dicom(path):
                damaged.append(path)
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            image_sop = "Image Storage" in getattr(ds.get("SOPClassUID"), "name", "")
            if damaged is not None and (image_sop or "Rows" in ds or "PixelSpacing" in ds):
                damaged.append(path)
            continue
        groups.setdefault(_str(ds.get("SeriesInstanceUID")), []).append((path, ds))
    return groups


def _describe(groups: Mapping[str, list]) -> str:
    """The series of ``groups`` for a message: UID, modality, file count and description of each."""
    parts = []
    for uid, items in groups.items():
        ds = items[0][1]
        parts.append(f"{uid} ({ds.get('Modality', '?')}, {len(items)} files, {_str(ds.get('SeriesDescription'))!r})")
    return "; ".join(parts)


def _list_files(folder: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Path, list[Path]]:
    """The folder to name in messages and the files to scan: every file under a folder, or the listed files."""
    if isinstance(folder, (str, os.PathLike)):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"DICOM folder not found: {root}")
        return root, sorted(p for p in root.rglob("*") if p.is_file())
    files = [Path(f).expanduser() for f in folder]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed DICOM files do not exist, e.g. {missing[0]}")
    root = Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path(".")
    return root, files


def _choose_series(
    groups: Mapping[str, list[tuple[Path, object]]],
    root: Path,
    series_instance_uid: str | None,
    largest: bool = False,
) -> tuple[str, list[tuple[Path, object]]]:
    """The chosen (or only) series' UID and its ``(path, header)`` items; it must store one slice a file."""
    if not groups:
        raise FileNotFoundError(f"no DICOM image files (with Image Position/Orientation) found under {root}")
    if series_instance_uid is None:
        sizes = sorted((len(items) for items in groups.values()), reverse=True)
        if len(groups) > 1 and not (largest and sizes[0] > sizes[1]):
            raise SeveralSeriesError(
                f"{root} holds {len(groups)} image series; choose one by Series Instance UID: {_describe(groups)}",
                [(uid, len(items), _str(items[0][1].get("SeriesDescription"))) for uid, items in groups.items()],
            )
        series_instance_uid = max(groups, key=lambda u: len(groups[u]))
        if len(groups) > 1:
            log.warning(
                "%s holds %d image series; reading the largest, %s (%d files) of: %s",
                root,
                len(groups),
                series_instance_uid,
                sizes[0],
                _describe(groups),
            )
    if series_instance_uid not in groups:
        raise ValueError(f"series {series_instance_uid} not found under {root}; found: {_describe(groups)}")
    items = groups[series_instance_uid]
    path, first = items[0]
    if _str(first.get("SOPClassUID")) in ENHANCED_SOP_CLASSES or int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"{path} is a multi-frame (enhanced) image; only one-slice-per-file series are read")
    return series_instance_uid, items


def _image_plane(items: list[tuple[Path, object]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row, column and normal directions shared by every slice (same orientation and size, orthonormal)."""
    first = items[0][1]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    row, col = iop[:3], iop[3:]
    rows, cols = int(first.Rows), int(first.Columns)
    for path, ds in items:
        other = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if np.max(np.abs(other - iop)) > 1e-4:
            raise ValueError(f"{path} has orientation {other.tolist()} unlike the series' {iop.tolist()}")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ValueError(f"{path} is {ds.Rows}x{ds.Columns} pixels unlike the series' {rows}x{cols}")
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3 or abs(float(np.dot(row, col))) > 1e-3:
        raise ValueError(f"Image Orientation (Patient) {iop.tolist()} is not two orthonormal directions")
    return row, col, normal


def _sort_slices(
    items: list[tuple[Path, object]], normal: np.ndarray, series_instance_uid: str, damaged: Sequence[Path] = ()
) -> tuple[list[tuple[Path, object]], np.ndarray, float]:
    """The items sorted along ``normal``, their positions and the slice spacing; no duplicates, gaps or tilt.

    ``damaged``: unreadable DICOM files found beside the series, named in the message when slices are missing.
    """
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    items = [items[i] for i in order]
    positions, distance = positions[order], distance[order]
    if len(items) == 1:
        ds = items[0][1]
        return items, positions, float(ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0)
    steps = np.diff(distance)
    if np.min(steps) < 1e-3:
        raise ValueError(f"two slices of series {series_instance_uid} share a position; the folder mixes acquisitions")
    dz = float(np.median(steps))
    if np.max(np.abs(steps - dz)) > max(0.01, 0.01 * dz):
        where = ""
        gap = int(np.argmax(np.abs(steps - dz)))
        if steps[gap] > dz:
            where = f" (the largest gap is after {items[gap][0].name}, {steps[gap]:.3f} mm where {dz:.3f} is usual)"
        why = "slices are missing or the series has variable spacing"
        if damaged:
            why = (
                f"{len(damaged)} DICOM file(s) in the folder cannot be read (truncated or damaged?), e.g. "
                f"{damaged[0]}; copy or export the series again"
            )
        raise ValueError(
            f"slice spacing of series {series_instance_uid} is not uniform (from {steps.min():.3f} to "
            f"{steps.max():.3f} mm){where}: {why}"
        )
    offsets = positions - positions[0] - np.outer(distance - distance[0], normal)
    if np.max(np.abs(offsets)) > 0.01 * dz + 1e-3:
        raise ValueError(
            f"slices of series {series_instance_uid} are not stacked along their normal (gantry tilt or "
            "shear); resample it to an orthogonal grid first"
        )
    return items, positions, dz


def _pixel_data_short(ds) -> bool:
    """True when uncompressed pixel data holds fewer bytes than Rows x Columns x samples x bits say (a truncated
    file), judged from the header alone so that every pydicom version words the failure alike."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or getattr(syntax, "is_compressed", True):
        return False
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated) // 8
    return len(ds.PixelData) < expected


def _decode_pixels(paths: Sequence[Path], progress: ProgressCallback | None) -> np.ndarray:
    """The slices' pixels rescaled to modality values: int16 or int32 when the rescale is integral, else float32."""
    import pydicom

    slopes, intercepts, planes = [], [], []
    for done, path in enumerate(paths, start=1):
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - the header was read before: the rest of the file is damaged
            raise PixelDecodeError(
                f"cannot read {path}: it is truncated or damaged ({type(exc).__name__}: {exc}); copy or export the "
                "series again",
                path,
                False,
                paths,
            ) from exc
        try:
            planes.append(ds.pixel_array)
        except Exception as exc:  # pydicom raises many types for missing decoders
            syntax = ds.file_meta.get("TransferSyntaxUID")
            text = " ".join(str(exc).split())
            damaged = "PixelData" not in ds or _pixel_data_short(ds) or "less than expected" in text
            advice = (
                "the pixel data is truncated or damaged; copy or export the series again"
                if damaged
                else "install the matching pydicom pixel handler (e.g. pylibjpeg) or decompress the series"
            )
            raise PixelDecodeError(
                f"cannot decode the pixels of {path} (transfer syntax {syntax}): {text}; {advice}",
                path,
                not damaged,
                paths,
            ) from exc
        slopes.append(float(ds.get("RescaleSlope", 1) or 1))
        intercepts.append(float(ds.get("RescaleIntercept", 0) or 0))
        if progress is not None:
            progress("read DICOM series", done, len(paths), path.name)
    raw = np.stack(planes)
    slope, intercept = np.asarray(slopes)[:, None, None], np.asarray(intercepts)[:, None, None]
    integral = np.all(slope == np.round(slope)) and np.all(intercept == np.round(intercept))
    values = raw.astype(np.float64) * slope + intercept
    if integral and values.min() >= -32768 and values.max() <= 32767:
        return values.astype(np.int16)
    if integral and np.abs(values).max() < 2**31:
        return values.astype(np.int32)
    return values.astype(np.float32)


def read_series(
    folder: str | os.PathLike | Sequence[str | os.PathLike],
    series_instance_uid: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    largest: bool = False,
) -> DicomSeries:
    """Read one CT or MR image series (one file a slice) from a folder (searched recursively) or a list of files.

    Args:
        folder: directory holding the series' files (other files and series may be present), or the files
            themselves (as a DICOM database lists them).
        series_instance_uid: which series to read when the folder holds several.
        progress: optional callback ``(stage, done, total, message)``, one step per slice read.
        largest: when the folder holds several series and none is chosen, read the one with the most files (one
            warning line) instead of refusing; series of equal largest size are still refused.

    Returns:
        The :class:`DicomSeries`; voxels are rescaled to modality values (int16 when the rescale is integral, else
        float32), slices sorted along the slice normal.

    Raises:
        FileNotFoundError: no folder (or a listed file is missing), or no DICOM image in it.
        ValueError: mixed orientations or sizes, missing or duplicate slices (unreadable DICOM files beside them are
            named), gantry tilt, or enhanced (multi-frame) objects; :class:`SeveralSeriesError` when several series
            and none chosen; :class:`PixelDecodeError` when a slice's pixels are truncated or cannot be decoded.
    """
    root, files = _list_files(folder)
    damaged: list[Path] = []
    uid, items = _choose_series(_scan(files, damaged), root, series_instance_uid, largest)
    first = items[0][1]  # the first file found: its attributes stand for the series'
    position = _str(first.get("PatientPosition"))
    if position and position not in PATIENT_POSITIONS:  # not carried into any output: a warning is enough
        log.warning(
            "series %s in %s: Patient Position %r is not a DICOM defined term (%s); it is ignored",
            uid,
            root,
            position,
            ", ".join(PATIENT_POSITIONS),
        )
    row, col, normal = _image_plane(items)
    items, positions, dz = _sort_slices(items, normal, uid, damaged)
    pixel_spacing = [float(v) for v in first.PixelSpacing]
    array = _decode_pixels([path for path, _ in items], progress)
    direction = np.column_stack([row, col, normal])
    volume = Volume(array, (pixel_spacing[1], pixel_spacing[0], dz), tuple(positions[0]), tuple(direction.ravel()))
    log.debug("read series %s: %d slices of %dx%d", uid, len(items), int(first.Rows), int(first.Columns))
    series_number = first.get("SeriesNumber", None)
    return DicomSeries(
        volume=volume,
        sop_instance_uids=tuple(_str(ds.SOPInstanceUID) for _, ds in items),
        positions=positions,
        sop_class_uid=_str(first.get("SOPClassUID")),
        study_instance_uid=_str(first.get("StudyInstanceUID")),
        series_instance_uid=uid,
        frame_of_reference_uid=_str(first.get("FrameOfReferenceUID")),
        modality=_str(first.get("Modality")),
        patient={k: _str(first.get(k)) for k in PATIENT_KEYWORDS},
        study={k: _str(first.get(k)) for k in STUDY_KEYWORDS},
        series_description=_str(first.get("SeriesDescription")),
        series_number=None if series_number in (None, "") else int(series_number),
        files=tuple(path for path, _ in items),
    )

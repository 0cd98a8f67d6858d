"""The checks on a volume file's own bytes before (and after) SimpleITK reads it, and the error they raise.

SimpleITK hides what these find (issue 16): its NIfTI reader zero-fills a short voxel block and turns NaN/Inf into 0,
and MetaIO reports short voxel data as a missing file. So :func:`precheck_file` scans the raw bytes itself, a bounded
chunk at a time: NIfTI (.nii, .nii.gz) complex voxels, truncation and non-finite voxels, an uncompressed MetaImage's
short voxel data. :func:`check_finite` refuses NaN/Inf in a read array, :func:`declared_size` sizes an image from its
header alone for an allocation failure's message. Every refusal is a :class:`VolumeReadError` that names the file
and what to do. MedDINOv3Core/volume_io.py, the one module that reads and writes volume files, calls these.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class VolumeReadError(ValueError):
    """An input that cannot be used as a 3D scalar volume; the message names the file and what to do."""


def check_finite(array: np.ndarray, where: str, chunk: int = 32) -> None:
    """Refuse NaN or Inf voxels of a floating-point array (counted a chunk of slices at a time)."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = sum(int(np.count_nonzero(~np.isfinite(array[k : k + chunk]))) for k in range(0, array.shape[0], chunk))
    if bad:
        raise _non_finite_error(where, bad)


def _non_finite_error(where: str, bad: int) -> VolumeReadError:
    return VolumeReadError(
        f"{where} contains {bad} non-finite voxel(s) (NaN or Inf); replace them (for example with the "
        "volume's minimum) before segmenting"
    )


def _truncated_error(where: str, declared: int, present: int) -> VolumeReadError:
    return VolumeReadError(
        f"{where} is truncated: its header declares {declared} bytes of voxel data but the file holds {present}; "
        "copy or export the volume again"
    )


# NIfTI datatype codes -> numpy kind letter and bytes (complex ones are refused, RGB/RGBA fall through to ITK).
_NIFTI_FLOAT = {16: 4, 64: 8}
_NIFTI_COMPLEX = {32: "complex64", 1792: "complex128", 2048: "complex256"}
_CHUNK = 1 << 24  # 16 MiB per read: bounded memory on any volume size


def _nifti_header(head: bytes, where: str) -> tuple[str, int, int, int, int] | None:
    """(byte order, datatype, bitpix, voxel count, vox_offset) of a NIfTI-1/2 header, or None if not NIfTI."""
    import struct

    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset, header_size = int(struct.unpack(order + "f", head[108:112])[0]), 348
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            offset, header_size = struct.unpack(order + "q", head[168:176])[0], 540
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 0 for d in dims[1 : ndim + 1]):
        raise VolumeReadError(f"{where} has an invalid NIfTI header (dim = {list(dims)}); export the volume again")
    count = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=np.int64))
    return order, int(datatype), int(bitpix), count, max(offset, header_size)


def _gzip_length(path: Path) -> int:
    """The uncompressed length modulo 2**32 that a gzip file's trailer records (ISIZE, its last 4 bytes)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _scan_nifti(path: Path, where: str, quick: bool = False) -> None:
    """One streaming pass over a NIfTI file's voxel block: refuse complex voxels, truncated files and NaN/Inf.

    SimpleITK's NIfTI reader zero-fills a short voxel block and turns NaN/Inf into 0, so these checks read the raw
    bytes themselves (gzip through the gzip module), a bounded chunk at a time. ``quick``: integer voxels (no NaN to
    find) in a gzip file whose trailer records exactly the header's size skip the pass; a cut stream ends in other
    bytes, and damage inside the stream fails the CRC check of SimpleITK's read (``_read_file`` then scans in full
    for the exact reason).
    """
    import gzip
    import zlib

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
            info = _nifti_header(head, where)
            if info is None:
                return
            order, datatype, bitpix, count, offset = info
            if datatype in _NIFTI_COMPLEX:
                raise VolumeReadError(
                    f"{where} holds complex voxels ({_NIFTI_COMPLEX[datatype]}); MedDINOv3 needs a real-valued "
                    "scalar volume: save the magnitude (or real part) first"
                )
            declared = count * max(int(bitpix), 0) // 8
            itemsize = _NIFTI_FLOAT.get(datatype)
            if quick and itemsize is None and opener is gzip.open and _gzip_length(path) == (offset + declared) % 2**32:
                return
            dtype = np.dtype(f"{order}f{itemsize}") if itemsize else None
            pos = len(head)
            buffer = head[offset:] if offset < pos else b""
            if offset > pos:
                skipped = len(f.read(offset - pos))
                pos += skipped
                if pos < offset:
                    raise _truncated_error(where, declared, 0)
            got, bad, carry = 0, 0, b""
            while True:
                data = buffer or f.read(_CHUNK)
                buffer = b""
                if not data or got >= declared:
                    break
                data = data[: declared - got]
                got += len(data)
                if dtype is not None:
                    data = carry + data
                    usable = len(data) - len(data) % dtype.itemsize
                    values = np.frombuffer(data[:usable], dtype=dtype)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                    carry = data[usable:]
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise VolumeReadError(
            f"{where} is truncated or corrupt (the gzip stream is cut or damaged: {exc}); copy or export the "
            "volume again"
        ) from exc
    if got < declared:
        raise _truncated_error(where, declared, got)
    if bad:
        raise _non_finite_error(where, bad)


def _meta_header(path: Path) -> tuple[dict[str, str], int]:
    """The key = value fields of a MetaImage header and the byte offset where LOCAL voxel data starts."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                continue
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile" or offset > 1 << 16:
                break
    return fields, offset


_META_BYTES = {"char": 1, "uchar": 1, "short": 2, "ushort": 2, "int": 4, "uint": 4, "long": 8, "ulong": 8}
_META_BYTES |= {"long_long": 8, "ulong_long": 8, "float": 4, "double": 8}


def _check_meta_size(path: Path, where: str) -> None:
    """Refuse an uncompressed MetaImage whose voxel data is shorter than its header declares.

    ITK refuses these too, but with "File cannot be read ... No such file or directory", which misleads.
    """
    try:
        fields, offset = _meta_header(path)
        if fields.get("compresseddata", "false").lower() == "true":
            return
        dims = [int(v) for v in fields["dimsize"].split()]
        element = fields["elementtype"].lower().removeprefix("met_")
        channels = int(fields.get("elementnumberofchannels", "1"))
        datafile = fields["elementdatafile"]
    except (KeyError, ValueError, OSError):
        return  # not a header we can size; ITK decides
    if element not in _META_BYTES:
        return
    declared = int(np.prod(dims, dtype=np.int64)) * channels * _META_BYTES[element]
    if datafile.upper() == "LOCAL":
        present = path.stat().st_size - offset
    elif (path.parent / datafile).is_file() and " " not in datafile and "%" not in datafile:
        present = (path.parent / datafile).stat().st_size
    else:
        return
    if present < declared:
        raise _truncated_error(where, declared, present)


def precheck_file(path: Path, where: str, suffix: str, quick: bool = True) -> None:
    """The checks that must read the file's own bytes, because SimpleITK hides what they find (see issue 16);
    ``suffix``: the file's image suffix (volume_io.image_suffix)."""
    if suffix in (".nii", ".nii.gz"):
        _scan_nifti(path, where, quick)
    elif suffix in (".mha", ".mhd"):
        _check_meta_size(path, where)


def declared_size(path: Path) -> str:
    """ "size (x, y, z) of <pixel type>, N GiB" from the header alone, or "" if the header cannot be read."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(int(n) for n in reader.GetSize())
        probe = sitk.Image([1] * len(size), reader.GetPixelID(), reader.GetNumberOfComponents())
        total = int(np.prod(size, dtype=np.float64)) * sitk.GetArrayViewFromImage(probe).nbytes
        kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        return f"its header declares size {size} of {kind}, {total / 2**30:.1f} GiB"
    except Exception:  # noqa: BLE001 - only to enrich a message
        return ""

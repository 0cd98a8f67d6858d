"""pydicom 2.4 and 3.x: the one call of ours whose spelling differs between them.

Slicer 5.10 bundles pydicom 2.4.4, Slicer 5.12 pydicom 3.0.2, and a plain ``pip install`` gets the newest 3.x; the
DICOM writers and readers of :mod:`MedDINOv3Core.dicom` work with all of them. What changed between 2.4 and 3.0, and
how this package stays on the common ground:

- writing a DICOM *file* (128-byte preamble, "DICM", File Meta Information): ``dcmwrite(path, ds,
  enforce_file_format=True)`` in 3.x, ``dcmwrite(path, ds, write_like_original=False)`` in 2.4 (3.x deprecates that
  keyword and 4.0 removes it). :func:`write_dicom_file` calls the one that the installed pydicom has.
- the dataset's encoding: 3.x deprecates setting ``Dataset.is_little_endian`` / ``is_implicit_VR``; both versions
  take it from the File Meta's Transfer Syntax UID when the dataset was built in memory, so the writers set only
  ``file_meta.TransferSyntaxUID`` (Explicit VR Little Endian) and never those attributes.
- unchanged in both, and all that the package uses otherwise: ``dcmread(path, stop_before_pixels=, force=)``,
  ``Dataset``, ``FileMetaDataset``, ``Dataset.set_original_encoding``, ``RawDataElement`` (positional fields),
  ``pydicom.uid.generate_uid`` / ``ExplicitVRLittleEndian``, ``pydicom.charset.default_encoding``,
  ``pydicom.errors.InvalidDicomError`` and ``Dataset.pixel_array`` for uncompressed pixels.
"""

from __future__ import annotations

import functools
import inspect
import os


@functools.lru_cache(maxsize=1)
def _has_enforce_file_format() -> bool:
    import pydicom

    return "enforce_file_format" in inspect.signature(pydicom.dcmwrite).parameters


def write_dicom_file(path: str | os.PathLike, dataset) -> None:
    """Write ``dataset`` as a conformant DICOM file (PS3.10 preamble and File Meta Information) with any pydicom.

    ``dataset.file_meta`` must hold the Media Storage SOP Class/Instance UIDs and the Transfer Syntax UID; the
    dataset is encoded in that transfer syntax.
    """
    import pydicom

    if _has_enforce_file_format():  # pydicom >= 3.0
        pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    else:  # pydicom 2.x: the same file format, under the older keyword
        pydicom.dcmwrite(path, dataset, write_like_original=False)


__all__ = ["write_dicom_file"]

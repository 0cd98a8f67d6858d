"""pydicom 2.4 (Slicer 5.10) and 3.x (Slicer 5.12, PyPI): the DICOM writers go through one helper.

.ci/slicer510 runs Testing/dicom with pydicom 2.4.4; the main run with pydicom 3.x.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from MedDINOv3Core.dicom.compat import write_dicom_file

ROOT = Path(__file__).resolve().parents[2]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def test_write_dicom_file_writes_the_part10_file_format(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientName = SECONDARY_CAPTURE, uid, "Doe^Jane"
    write_dicom_file(tmp_path / "x.dcm", ds)
    raw = (tmp_path / "x.dcm").read_bytes()
    assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM"  # preamble and prefix
    assert raw[132:136] == b"\x02\x00\x00\x00" and raw[136:138] == b"UL"  # File Meta group length, explicit VR
    back = pydicom.dcmread(tmp_path / "x.dcm")  # no force: a conformant file
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.FileMetaInformationVersion == b"\x00\x01"
    assert str(back.PatientName) == "Doe^Jane" and back.SOPInstanceUID == uid


def test_no_version_specific_pydicom_call_outside_the_helper():
    """dcmwrite's keywords and the encoding attributes differ between pydicom 2.4 and 3.x: only compat.py may use
    them (a direct ``dcmwrite(..., enforce_file_format=True)`` crashed the export on Slicer 5.10)."""
    pattern = re.compile(r"dcmwrite\(|enforce_file_format|write_like_original|\.is_little_endian|\.is_implicit_VR")
    offenders = []
    for folder in ("MedDINOv3Core", "MedDINOv3Slicer", "training"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "compat.py" and path.parent.name == "dicom":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []

"""Segment terminology of model-card labels: coded concepts and the form 3D Slicer's ``.seg.nrrd`` files store.

A label's ``terminology`` (``Label.terminology`` in MedDINOv3Core/card.py) holds coded entries under
``category``, ``type``, ``typeModifier``, ``anatomicRegion`` and ``anatomicRegionModifier``, each either a
``[scheme, code, meaning]`` sequence or a mapping with scheme/code/meaning keys (or DICOM's CodingSchemeDesignator/
CodeValue/CodeMeaning). This module depends only on the standard library, so the file writers
(MedDINOv3Core/volume_io.py, MedDINOv3Core/dicom/rtstruct.py) and the Slicer module share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_CODED = ("category", "type", "typeModifier", "anatomicRegion", "anatomicRegionModifier")


def coded_concept(value: Any) -> list[str]:
    """[scheme, code value, meaning] from a coded terminology entry: a 3-sequence or a mapping with scheme/code/meaning
    (or DICOM's CodingSchemeDesignator/CodeValue/CodeMeaning) keys."""
    if isinstance(value, Mapping):
        return [
            str(value.get("scheme", value.get("CodingSchemeDesignator", ""))),
            str(value.get("code", value.get("CodeValue", ""))),
            str(value.get("meaning", value.get("CodeMeaning", ""))),
        ]
    items = [str(v) for v in value]
    if len(items) != 3:
        raise ValueError(f"a coded terminology entry needs [scheme, code, meaning], got {value!r}")
    return items


def slicer_terminology(terminology: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A label's terminology in slicerio's dict form, or None when it lacks category or type."""
    if not terminology or "category" not in terminology or "type" not in terminology:
        return None
    out: dict[str, Any] = {
        "contextName": str(terminology.get("contextName", SLICER_CONTEXT)),
        "anatomicContextName": str(terminology.get("anatomicContextName", ANATOMIC_CONTEXT)),
    }
    for key in _CODED:
        if key in terminology and terminology[key] is not None:
            out[key] = coded_concept(terminology[key])
    return out

"""3D Slicer segmentation files (``.seg.nrrd``): a labelmap plus segment names, colours and terminology (slicerio).

One segment per model label (``labelValue`` = the label's value), all in layer 0, with the labelmap's exact
geometry in LPS. Label terminology is taken from ``Label.terminology``: either slicerio's form (``"category":
[scheme, code, meaning]``) or coded-concept mappings (``"category": {"scheme": ..., "code": ..., "meaning": ...}``);
a terminology without both ``category`` and ``type`` is not written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.atomic import atomic_path
from MedDINOv3Core.data.volume import Volume

log = logging.getLogger(__name__)

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


def write_segmentation(volume: Volume, path: str | os.PathLike, labels: Sequence[Any] = ()) -> Path:
    """Write a labelmap Volume as a Slicer ``.seg.nrrd``, atomically (temp name in the same folder + os.replace).

    Args:
        volume: integer labelmap (z, y, x) with its geometry.
        path: the output file (should end in ``.seg.nrrd``).
        labels: the model's labels (MedDINOv3Core.models.segmenter.Label, or card dicts); empty = one segment per
            non-zero value present, named "Segment_<value>".

    Returns:
        the written path.
    """
    import slicerio

    from MedDINOv3Core.models.segmenter import DEFAULT_COLORS, parse_labels

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

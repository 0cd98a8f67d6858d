"""DICOM: CT series in/out and RT Structure Sets (write + read).

- :mod:`.series`: :func:`write_series` and :class:`DicomSeries` (Volume + per-slice UIDs).
- :mod:`.series_reader`: :func:`read_series` (a CT series folder -> :class:`DicomSeries`).
- :mod:`.rtstruct`: :func:`write_rtstruct`, :func:`read_rtstruct`, :func:`read_rtstruct_labelmap`, :class:`RoiSpec`,
  :func:`roi_spec_from_label` (model-card label -> coded ROI).
- :mod:`.contours`: voxel-edge contour tracing and even-odd pixel-centre rasterisation.
"""

from MedDINOv3Core.dicom.rtstruct import (
    RoiSpec,
    align_to_grid,
    read_rtstruct,
    read_rtstruct_labelmap,
    read_rtstruct_rois,
    roi_spec_from_label,
    write_rtstruct,
)
from MedDINOv3Core.dicom.series import DicomSeries, write_series
from MedDINOv3Core.dicom.series_reader import read_series

__all__ = [
    "DicomSeries",
    "RoiSpec",
    "align_to_grid",
    "read_rtstruct",
    "read_rtstruct_labelmap",
    "read_rtstruct_rois",
    "read_series",
    "roi_spec_from_label",
    "write_rtstruct",
    "write_series",
]

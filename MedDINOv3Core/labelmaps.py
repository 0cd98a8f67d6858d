"""The one check that an array is a label map (integer class values, 0 the background), and its integer form.

No torch and no file format: used by the metrics, the evaluation, the segmentation training data and the Slicer
module's segmentation import, each of which words the error for its own users.
"""

from __future__ import annotations

import numpy as np


class NotALabelMap(ValueError):
    """An array that holds values other than whole numbers, or whose dtype is not numeric."""


def integer_labels(array: np.ndarray, dtype: type = np.int64, what: str = "label map") -> np.ndarray:
    """``array`` as integer labels: an integer array unchanged, a bool array as uint8 (a view), a floating-point
    array holding only finite whole numbers cast to ``dtype``.

    Args:
        array: the label values.
        dtype: the integer type a floating-point array is cast to.
        what: the array's name in the error message (e.g. "prediction").

    Raises:
        NotALabelMap: a floating-point array with a fraction, NaN or infinity, or an array of any other dtype
            (complex, strings, objects).
    """
    array = np.asarray(array)
    if array.dtype == bool:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise NotALabelMap(f"the {what} is not a label map: it holds non-integer values; give integer class values")
        return array.astype(dtype)
    raise NotALabelMap(f"the {what} has dtype {array.dtype}; give an integer label map")


def slabs(array: np.ndarray, voxels: int = 1 << 22) -> list[np.ndarray]:
    """Views of consecutive parts of ``array`` along its first axis, about ``voxels`` voxels each (for numpy calls
    that would otherwise make a 64-bit copy of a whole volume: ``np.bincount``, fancy indexing)."""
    if array.ndim == 0:
        return [array]
    step = max(1, voxels // max(1, array[0].size))
    return [array[i : i + step] for i in range(0, array.shape[0], step)]


def label_counts(array: np.ndarray, minlength: int = 0) -> np.ndarray:
    """The voxel count of every value 0, 1, ... of a non-negative integer label map (``np.bincount``, a slab at a
    time: 300 x 512 x 512 voxels need no 630 MB int64 copy)."""
    counts = np.zeros(minlength, dtype=np.int64)
    for part in slabs(np.asarray(array)):
        found = np.bincount(part.ravel(), minlength=counts.size)  # never shorter than counts
        found[: counts.size] += counts
        counts = found
    return counts


def label_values(array: np.ndarray) -> np.ndarray:
    """The distinct values of an integer label map, sorted: counted slab by slab for non-negative 8- and 16-bit maps
    (``np.unique`` sorts a copy of the whole volume), ``np.unique`` otherwise."""
    array = np.asarray(array)
    if array.size == 0 or array.dtype.kind not in "ui" or array.dtype.itemsize > 2:
        return np.unique(array)
    if array.dtype.kind == "i":
        if int(array.min()) < 0:
            return np.unique(array)
        array = array.view(np.dtype(f"u{array.dtype.itemsize}"))  # the same non-negative values
    return np.flatnonzero(label_counts(array, 1 << (8 * array.dtype.itemsize))).astype(array.dtype)


__all__ = ["NotALabelMap", "integer_labels", "label_counts", "label_values", "slabs"]

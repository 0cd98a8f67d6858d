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


__all__ = ["NotALabelMap", "integer_labels"]

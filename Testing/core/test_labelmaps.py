"""The one label-map check: integer, bool and whole-number float arrays pass; anything else raises."""

from __future__ import annotations

import numpy as np
import pytest

from MedDINOv3Core.labelmaps import NotALabelMap, integer_labels


def test_integer_bool_and_whole_floats_pass():
    ints = np.array([0, 1, 2], dtype=np.int16)
    assert integer_labels(ints) is ints
    assert integer_labels(np.array([True, False])).dtype == np.uint8
    out = integer_labels(np.array([0.0, 3.0], dtype=np.float32), np.int32)
    assert out.dtype == np.int32 and out.tolist() == [0, 3]


@pytest.mark.parametrize("values", [[0.5], [np.nan], [np.inf]])
def test_fractions_nan_and_infinity_raise(values):
    with pytest.raises(NotALabelMap, match="the prediction is not a label map: it holds non-integer values"):
        integer_labels(np.array(values), what="prediction")


def test_other_dtypes_raise():
    with pytest.raises(NotALabelMap, match="has dtype"):
        integer_labels(np.array(["a"]))

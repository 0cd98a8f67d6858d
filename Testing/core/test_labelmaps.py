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


def test_label_values_and_counts_work_slab_by_slab():
    from MedDINOv3Core.labelmaps import label_counts, label_values, slabs

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 5, (9, 7, 6)).astype(np.uint8)
    volume[3, 2, 1] = 200
    assert len(slabs(volume, voxels=84)) == 5  # two slices a slab
    assert label_values(volume).tolist() == np.unique(volume).tolist()
    assert label_counts(volume, minlength=256).tolist() == np.bincount(volume.ravel(), minlength=256).tolist()
    signed = volume.astype(np.int16)
    assert label_values(signed).tolist() == np.unique(volume).tolist()
    signed[0, 0, 0] = -2  # negative values (refused by the callers) are still listed
    assert label_values(signed)[0] == -2
    assert label_values(volume.astype(np.int64)).tolist() == np.unique(volume).tolist()

"""Corrections are training data (MedDINOv3SlicerLib.corrections, numpy only): which slices the next round learns."""

from __future__ import annotations

import numpy as np
import pytest

from MedDINOv3SlicerLib.corrections import (
    after_result,
    after_training,
    changed_slices,
    remap,
    training_labels,
)

SHAPE = (6, 4, 4)


def _painted(**slices) -> np.ndarray:
    """A labelmap with ``s<k>=value`` filling slice k's top-left 2 x 2 voxels."""
    a = np.zeros(SHAPE, dtype=np.uint8)
    for key, value in slices.items():
        a[int(key[1:]), :2, :2] = value
    return a


def test_first_round_labels_the_painted_slices_and_ignores_the_rest():
    current = _painted(s1=1, s4=2)
    out = training_labels(current, ["liver", "spleen"], None)
    assert out.ignore == 3 and out.names == ["liver", "spleen"]
    assert out.slices.tolist() == [False, True, False, False, True, False]
    np.testing.assert_array_equal(out.labels[1], current[1])  # background voxels of a painted slice stay 0
    np.testing.assert_array_equal(out.labels[4], current[4])
    assert (out.labels[[0, 2, 3, 5]] == 3).all()


def test_untouched_result_slices_are_ignored_and_trained_slices_keep_the_painted_labels():
    painted = _painted(s1=1)
    first = training_labels(painted, ["liver"], None)
    record = after_training(None, first)
    result = np.ones(SHAPE, dtype=np.uint8)  # the model's guess everywhere, also over the painted slice 1
    record = after_result(record, result, ["liver"])
    again = training_labels(result.copy(), ["liver"], record)  # nothing corrected
    assert again.slices.tolist() == [False, True, False, False, False, False]
    np.testing.assert_array_equal(again.labels[1], painted[1])  # what was painted, not the result over it
    assert (again.labels[[0, 2, 3, 4, 5]] == again.ignore).all()


def test_a_corrected_result_slice_and_a_slice_repainted_to_background_are_labelled():
    record = after_result(None, np.ones(SHAPE, dtype=np.uint8), ["liver"])
    current = np.ones(SHAPE, dtype=np.uint8)
    current[2, 0, 0] = 0  # one voxel corrected
    current[5] = 0  # erased: the organ is not on this slice
    out = training_labels(current, ["liver"], record)
    assert out.slices.tolist() == [False, False, True, False, False, True]
    np.testing.assert_array_equal(out.labels[2], current[2])
    assert (out.labels[5] == 0).all()  # a whole background slice is training data
    assert (out.labels[[0, 1, 3, 4]] == out.ignore).all()


def test_a_changed_trained_slice_takes_the_newest_labels():
    record = after_training(None, training_labels(_painted(s0=1), ["liver"], None))
    record = after_result(record, np.zeros(SHAPE, dtype=np.uint8), ["liver"])
    current = _painted(s0=1)
    current[0] = 0
    current[0, 3, 3] = 1
    out = training_labels(current, ["liver"], record)
    np.testing.assert_array_equal(out.labels[0], current[0])


def test_classes_follow_names_across_rounds():
    """The result came back with the segments in another order, and the user painted a new class."""
    record = after_result(None, _painted(s0=1, s1=2), ["spleen", "liver"])  # result: slice 0 spleen, 1 liver
    current = _painted(s0=2, s1=1, s3=3)  # the same, in the node's order (liver, spleen), plus kidney on slice 3
    out = training_labels(current, ["liver", "spleen", "kidney"], record)
    assert out.names == ["liver", "spleen", "kidney"] and out.ignore == 4
    assert out.slices.tolist() == [False, False, False, True, False, False]  # only the kidney slice changed
    assert set(np.unique(out.labels[3])) == {0, 3}


def test_helpers():
    assert remap(np.array([0, 1, 2]), ["a", "b"], ["b", "c", "a"]).tolist() == [0, 3, 1]
    with pytest.raises(ValueError, match="not among"):
        remap(np.array([1]), ["a"], ["b"])
    assert changed_slices(_painted(s2=1), None).tolist() == [False, False, True, False, False, False]
    with pytest.raises(ValueError, match="differs from the segmentation"):
        changed_slices(np.zeros(SHAPE), np.zeros((2, 2, 2)))


def test_an_empty_result_then_a_painted_slice():
    record = after_result(None, np.zeros(SHAPE, dtype=np.uint8), [])  # Segment found nothing
    out = training_labels(_painted(s3=1), ["liver"], record)
    assert out.slices.tolist() == [False, False, False, True, False, False] and out.names == ["liver"]

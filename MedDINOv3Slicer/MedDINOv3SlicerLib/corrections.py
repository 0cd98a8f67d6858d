"""Corrections are training data: which slices of a segmentation the next few-shot round learns from (numpy only).

The few-shot loop is paint -> Fine-tune -> Segment -> correct -> Fine-tune again. Per segmentation node the module
keeps a ``CorrectionRecord``: the labels of the slices already trained on (what the user had painted there) and the
last result the module wrote into the node. At the next Fine-tune the labelled slices are

- every slice the user changed compared with the last result (compared with an empty segmentation before the first
  result): a slice painted, corrected, or repainted to all background counts, whatever the result had there;
- the previously trained slices the user did not change (with the labels they were trained with, not with the
  result that later overwrote them);

and every other voxel is nnU-Net v2's ignore label (the highest label value): untouched result slices are not
training data (they are the model's own guess). Label values follow class NAMES (value i + 1 is ``names[i]``), so a
result whose segments came back in another order, or a new class painted in a later round, still compares right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class CorrectionRecord:
    """What the module remembers of one segmentation node (arrays (z, y, x) on the volume's grid).

    Attributes:
        names: class names; label value i + 1 is ``names[i]`` in ``trained`` and ``result``.
        trained: labels of the trained slices (meaningless elsewhere); None before the first Fine-tune.
        trained_slices: bool (z,) the slices trained on so far.
        result: the last result the module wrote into the node; None before the first Segment.
    """

    names: list[str]
    trained: np.ndarray | None = None
    trained_slices: np.ndarray | None = None
    result: np.ndarray | None = None


@dataclass(frozen=True)
class TrainingLabels:
    """One round's training labelmap: ``labels`` (values 1..len(names) classes, 0 background, ``ignore`` unlabelled),
    the class ``names``, the ``ignore`` value (len(names) + 1) and the labelled ``slices`` (bool (z,))."""

    labels: np.ndarray
    names: list[str]
    ignore: int
    slices: np.ndarray

    @property
    def n_slices(self) -> int:
        return int(np.count_nonzero(self.slices))


def _dtype(n_values: int) -> type:
    return np.uint8 if n_values <= 255 else np.uint16


def remap(labels: np.ndarray, names: Sequence[str], to_names: Sequence[str]) -> np.ndarray:
    """``labels`` (value i + 1 = ``names[i]``) with the values of ``to_names`` (every name must be in it)."""
    index = {name: i + 1 for i, name in enumerate(to_names)}
    missing = [name for name in names if name not in index]
    if missing:
        raise ValueError(f"classes {missing} are not among {list(to_names)}")
    lut = np.zeros(max(len(names) + 1, int(labels.max(initial=0)) + 1), dtype=_dtype(len(to_names) + 1))
    for i, name in enumerate(names):
        lut[i + 1] = index[name]
    return lut[labels]


def union_names(*name_lists: Sequence[str] | None) -> list[str]:
    """The names of every list, first occurrence order."""
    out: list[str] = []
    for names in name_lists:
        for name in names or ():
            if name not in out:
                out.append(str(name))
    return out


def changed_slices(current: np.ndarray, baseline: np.ndarray | None) -> np.ndarray:
    """bool (z,): the slices where ``current`` differs from ``baseline`` in any voxel (None: from all background)."""
    flat = current.reshape(current.shape[0], -1)
    if baseline is None:
        return flat.any(axis=1)
    if baseline.shape != current.shape:
        raise ValueError(f"the last result's shape {baseline.shape} differs from the segmentation's {current.shape}")
    return (flat != baseline.reshape(baseline.shape[0], -1)).any(axis=1)


def training_labels(current: np.ndarray, names: Sequence[str], record: CorrectionRecord | None) -> TrainingLabels:
    """The next round's labels from the node's current labelmap and its record (see the module docstring).

    Args:
        current: the segmentation now, (z, y, x) integer labels, value i + 1 = ``names[i]``.
        names: its class names.
        record: what was trained and written before (None: the first round).

    Returns:
        TrainingLabels; ``slices`` is empty when nothing was painted or changed.
    """
    current = np.asarray(current)
    all_names = union_names(names, record.names if record is not None else None)
    ignore = len(all_names) + 1
    cur = remap(current, names, all_names)
    baseline = trained = None
    trained_slices = np.zeros(cur.shape[0], dtype=bool)
    if record is not None:
        if record.result is not None:
            baseline = remap(record.result, record.names, all_names)
        if record.trained is not None and record.trained_slices is not None:
            if record.trained.shape != cur.shape:
                raise ValueError(f"the trained labels' shape {record.trained.shape} differs from {cur.shape}")
            trained = remap(record.trained, record.names, all_names)
            trained_slices = np.asarray(record.trained_slices, dtype=bool)
    changed = changed_slices(cur, baseline)
    labels = np.full(cur.shape, ignore, dtype=_dtype(ignore))
    keep = trained_slices & ~changed
    if trained is not None:
        labels[keep] = trained[keep]
    labels[changed] = cur[changed]
    return TrainingLabels(labels, all_names, ignore, changed | trained_slices)


def after_training(record: CorrectionRecord | None, round_labels: TrainingLabels) -> CorrectionRecord:
    """The record once a round trained on ``round_labels`` (the last result is kept: the next round compares
    with it until the module writes a new one)."""
    names = list(round_labels.names)
    trained = np.where(round_labels.labels == round_labels.ignore, 0, round_labels.labels)
    out = CorrectionRecord(names, trained.astype(_dtype(len(names) + 1)), round_labels.slices.copy())
    if record is not None and record.result is not None:
        out.result = remap(record.result, record.names, names)
    return out


def after_result(record: CorrectionRecord | None, result: np.ndarray, names: Sequence[str]) -> CorrectionRecord:
    """The record once the module wrote ``result`` (value i + 1 = ``names[i]``) into the node."""
    all_names = union_names(record.names if record is not None else None, names)
    out = CorrectionRecord(all_names, None, None, remap(np.asarray(result), names, all_names))
    if record is not None and record.trained is not None:
        out.trained = remap(record.trained, record.names, all_names)
        out.trained_slices = record.trained_slices
    return out


__all__ = [
    "CorrectionRecord",
    "TrainingLabels",
    "after_result",
    "after_training",
    "changed_slices",
    "remap",
    "training_labels",
    "union_names",
]

"""The dataset.json of an nnU-Net v2 raw dataset (no torch): one writer for every place that writes one.

Used by `python -m training phantom` (training/commands/phantom.py) and the Slicer module's training-case export
(MedDINOv3Slicer/MedDINOv3SlicerLib/logic.py); read back by MedDINOv3Core/data/nnunet_data.py
(``load_nnunet_dataset``), which also reads the extra key ``LABEL_PROPERTIES_KEY``: the classes' display properties
(colours, terminology), carried into the finetuned model card.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from MedDINOv3Core.atomic import write_json

LABEL_PROPERTIES_KEY = "meddinov3_label_properties"  # the one definition; data/nnunet_data.py imports it


def write_dataset_json(
    root: str | os.PathLike,
    labels: Sequence[Mapping[str, Any]],
    *,
    name: str,
    num_training: int,
    file_ending: str,
    description: str | None = None,
    channel_names: Mapping[str, str] | None = None,
    ignore_value: int | None = None,
) -> Path:
    """Write ``root/dataset.json`` atomically; returns its path.

    ``labels``: label dicts with at least ``name`` and ``value`` (background 0 is added); they are also stored whole
    under ``LABEL_PROPERTIES_KEY``. ``channel_names`` defaults to one CT channel. ``ignore_value``: declare nnU-Net
    v2's "ignore" label with this value (it must exceed every label value): voxels holding it are unlabelled (left
    out of training), the rest of a painted slice, 0 included, is labelled (``IGNORE_NAME``, nnunet_data).
    """
    if ignore_value is not None:
        top = max([0] + [int(label["value"]) for label in labels])
        if isinstance(ignore_value, bool) or not isinstance(ignore_value, int) or ignore_value <= top:
            raise ValueError(f"ignore_value must be an integer above every label value ({top}), got {ignore_value!r}")
    meta: dict[str, Any] = {"name": name}
    if description is not None:
        meta["description"] = description
    meta["channel_names"] = dict(channel_names) if channel_names is not None else {"0": "CT"}
    meta["labels"] = {"background": 0, **{label["name"]: label["value"] for label in labels}}
    if ignore_value is not None:
        meta["labels"]["ignore"] = ignore_value
    meta["numTraining"] = num_training
    meta["file_ending"] = file_ending
    meta[LABEL_PROPERTIES_KEY] = list(labels)
    return write_json(Path(root) / "dataset.json", meta)

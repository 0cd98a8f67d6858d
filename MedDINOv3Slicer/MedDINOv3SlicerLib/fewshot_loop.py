"""The few-shot loop in the module: paint -> Fine-tune -> Segment -> correct -> Fine-tune again, on ONE feature cache.

One backbone pass per volume serves every click, PCA map, few-shot training and few-shot prediction: the loop's
jobs are ``JobChain``s whose first step extracts the volume's features only when the module has no cache for this
volume and this model's backbone yet (``MedDINOv3Logic.features_for``); training and prediction then get
``--features CACHE`` and run the head alone. A few-shot model trained on a cache serves from that cache too (its
backbone is its base model's), so the second round starts no feature job at all.

Corrections are training data (``corrections``): per segmentation node the loop remembers the trained slices and
the last result it wrote; a Fine-tune exports the changed + trained slices as labels and everything else as
nnU-Net's ignore label. The instant preview labels every patch from the cache by its nearest painted features.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3SlicerLib.corrections import (
    CorrectionRecord,
    TrainingLabels,
    after_result,
    after_training,
    training_labels,
)
from MedDINOv3SlicerLib.geometry import volume_from_node
from MedDINOv3SlicerLib.job_chain import JobChain
from MedDINOv3SlicerLib.preview_overlay import PreviewOverlay
from MedDINOv3SlicerLib.segmentation import segmentation_to_labelmap, unique_names

log = logging.getLogger(__name__)

STEP_FEATURES, STEP_TRAINING, STEP_PREDICTING = "features", "training", "predicting"


def is_fewshot_model(reference: str | os.PathLike) -> bool:
    """True when ``reference`` is a model-card folder whose head is the few-shot head (the card's config.json read
    through MedDINOv3Core.card: plain data, no torch). A folder that is no readable card is not one."""
    from MedDINOv3Core.card import load_model_card

    try:
        head = load_model_card(reference).head or {}
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and head.get("type") == "fewshot"


class FewShotLoop:
    """The loop's state and jobs over a ``MedDINOv3Logic`` (see the module docstring).

    Args:
        logic: the module's logic (scene, models, jobs, feature caches).
    """

    def __init__(self, logic) -> None:
        self.logic = logic
        self.records: dict[str, CorrectionRecord] = {}  # segmentation node id -> what was trained / written
        self.preview = PreviewOverlay(logic.scene)

    # ------------------------------------------------------------------------------------------- features

    def features_step(self, volume_node, model: str, device: str):
        """The chain step that makes sure the volume has a cache for ``model``'s backbone (None when it has)."""

        def make(_previous):
            if self.logic.features_for(volume_node, model) is not None:
                return None
            return self.logic.explore_job(volume_node, model, device=device)

        return (STEP_FEATURES, make)

    def _features(self, volume_node, model: str) -> Path:
        path = self.logic.features_for(volume_node, model)
        if path is None:
            raise RuntimeError(f"the features of '{volume_node.GetName()}' for model '{model}' are missing")
        return path

    # --------------------------------------------------------------------------------------- corrections

    def current_labels(self, volume_node, segmentation_node, segment_ids: Sequence[str] | None = None):
        """(labelmap Volume on the volume's grid, label table with unique names) of the segmentation now."""
        labelmap, labels = segmentation_to_labelmap(segmentation_node, volume_node, segment_ids)
        return labelmap, unique_names(labels)

    def round_labels(
        self, volume_node, segmentation_node, segment_ids: Sequence[str] | None = None
    ) -> tuple[TrainingLabels, list[dict[str, Any]], Volume]:
        """This round's training labels (changed + trained slices, the rest ignored), the label table, the grid."""
        labelmap, labels = self.current_labels(volume_node, segmentation_node, segment_ids)
        record = self.records.get(segmentation_node.GetID())
        out = training_labels(labelmap.array, [label["name"] for label in labels], record)
        if not out.n_slices:
            what = "correct a slice of the result" if record is not None else "paint a few slices first"
            raise ValueError(f"segmentation '{segmentation_node.GetName()}' has no new labelled slices; {what}")
        by_name = {label["name"]: label for label in labels}
        table = [dict(by_name.get(name, {"name": name}), value=i + 1) for i, name in enumerate(out.names)]
        return out, table, labelmap

    def export_round(self, volume_node, segmentation_node, dataset_dir, segment_ids=None) -> TrainingLabels:
        """Write the volume and this round's labels (with nnU-Net's ignore label) as an nnU-Net v2 raw dataset."""
        from MedDINOv3Core.data.nnunet_dataset import write_dataset_json
        from MedDINOv3Core.volume_io import write_volume

        root = Path(dataset_dir)
        out, table, labelmap = self.round_labels(volume_node, segmentation_node, segment_ids)
        write_volume(volume_from_node(volume_node), root / "imagesTr" / "case_0000.nrrd")
        write_volume(labelmap.with_array(out.labels), root / "labelsTr" / "case.nrrd")
        write_dataset_json(
            root, table, name=root.name, num_training=1, file_ending=".nrrd", ignore_value=int(out.ignore)
        )
        log.info("exported %s: %d classes, %d labelled slices (others ignored)", root, len(table), out.n_slices)
        return out

    def record_result(self, volume_node, segmentation_node) -> None:
        """Remember what the module just wrote into ``segmentation_node`` (the next round compares with it)."""
        key = segmentation_node.GetID()
        if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:  # an empty result: nothing found
            shape = volume_from_node(volume_node).shape
            self.records[key] = after_result(self.records.get(key), np.zeros(shape, dtype=np.uint8), [])
            return
        labelmap, labels = self.current_labels(volume_node, segmentation_node)
        self.records[key] = after_result(self.records.get(key), labelmap.array, [label["name"] for label in labels])

    def forget(self, segmentation_node) -> None:
        """Start this node's loop afresh (its painted slices are again all that counts)."""
        self.records.pop(segmentation_node.GetID(), None)

    # ------------------------------------------------------------------------------------------------ jobs

    def finetune_job(
        self,
        volume_node,
        segmentation_node,
        base_model: str,
        name: str | None = None,
        device: str = "auto",
        extra_overrides: Iterable[str] = (),
        segment_ids: Sequence[str] | None = None,
    ) -> JobChain:
        """Features (when missing) then few-shot training on this round's slices; ``result()`` is the card folder.

        The labels are checked and exported before any job starts (a clear error when nothing new was painted).
        """
        logic = self.logic
        folder = logic._job_dir("fewshot")
        dataset = folder / "Dataset001_Slicer"
        round_labels = self.export_round(volume_node, segmentation_node, dataset, segment_ids)
        key = segmentation_node.GetID()

        def training(_previous):
            features = self._features(volume_node, base_model)
            job = logic.finetune_job(
                volume_node,
                segmentation_node,
                base_model,
                mode="fewshot",
                name=name,
                extra_overrides=extra_overrides,
                device=None if device == "auto" else device,
                dataset_dir=dataset,
                features=features,
            )
            register = job.on_finish

            def on_finish(finished):
                card = register(finished)
                self.records[key] = after_training(self.records.get(key), round_labels)
                # the few-shot model's backbone is its base model's: the same cache serves it
                logic.feature_models.setdefault(volume_node.GetID(), set()).add(str(Path(card).resolve()))
                return card

            job.on_finish = on_finish
            return job

        return JobChain([self.features_step(volume_node, base_model, device), (STEP_TRAINING, training)])

    def segment_job(
        self, volume_node, model: str, device: str = "auto", segmentation_node=None, **options: Any
    ) -> JobChain:
        """Segment (a few-shot model: from the volume's cache, features first when missing); ``result()`` is the
        segmentation node, whose content is remembered as the last result (corrections compare with it)."""
        logic = self.logic
        fewshot = is_fewshot_model(logic.model_reference(model))

        def predicting(_previous):
            features = self._features(volume_node, model) if fewshot else None
            job = logic.segment_job(
                volume_node, model, device=device, segmentation_node=segmentation_node, features=features, **options
            )
            bring_in = job.on_finish

            def on_finish(finished):
                node = bring_in(finished)
                self.record_result(volume_node, node)
                return node

            job.on_finish = on_finish
            return job

        steps = [self.features_step(volume_node, model, device)] if fewshot else []
        return JobChain([*steps, (STEP_PREDICTING, predicting)])

    # --------------------------------------------------------------------------------------------- preview

    def preview_labels(self, volume_node, segmentation_node) -> tuple[Volume, list[dict[str, Any]]]:
        """The instant preview: every patch labelled by its nearest painted features (numpy, from the cache).

        The painted features are those of this round's labelled slices (``round_labels``: painted, corrected and
        trained slices; the rest is ignored).

        Returns:
            (labelmap on the volume node's own grid (parent transform not applied), label table).
        """
        from MedDINOv3Core.fewshot_preview import preview_labels as core_preview

        cache, _ = self.logic._cache(volume_node)
        out, table, labelmap = self.round_labels(volume_node, segmentation_node)
        labels = core_preview(cache, out.labels, ignore_value=int(out.ignore))
        local = volume_from_node(volume_node, world=False)
        return local.with_array(np.asarray(labels, dtype=out.labels.dtype)), table

    def show_preview(self, volume_node, segmentation_node):
        """Compute the preview and show it in the slice views' label layer; returns the preview labelmap node."""
        labelmap, table = self.preview_labels(volume_node, segmentation_node)
        node = self.preview.update(labelmap, table)
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        self.preview.show(volume_node)
        return node

    def hide_preview(self) -> None:
        self.preview.hide()


__all__ = ["FewShotLoop", "STEP_FEATURES", "STEP_PREDICTING", "STEP_TRAINING", "is_fewshot_model"]

"""The module's self-test body (``MedDINOv3SlicerTest`` in Slicer's "Reload and Test"; pytest on slicer-core).

It really computes, with the embedded demo model on a synthetic phantom: Segment in a background job (liver Dice
> 0.8), features in a background job, one similarity click and the PCA map (shown in the slice views), and an RT
Structure Set. ``missing_packages()`` says what is not installed, so that the Slicer test can report it instead of
failing (Slicer's runTest does not catch unittest.SkipTest).
"""

from __future__ import annotations

import tempfile
import unittest
from collections.abc import Callable
from pathlib import Path

from MedDINOv3SlicerLib import dependencies

MODEL = "meddinov3-phantom-tiny"
PHANTOM_SHAPE = (48, 192, 192)  # the embedded model's training size (Resources/models/*/RECIPE.md)
PHANTOM_SEED = 2026  # not a training seed


def missing_packages() -> list[str]:
    """The requirements of Segment (torch included) that are not met in this Python."""
    needs_torch, requirements = dependencies.needs("segment")
    return dependencies.unmet(([dependencies.TORCH_REQUIREMENT] if needs_torch else []) + requirements)


def segment_explore_export(test: unittest.TestCase, delay: Callable[[str], None], scene=None) -> None:
    """Run every action of the module on a phantom and check the results with ``test``'s assertions."""
    missing = missing_packages()
    if missing:
        raise unittest.SkipTest(
            f"Python packages missing: {', '.join(missing)}. Press Segment once in the MedDINOv3 module (it offers "
            "to install them) and run the test again."
        )
    import numpy as np
    import pydicom
    import slicer

    from MedDINOv3Core.data.phantom import LABEL_VALUES, make_phantom
    from MedDINOv3Core.metrics import dice
    from MedDINOv3SlicerLib.geometry import add_volume_node, ijk_to_ras_array
    from MedDINOv3SlicerLib.logic import MedDINOv3Logic
    from MedDINOv3SlicerLib.segmentation import segmentation_to_labelmap

    scene = scene if scene is not None else slicer.mrmlScene
    delay("Building a synthetic CT phantom")
    phantom = make_phantom(PHANTOM_SHAPE, seed=PHANTOM_SEED)
    volume_node = add_volume_node(scene, phantom.ct, "MedDINOv3 phantom")
    logic = MedDINOv3Logic(scene)
    try:
        test.assertIn(MODEL, [model["name"] for model in logic.list_models()])

        delay(f"Segmenting with {MODEL}")
        segmentation_node = logic.segment(volume_node, MODEL, device="cpu")
        labelmap, labels = segmentation_to_labelmap(segmentation_node, volume_node)
        liver_values = [label["value"] for label in labels if label["name"] == "liver"]
        test.assertEqual(len(liver_values), 1, "the segmentation has no (or several) 'liver' segments")
        liver = labelmap.array == liver_values[0]
        truth = phantom.labels.array == LABEL_VALUES["liver"]
        test.assertEqual(liver.shape, truth.shape)
        liver_dice = dice(liver.astype(np.uint8), truth.astype(np.uint8), labels=[1])[1]
        delay(f"Liver Dice {liver_dice:.3f}")
        test.assertGreater(liver_dice, 0.8)

        delay("Computing features and one similarity click")
        logic.explore_job(volume_node, MODEL, device="cpu").wait(timeout=600)
        k, j, i = (int(round(c)) for c in np.argwhere(truth).mean(axis=0))
        ras = (ijk_to_ras_array(phantom.ct) @ np.array([i, j, k, 1.0]))[:3]
        overlay = logic.show_similarity(volume_node, ras)
        similarity = slicer.util.arrayFromVolume(overlay)
        test.assertEqual(similarity.shape, truth.shape)
        test.assertGreater(float(similarity[k, j, i]), 0.9)  # the clicked patch is most similar to itself
        air = phantom.ct.array < -500
        test.assertGreater(float(similarity[truth].mean()), float(similarity[air].mean()))
        test.assertIs(logic.show_similarity(volume_node, ras), overlay)  # one overlay node, updated in place

        pca = logic.show_pca(volume_node)
        test.assertEqual(slicer.util.arrayFromVolume(pca).shape, (*truth.shape, 3))

        delay("Exporting an RT Structure Set")
        with tempfile.TemporaryDirectory() as folder:
            written = Path(logic.export_rtstruct(volume_node, segmentation_node, folder))
            files = [written] if written.is_file() else sorted(f for f in written.rglob("*") if f.is_file())
            rtstructs = []
            for file in files:
                try:
                    dataset = pydicom.dcmread(file, stop_before_pixels=True)
                except pydicom.errors.InvalidDicomError:
                    continue
                if dataset.Modality == "RTSTRUCT":
                    rtstructs.append(dataset)
            test.assertEqual(len(rtstructs), 1)
            test.assertIn("liver", [roi.ROIName for roi in rtstructs[0].StructureSetROISequence])
    finally:
        logic.cleanup()
    delay("MedDINOv3 test passed")


__all__ = ["MODEL", "missing_packages", "segment_explore_export"]

"""Case ``fewshot-loop`` (issue 18): one few-shot round with and without the volume's feature cache.

A CT phantom of ``--slices`` x ``--size``^2 with 3 painted slices (a quarter, a half and three quarters down) and a
base segmentation card (``--model``, e.g. the embedded phantom model for a meaningful DSC; else random weights of
``--preset``: the timings do not depend on the values). The volume's features are extracted once before timing, as
Slicer's "Compute features" does (its seconds are reported). One round = few-shot training from the painted slices
(the recipe finetune_fewshot) + whole-volume prediction:

- ``without_cache`` (the reference, the path without a cache): ``run_finetuning`` runs the backbone over the painted
  slices, then ``predict_volume`` runs the whole few-shot model over every slice;
- ``with_cache``: ``run_finetuning(features=cache)`` and ``fewshot_cache.predict_from_cache`` (the head alone).

Metrics: the voxel agreement of ``predict_from_cache`` with ``predict_volume`` for the same few-shot model, and the
mean DSC on the unpainted slices of each variant against the phantom's truth.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from training.bench import BenchSettings, Case, Prepared
from training.bench.common import phantom_ct, segmentation_model, slices

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "finetune_fewshot.yaml"


def dsc_unpainted(pred: np.ndarray, truth: np.ndarray, painted: list[int]) -> float:
    """Mean DSC over the labels painted, on the slices that were not painted."""
    others = [z for z in range(truth.shape[0]) if z not in painted]
    scores = []
    for v in np.unique(truth[painted]):
        a, b = pred[others] == v, truth[others] == v
        if v and (a.any() or b.any()):
            scores.append(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))
    return round(float(np.mean(scores)), 4) if scores else float("nan")


def _painted_dataset(root: Path, phantom, painted: list[int]):
    """An nnU-Net raw dataset of the phantom whose label map holds only the painted slices; returns the CT read back."""
    from MedDINOv3Core.data.nnunet_dataset import write_dataset_json
    from MedDINOv3Core.data.phantom import phantom_label_table
    from MedDINOv3Core.volume_io import read_volume, write_volume

    write_volume(phantom.ct, root / "imagesTr" / "case_0000.nii.gz")
    labels = np.zeros_like(phantom.labels.array)
    labels[painted] = phantom.labels.array[painted]
    write_volume(phantom.labels.with_array(labels), root / "labelsTr" / "case.nii.gz")
    write_dataset_json(root, phantom_label_table(), name="painted", num_training=1, file_ending=".nii.gz")
    return read_volume(root / "imagesTr" / "case_0000.nii.gz")


def _fewshot_setup(settings: BenchSettings) -> Prepared:
    from MedDINOv3Core.extraction import extract_features
    from MedDINOv3Core.fewshot_cache import predict_from_cache
    from MedDINOv3Core.inference import predict_volume
    from MedDINOv3Core.train.finetune import load_finetune_config, run_finetuning
    from MedDINOv3Core.weights import load_model, save_model_card

    tmp = Path(tempfile.mkdtemp(prefix="bench-fewshot-"))
    model, card = segmentation_model(settings, n_labels=7)
    base = settings.model or save_model_card(tmp / "base", card, model.state_dict())
    n = slices(settings)
    painted = sorted({n // 4, n // 2, (3 * n) // 4})
    phantom = phantom_ct(settings, z_mm=2.5)
    ct = _painted_dataset(tmp / "ds", phantom, painted)
    t = time.perf_counter()
    cache = extract_features(model, card, ct, cache_dir=tmp / "cache", batch_size=settings.batch_size)
    extract_s = time.perf_counter() - t
    del model
    config = load_finetune_config(
        RECIPE, {"data": str(tmp / "ds"), "init_from": str(base), "output_dir": str(tmp / "run")}
    )
    counter = itertools.count()
    models: dict[str, tuple] = {}

    def round_trip(name: str, with_cache: bool):
        def call():
            out = tmp / f"{name}-{next(counter)}"
            result = run_finetuning(config.replace(output_dir=str(out), features=str(cache.path) if with_cache else ""))
            few, few_card = load_model(result.best, device="cpu")
            models[name] = (few, few_card)
            if with_cache:
                labels = predict_from_cache(few, few_card, ct, cache, batch_size=settings.batch_size).labelmap.array
            else:
                labels = predict_volume(few, few_card, ct, device="cpu", batch_size=settings.batch_size).labelmap.array
            shutil.rmtree(out, ignore_errors=True)
            return labels

        return call

    def metrics(outputs, medians):
        few, few_card = models["without_cache"]
        same_model = predict_from_cache(few, few_card, ct, cache, batch_size=settings.batch_size).labelmap.array
        truth = phantom.labels.array
        return {
            "cache_extract_s": round(extract_s, 3),
            "agreement_cache_vs_full_model_same_head": round(float(np.mean(same_model == outputs["without_cache"])), 6),
            "dsc_unpainted_without_cache": dsc_unpainted(outputs["without_cache"], truth, painted),
            "dsc_unpainted_with_cache": dsc_unpainted(outputs["with_cache"], truth, painted),
        }

    return Prepared(
        {"without_cache": round_trip("without_cache", False), "with_cache": round_trip("with_cache", True)},
        reference="without_cache",
        settings={
            "volume": list(ct.shape),
            "spacing_xyz_mm": list(ct.spacing),
            "painted_slices": painted,
            "model": card.name,
            "trained": bool(settings.model),
            "recipe": RECIPE.stem,
            "cache_dim": cache.dim,
        },
        metrics=metrics,
        per_item=ct.shape[0],
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),  # the dataset, cards and cache: GBs at 300 slices
    )


CASES = (
    Case(
        "fewshot-loop",
        "one few-shot round (train from 3 painted slices + predict the volume): without vs with the feature cache",
        _fewshot_setup,
    ),
)

"""The few-shot loop on a feature cache (issue 18): raw tokens recovered from the cache, few-shot training and
whole-volume prediction with no backbone pass (agreeing with the full model), warm starts, mismatch errors, the
"ignore" label contract and the numpy-only instant preview."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDINOv3Core.data.nnunet_data import IGNORED, load_nnunet_dataset
from MedDINOv3Core.data.nnunet_dataset import write_dataset_json
from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
from MedDINOv3Core.data.preprocess import prepare_volume
from MedDINOv3Core.extraction import extract_features
from MedDINOv3Core.feature_cache import FeatureCache, FeatureCacheError
from MedDINOv3Core.fewshot_cache import padded_slices, predict_from_cache
from MedDINOv3Core.fewshot_preview import preview_labels, preview_patches
from MedDINOv3Core.inference import predict_volume
from MedDINOv3Core.resource_files import resource_path
from MedDINOv3Core.train.finetune import load_finetune_config, run_finetuning
from MedDINOv3Core.volume_io import read_volume, write_volume
from MedDINOv3Core.weights import load_model
from training.bench.case_fewshot import dsc_unpainted

SHAPE = (16, 64, 64)
SPACING = (2.8125, 2.8125, 8.0)  # the phantom model's in-plane spacing: an 8 x 8 patch grid
PAINTED = [3, 8, 12]
RECIPE = Path(__file__).resolve().parents[2] / "training" / "configs" / "finetune_fewshot.yaml"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A painted phantom as an nnU-Net dataset, the phantom model, the volume's cache and a few-shot round trained
    from the cache."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("fewshot")
    phantom = make_phantom(SHAPE, spacing=SPACING, seed=42)
    root = tmp / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_volume(phantom.ct, root / "imagesTr" / "case_0000.nii.gz")
    painted = np.zeros_like(phantom.labels.array)
    painted[PAINTED] = phantom.labels.array[PAINTED]
    write_volume(phantom.labels.with_array(painted), root / "labelsTr" / "case.nii.gz")
    write_dataset_json(root, phantom_label_table(), name="painted", num_training=1, file_ending=".nii.gz")
    base = resource_path("models", "meddinov3-phantom-tiny")
    model, card = load_model(base, device="cpu")
    ct = read_volume(root / "imagesTr" / "case_0000.nii.gz")
    cache = extract_features(model, card, ct, cache_dir=tmp / "cache")
    config = load_finetune_config(
        RECIPE, {"data": str(root), "output": str(tmp / "round1"), "init": str(base), "features": str(cache.path)}
    )
    events = []
    calls = []

    def no_backbone(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the backbone ran although the cache matches")

    from MedDINOv3Core.models.vit import VisionTransformer

    original = VisionTransformer.get_intermediate_layers
    VisionTransformer.get_intermediate_layers = no_backbone
    try:
        result = run_finetuning(config, progress=lambda *a: events.append(a))
    finally:
        VisionTransformer.get_intermediate_layers = original
    return {
        "tmp": tmp,
        "root": root,
        "phantom": phantom,
        "ct": ct,
        "base": base,
        "model": model,
        "card": card,
        "cache": cache,
        "config": config,
        "result": result,
        "events": events,
        "calls": calls,
    }


def test_cache_recovers_the_raw_multiscale_tokens(loop):
    cache, model, card = loop["cache"], loop["model"], loop["card"]
    assert cache.n_blocks == len(model.layers) and cache.norms.dtype == np.float32
    prepared = prepare_volume(loop["ct"], card.preprocessing)
    x = padded_slices(prepared.slices(0, 4), cache.mapping.grid, model.patch_size, 0.0)
    with torch.no_grad():
        reference = model.features(x).permute(0, 2, 3, 1).numpy()
    raw = cache.raw_tokens(0, 4)
    relative = np.linalg.norm(raw - reference) / np.linalg.norm(reference)
    assert relative < 1e-3, relative  # float16 parts: measured 2e-4


def test_training_from_the_cache_runs_no_backbone_and_says_so(loop):
    assert not loop["calls"]
    features = [e for e in loop["events"] if e[0] == "features"]
    assert features[0][3] == "from cache"
    card = json.loads((loop["result"].best / "config.json").read_text())
    assert card["head"]["type"] == "fewshot" and card["inference"]["tile_size"] == []


def test_prediction_from_the_cache_equals_the_full_model(loop):
    few, few_card = load_model(loop["result"].best, device="cpu")
    full = predict_volume(few, few_card, loop["ct"], device="cpu")
    events = []
    cached = predict_from_cache(few, few_card, loop["ct"], loop["cache"], progress=lambda *a: events.append(a))
    agree = float(np.mean(full.labelmap.array == cached.labelmap.array))
    assert agree >= 0.995, agree
    assert cached.labelmap.same_geometry(loop["ct"]) and cached.labelmap.array.dtype == full.labelmap.array.dtype
    assert events[0][:1] == ("features",) and events[0][3] == "from cache" and events[-1][1:3] == (16, 16)
    assert dsc_unpainted(cached.labelmap.array, loop["phantom"].labels.array, PAINTED) >= 0.75


def test_a_second_round_warm_starts_and_mismatches_are_one_line_errors(loop):
    tmp, cache = loop["tmp"], loop["cache"]
    round2 = loop["config"].replace(output_dir=str(tmp / "round2"), init_from=str(loop["result"].best))
    result = run_finetuning(round2.replace(iterations_per_epoch=1, fewshot_pixels=256))
    few, few_card = load_model(result.best, device="cpu")
    first, _ = load_model(loop["result"].best, device="cpu")
    # one tiny step from a warm start stays close to round 1 (a cold start would not)
    delta = (few.head.out.weight - first.head.out.weight).detach().abs().max()
    assert float(delta) < 0.05
    other = make_phantom(SHAPE, spacing=SPACING, seed=7).ct
    with pytest.raises(FeatureCacheError, match="another volume"):
        predict_from_cache(few, few_card, other, cache)
    base_model, base_card = loop["model"], loop["card"]
    with pytest.raises(FeatureCacheError, match="not a few-shot model"):
        predict_from_cache(base_model, base_card, loop["ct"], cache)
    torch.nn.init.normal_(few.backbone.patch_embed.proj.weight)
    with pytest.raises(FeatureCacheError, match="another model"):
        predict_from_cache(few, few_card, loop["ct"], cache)
    fast_cache = extract_features(base_model, base_card, loop["ct"], cache_dir=tmp / "fast-cache", fast=True)
    first_card = load_model(loop["result"].best, device="cpu")[1]
    with pytest.raises(FeatureCacheError, match="extracted with --fast"):
        predict_from_cache(first, first_card, loop["ct"], fast_cache)
    with pytest.raises(ValueError, match="few-shot mode only"):
        loop["config"].replace(mode="decoder")
    bad = loop["config"].replace(output_dir=str(tmp / "bad"), spacing=(3.0, 3.0))
    with pytest.raises(FeatureCacheError, match="other preprocessing"):
        run_finetuning(bad)


def test_an_old_cache_is_refused_with_a_clear_message(loop, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(loop["cache"].path, old)
    header = json.loads((old / "header.json").read_text())
    (old / "header.json").write_text(json.dumps({**header, "version": 1}))
    (old / "norms.npy").unlink()
    with pytest.raises(FeatureCacheError, match="older format"):
        FeatureCache.open(old)


def test_ignore_label_contract(tmp_path):
    """dataset.json with an "ignore" label: its voxels are class -1, and a slice painted all background counts."""
    phantom = make_phantom((6, 32, 32), spacing=(6.0, 6.0, 10.0), seed=1)
    labels = phantom_label_table()
    ignore = max(d["value"] for d in labels) + 1
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    painted = np.full(phantom.labels.array.shape, ignore, dtype=np.uint8)
    painted[2] = phantom.labels.array[2]
    painted[4] = 0  # repainted: all background
    write_volume(phantom.ct, root / "imagesTr" / "c_0000.nii.gz")
    write_volume(phantom.labels.with_array(painted), root / "labelsTr" / "c.nii.gz")
    write_dataset_json(root, labels, name="x", num_training=1, file_ending=".nii.gz", ignore_value=ignore)
    assert json.loads((root / "dataset.json").read_text())["labels"]["ignore"] == ignore
    with pytest.raises(ValueError, match="above every label value"):
        write_dataset_json(tmp_path, labels, name="x", num_training=1, file_ending=".nii.gz", ignore_value=3)
    dataset = load_nnunet_dataset(root)
    assert dataset.ignore_value == ignore and dataset.n_classes == len(labels) + 1
    from MedDINOv3Core.data.nnunet_data import SliceData, load_case

    image, label = load_case(dataset.training[0], dataset)
    assert label.array.dtype == np.int16 and (label.array == IGNORED).sum() == 4 * 32 * 32
    config = load_finetune_config(RECIPE, {}).replace(spacing=(6.0, 6.0))
    from MedDINOv3Core.data.preprocess import PreprocessConfig

    prep = PreprocessConfig.meddinov3_demo(spacing=config.spacing)
    data = SliceData.from_cases([("c", image, label)], prep, dataset.n_classes, labelled_only=True, ignore_label=True)
    assert data.cases[0].indices.tolist() == [2, 4]
    without = SliceData.from_cases([("c", image, label)], prep, dataset.n_classes, labelled_only=True)
    assert without.cases[0].indices.tolist() == [2]


def test_instant_preview_labels_the_unpainted_slices(loop):
    cache, truth = loop["cache"], loop["phantom"].labels.array
    painted = np.zeros_like(truth)
    painted[PAINTED] = truth[PAINTED]
    values, sims, patch_labels = preview_patches(cache, painted)
    assert sims.shape == (len(values), *cache.features.shape[:3]) and 0 in values
    preview = preview_labels(cache, painted)
    assert preview.shape == truth.shape and np.array_equal(preview[PAINTED], truth[PAINTED])
    assert dsc_unpainted(preview, truth, PAINTED) >= 0.5
    with pytest.raises(ValueError, match="nothing is painted"):
        preview_labels(cache, np.zeros_like(truth))


def test_preview_imports_no_torch():
    code = "import sys, MedDINOv3Core.fewshot_preview; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

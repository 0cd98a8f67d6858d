"""Finetuning: learning on CPU (full from scratch on the phantom, then few-shot on a new phantom), exact resume,
frozen backbones, model cards that load like any other, progress/cancel, and bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedDINOv3Core.card import load_model_card
from MedDINOv3Core.convert import load_state_dict_strict
from MedDINOv3Core.data.nnunet_data import DatasetError
from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.inference import predict_volume
from MedDINOv3Core.models.fewshot_head import FewShotSegmenter
from MedDINOv3Core.progress import Cancelled, CancelToken
from MedDINOv3Core.train.finetune import FinetuneConfig, load_finetune_config, run_finetuning
from MedDINOv3Core.volume_io import write_volume
from MedDINOv3Core.weights import build_model, load_card_state_dict

SHAPE = (24, 96, 96)
SPACING = (2.5, 2.5, 4.0)  # a 240 mm field of view in plane, 96 mm along z
FEWSHOT_SEED = 42  # a phantom none of the full run's cases (seeds 0-9) comes from


def write_phantom_dataset(root: Path, seeds, shape=SHAPE, spacing=SPACING, painted: dict | None = None) -> Path:
    """An nnU-Net v2 raw dataset of phantoms; ``painted`` {seed: slices} keeps labels on those slices only."""
    from MedDINOv3Core.data.phantom import phantom_label_table

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for s in seeds:
        p = make_phantom(shape, spacing=spacing, seed=s)
        label = p.labels.array
        if painted and s in painted:
            kept = np.zeros_like(label)
            kept[painted[s]] = label[painted[s]]
            label = kept
        write_volume(p.ct, root / "imagesTr" / f"ph{s}_0000.nii.gz")
        write_volume(p.labels.with_array(label), root / "labelsTr" / f"ph{s}.nii.gz")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{d["name"]: d["value"] for d in phantom_label_table()}},
        "numTraining": len(seeds),
        "file_ending": ".nii.gz",
        "name": "phantom",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine it is 2-5x faster than two for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(tmp: Path, **changes) -> FinetuneConfig:
    base = dict(
        mode="full",
        output_dir=str(tmp / "out"),
        backbone="vit_tiny",
        backbone_patch_size=8,
        epochs=2,
        iterations_per_epoch=2,
        batch_size=2,
        crop_size=(32, 32),
        lr_decoder=2e-3,
        lr_encoder=2e-3,
        drop_path=0.0,
        device="cpu",
        val_fraction=0.0,
    )
    base.update(changes)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("small"), (0, 1), shape=(4, 40, 40), spacing=(6.0, 6.0, 20.0))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, one_thread):
    """The finetune_tiny_cpu recipe: a tiny ViT from scratch on 9 phantoms, validated on a tenth (shared by the
    learning tests; about two minutes on one core)."""
    root = write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), range(10))
    config = load_finetune_config(
        Path(__file__).resolve().parents[2] / "training" / "configs" / "finetune_tiny_cpu.yaml",
        {"data": str(root), "output": str(root / "out"), "val_cases": ["ph9"]},
    )
    return config, run_finetuning(config)


@pytest.mark.slow
def test_full_from_scratch_learns_the_phantom(full_run):
    config, result = full_run
    history = result.history
    assert [h["epoch"] for h in history] == list(range(1, config.epochs + 1))
    first, best = history[0]["val_dsc"], result.best_dsc
    assert best == max(h["val_dsc"] for h in history)
    per_class = max(history, key=lambda h: h["val_dsc"])["val_dsc_per_class"]
    print("validation DSC per epoch", [round(h["val_dsc"], 3) for h in history], per_class)
    assert best > first + 0.1
    assert best >= 0.90, f"validation DSC {best:.3f} < 0.90 (per class {per_class})"
    assert min(per_class.values()) >= 0.75, per_class
    card = load_model_card(result.best)
    assert card.provenance["val_cases"] == ["ph9"] and card.preprocessing["clip_low"] == -1000.0
    assert card.preprocessing["spacing"] == [2.5, 2.5]
    assert card.inference["tile_size"] == list(config.crop_size)
    assert [label["name"] for label in card.labels][:2] == ["liver", "spleen"]


@pytest.mark.slow
def test_fewshot_on_three_slices_segments_the_others(full_run, tmp_path: Path, one_thread):
    """The few-shot head on the frozen backbone of the tiny model, 3 painted slices of a NEW phantom."""
    _, result = full_run
    painted = [4, 12, 20]
    root = write_phantom_dataset(tmp_path / "fs", (FEWSHOT_SEED,), painted={FEWSHOT_SEED: painted})
    config = load_finetune_config(
        Path(__file__).resolve().parents[2] / "training" / "configs" / "finetune_fewshot.yaml",
        {"data": str(root), "output": str(tmp_path / "out"), "init": str(result.best)},
    )
    out = run_finetuning(config)
    card = load_model_card(out.best)
    assert card.task == "segmentation" and card.head["type"] == "fewshot"
    model = build_model(card)
    load_state_dict_strict(model, load_card_state_dict(out.best), "few-shot card")
    truth = make_phantom(SHAPE, spacing=SPACING, seed=FEWSHOT_SEED)
    pred = predict_volume(model, card, truth.ct, device="cpu").labelmap.array
    others = [z for z in range(SHAPE[0]) if z not in painted]
    seen = {int(v) for v in np.unique(truth.labels.array[painted])} - {0}
    scores = {}
    for v in sorted(seen):
        a, b = pred[others] == v, truth.labels.array[others] == v
        if a.any() or b.any():
            scores[v] = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    print("few-shot DSC on the unpainted slices", scores)
    assert np.mean(list(scores.values())) >= 0.8


@pytest.mark.parametrize("mode", ["full", "fewshot"])
def test_resume_is_exact(mode: str, small_dataset: Path, tmp_path: Path, one_thread):
    common = dict(data=str(small_dataset), epochs=2, augment=True, mode=mode, warmup_fraction=0.25)
    straight = run_finetuning(tiny(tmp_path / "a", **common))
    first = tiny(tmp_path / "b", **common)
    token = CancelToken()

    def stop_in_epoch_two(stage, done, total, message=""):
        if stage == "finetune" and done == 3:
            token.set()

    with pytest.raises(Cancelled):
        run_finetuning(first, progress=stop_in_epoch_two, cancel=token)
    resumed = run_finetuning(first.replace(resume=True))
    a, b = load_card_state_dict(straight.last), load_card_state_dict(resumed.last)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    with pytest.raises(ValueError, match=r"configuration differs from the checkpoint's in \['lr_decoder'\]"):
        run_finetuning(first.replace(resume=True, lr_decoder=1e-3))


def test_checkpoint_from_before_a_new_option_resumes(small_dataset: Path, tmp_path: Path, one_thread):
    """A checkpoint whose saved config lacks an option added since (warmup_fraction) resumes with its default."""
    from MedDINOv3Core.train.checkpoint import load_checkpoint, save_checkpoint

    config = tiny(tmp_path, data=str(small_dataset), epochs=1)
    run_finetuning(config)
    path = Path(config.output_dir) / "checkpoint.pt"
    state = load_checkpoint(path)
    saved = json.loads(state["config"])
    del saved["warmup_fraction"]
    saved["intensity"] = "dataset"  # before intensity "auto", which is "dataset" in full mode
    state["config"] = json.dumps(saved)
    save_checkpoint(path, state)
    resumed = run_finetuning(config.replace(resume=True, epochs=2))
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in \['warmup_fraction'\]"):
        run_finetuning(config.replace(resume=True, epochs=3, warmup_fraction=0.1))


def test_decoder_mode_keeps_the_backbone_frozen(small_dataset: Path, tmp_path: Path, one_thread):
    init = run_finetuning(tiny(tmp_path / "init", data=str(small_dataset), epochs=1))
    out = run_finetuning(tiny(tmp_path / "dec", data=str(small_dataset), mode="decoder", init_from=str(init.last)))
    before, after = load_card_state_dict(init.last), load_card_state_dict(out.last)
    backbone = [k for k in before if k.startswith("backbone.")]
    decoder = [k for k in before if k.startswith("decoder.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_frozen_backbone_checkpoints_leave_the_init_weights_out(small_dataset: Path, tmp_path: Path, one_thread):
    """A frozen backbone loaded from the init card is not written into every checkpoint (a ViT-B's 344 MB): its
    fingerprint is, resuming loads it from the init card again, and a changed init card is refused."""
    from MedDINOv3Core.train.checkpoint import git_commit, load_checkpoint
    from MedDINOv3Core.weights import save_model_card

    init = run_finetuning(tiny(tmp_path / "init", data=str(small_dataset), epochs=1))
    config = tiny(tmp_path / "dec", data=str(small_dataset), mode="decoder", init_from=str(init.last), epochs=1)
    first = run_finetuning(config)
    # best/ of the epoch just saved as last/ links last's weights file instead of writing it again
    assert (Path(first.best) / "model.safetensors").samefile(Path(first.last) / "model.safetensors")
    state = load_checkpoint(Path(config.output_dir) / "checkpoint.pt")
    assert state["model"] and not any(k.startswith("backbone.") for k in state["model"])
    assert state["git_commit"] == git_commit()  # recorded like the pretraining checkpoint's
    assert len(state["backbone_fingerprint"]) == sum(k.startswith("backbone.") for k in load_card_state_dict(init.last))
    resumed = run_finetuning(config.replace(resume=True, epochs=2))
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    before, after = load_card_state_dict(init.last), load_card_state_dict(resumed.last)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    changed = dict(before)
    changed["backbone.norm.weight"] = changed["backbone.norm.weight"] * 1.01
    save_model_card(init.last, load_model_card(init.last), changed)
    with pytest.raises(ValueError, match="backbone weights changed"):
        run_finetuning(config.replace(resume=True, epochs=3))


EMBEDDED = "meddinov3-phantom-tiny"  # the bundled segmenter (Resources/models): demo intensities, 2.8125 mm


def test_frozen_backbone_inherits_the_init_cards_preprocessing(tmp_path: Path, one_thread):
    """Decoder mode from the embedded model keeps the model's own preprocessing by default (intensity auto), which
    its frozen backbone needs (fitted to the 2 training phantoms instead, validation DSC 0.30 after 30 steps; inherited
    0.84); an explicit intensity still wins, and the card says which was used."""
    from MedDINOv3Core.hub import resolve_model

    root = write_phantom_dataset(tmp_path / "ds", (0, 1, 2), shape=(8, 96, 96), spacing=(2.5, 2.5, 12.0))
    common = dict(
        data=str(root), mode="decoder", init_from=EMBEDDED, epochs=1, iterations_per_epoch=30, crop_size=(96, 96),
        lr_decoder=3e-3, val_cases=("ph2",), augment=False,
    )  # fmt: skip
    result = run_finetuning(tiny(tmp_path / "inherit", **common))
    own = load_model_card(resolve_model(EMBEDDED)).preprocessing
    card = load_model_card(result.best)
    assert card.preprocessing == own and own["spacing"] == [2.8125, 2.8125]
    assert card.provenance["preprocessing_source"].startswith(f"inherited from {EMBEDDED} (frozen backbone")
    assert result.preprocessing_source == card.provenance["preprocessing_source"]
    assert result.best_dsc >= 0.75, result.history
    fitted = run_finetuning(tiny(tmp_path / "fitted", **{**common, "iterations_per_epoch": 1}, intensity="dataset"))
    card = load_model_card(fitted.best)
    assert card.preprocessing["mean"] != own["mean"] and card.preprocessing["spacing"] == [2.5, 2.5]
    assert card.provenance["preprocessing_source"].startswith("intensity fitted to the training cases")


def test_which_runs_inherit_the_preprocessing_slicer_included(small_dataset: Path, tmp_path: Path):
    """auto: the init card's preprocessing in the frozen-backbone modes only; the recipes Slicer's Fine-tune runs
    (with --mode and --init, no intensity) resolve to it; "init" without a card with preprocessing is an error."""
    from MedDINOv3Core.hub import resolve_model
    from MedDINOv3Core.train.finetune_setup import resolve_intensity
    from MedDINOv3SlicerLib.logic import FINETUNE_RECIPES

    card = load_model_card(resolve_model(EMBEDDED))
    recipes = Path(__file__).resolve().parents[2] / "training" / "configs"
    for mode, recipe in FINETUNE_RECIPES.items():
        config = load_finetune_config(recipes / f"{recipe}.yaml", {"mode": mode, "init": EMBEDDED})
        assert config.intensity == "auto"
        assert resolve_intensity(config, card) == ("dataset" if mode == "full" else "init"), mode
        assert resolve_intensity(config, None) == "dataset"
        assert resolve_intensity(config.replace(intensity="demo"), card) == "demo"
    with pytest.raises(ValueError, match="intensity 'init': the init 'random' is not a model card"):
        run_finetuning(tiny(tmp_path, data=str(small_dataset), intensity="init"))


def test_validation_on_small_datasets(small_dataset: Path, tmp_path: Path, one_thread):
    """3 cases: one is held out even at val_fraction 0.1; 2 cases: none can be, the DSC is measured on the
    training cases with a warning (history.json, the cards); val_fraction 0: none, best/ is the last epoch."""
    three = write_phantom_dataset(tmp_path / "three", (0, 1, 2), shape=(4, 40, 40), spacing=(6.0, 6.0, 20.0))
    held = run_finetuning(tiny(tmp_path / "held", data=str(three), val_fraction=0.1, epochs=1))
    card = load_model_card(held.best)
    assert held.validation == "held-out cases" and len(card.provenance["val_cases"]) == 1
    assert math.isfinite(held.best_dsc) and held.history[0]["validation"] == "held-out cases"
    assert card.provenance["best_selected_by"] == "the best validation DSC on the held-out cases"

    train = run_finetuning(tiny(tmp_path / "train", data=str(small_dataset), val_fraction=0.2))
    history = json.loads((tmp_path / "train" / "out" / "history.json").read_text(encoding="utf-8"))
    assert train.validation == "training cases" and math.isfinite(train.best_dsc)
    assert all(h["validation"] == "training cases" and "measured on the training cases" in h["validation_note"]
               for h in history)  # fmt: skip
    best = load_model_card(train.best).provenance
    assert best["val_cases"] == [] and best["validation"].startswith("training cases (only 2 case(s)")
    assert best["best_selected_by"] == "the best DSC on the training cases (none held out)"
    assert train.best_dsc == max(h["val_dsc"] for h in history)
    assert best["best_epoch"] == max(history, key=lambda h: h["val_dsc"])["epoch"]

    none = run_finetuning(tiny(tmp_path / "none", data=str(small_dataset), val_fraction=0.0))
    best = load_model_card(none.best).provenance
    assert none.validation == "none" and none.best_dsc == -math.inf and "val_dsc" not in none.history[-1]
    assert best["best_selected_by"] == "the last epoch (no validation)" and best["best_epoch"] == 2
    assert none.history[-1]["validation_note"] == "validation is off (val_fraction 0): best/ is the last epoch"


def test_fewshot_card_predicts_through_the_generic_loader(small_dataset: Path, tmp_path: Path, one_thread):
    out = run_finetuning(tiny(tmp_path, data=str(small_dataset), mode="fewshot", iterations_per_epoch=5))
    from MedDINOv3Core.weights import load_model

    model, card = load_model(out.best)
    assert isinstance(model, FewShotSegmenter) and card.head["type"] == "fewshot"
    p = make_phantom((4, 40, 40), spacing=(6.0, 6.0, 20.0), seed=0)
    assert predict_volume(model, card, p.ct, device="cpu").labelmap.shape == p.ct.shape


def test_progress_and_cancel(small_dataset: Path, tmp_path: Path, one_thread):
    events = []
    token = CancelToken()

    def progress(stage, done, total, message=""):
        events.append((stage, done, total))
        if stage == "finetune" and done == 3:
            token.set()

    config = tiny(tmp_path, data=str(small_dataset), epochs=3, val_fraction=0.5)
    with pytest.raises(Cancelled):
        run_finetuning(config, progress=progress, cancel=token)
    stages = [e[0] for e in events]
    assert "load" in stages and "validate" in stages and ("finetune", 2, 6) in events
    # the first epoch's checkpoint and cards survive the cancel and resume finishes the run
    assert (tmp_path / "out" / "checkpoint.pt").is_file() and (tmp_path / "out" / "best" / "config.json").is_file()
    result = run_finetuning(config.replace(resume=True))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(math.isfinite(h["val_dsc"]) for h in result.history)


def test_bad_inputs(tmp_path: Path, small_dataset: Path):
    with pytest.raises(ValueError, match="finetune mode must be one of"):
        FinetuneConfig(mode="linear")
    with pytest.raises(ValueError, match="unknown option"):
        FinetuneConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"warmup_fraction must be in \[0, 1\), got 1.0"):
        FinetuneConfig(warmup_fraction=1.0)
    with pytest.raises(ValueError, match="needs a dataset"):
        run_finetuning(FinetuneConfig(output_dir=str(tmp_path / "o")))
    with pytest.raises(DatasetError, match="val_cases"):
        run_finetuning(tiny(tmp_path, data=str(small_dataset), val_cases=("nope",)))
    with pytest.raises(DatasetError, match="no training cases left"):
        run_finetuning(tiny(tmp_path, data=str(small_dataset), val_cases=("ph0", "ph1")))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run_finetuning(tiny(tmp_path / "fresh", data=str(small_dataset), resume=True))


def head_ct_labels(hu: np.ndarray) -> np.ndarray:
    """Labels derived from the real head CT (data_fetch.py): 1 soft tissue, 2 bone, 3 air cavities inside the head.

    The head is the largest connected component of HU > -300 (dropping the head holder), filled slice by slice;
    bone is HU >= 226 inside it (InVesalius' bone threshold); air cavities are the filled head's voxels below -300.
    """
    from scipy import ndimage

    body = hu > -300
    components, n = ndimage.label(body)
    sizes = ndimage.sum_labels(body, components, index=np.arange(1, n + 1))
    head = components == 1 + int(np.argmax(sizes))
    filled = np.stack([ndimage.binary_fill_holes(s) for s in head])
    labels = np.zeros(hu.shape, np.uint8)
    labels[head] = 1
    labels[head & (hu >= 226)] = 2
    labels[filled & ~head] = 3
    return labels


@pytest.mark.slow
def test_real_head_ct_train_on_one_part_evaluate_on_another(tmp_path: Path, one_thread):
    """Trained on the lower 40 and upper 36 slices of the real head CT, validated on the 24 between (never seen)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from data_fetch import DataUnavailable, fetch_cranium_ct

    from MedDINOv3Core.data.volume import Volume
    from MedDINOv3Core.volume_io import read_volume

    try:
        ct = read_volume(fetch_cranium_ct())
    except DataUnavailable as exc:
        pytest.skip(str(exc))
    labels = head_ct_labels(ct.array)
    root = tmp_path / "head"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name, z in (("lower", slice(0, 40)), ("middle", slice(44, 68)), ("upper", slice(72, 108))):
        origin = ct.index_to_physical([0, 0, z.start])
        part = Volume(ct.array[z], ct.spacing, tuple(origin), ct.direction)
        write_volume(part, root / "imagesTr" / f"{name}_0000.nii.gz")
        write_volume(part.with_array(labels[z]), root / "labelsTr" / f"{name}.nii.gz")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "soft tissue": 1, "bone": 2, "air cavity": 3},
        "numTraining": 3,
        "file_ending": ".nii.gz",
        "name": "invesalius-cranium",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    config = load_finetune_config(
        Path(__file__).resolve().parents[2] / "training" / "configs" / "finetune_tiny_cpu.yaml",
        {
            "data": str(root),
            "output": str(tmp_path / "out"),
            "val_cases": ["middle"],
            "spacing": [3.828125, 3.828125],  # 256 px at 0.957 mm -> 64 px
            "crop_size": [64, 64],
            "epochs": 5,
            "iterations_per_epoch": 40,
            "batch_size": 4,
            "warmup_fraction": 0.0,
        },
    )
    result = run_finetuning(config)
    per_class = max(result.history, key=lambda h: h["val_dsc"])["val_dsc_per_class"]
    print("head CT validation DSC (middle part):", per_class, "mean", result.best_dsc)
    assert per_class["soft tissue"] >= 0.8 and per_class["bone"] >= 0.7


def test_fewshot_head_point_logits_equal_the_full_forward(tiny_vit_config):
    from MedDINOv3Core.models.fewshot_head import FewShotHeadConfig

    model = FewShotSegmenter(tiny_vit_config, FewShotHeadConfig(4, hidden=8)).eval()
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        full = model(x)  # (2, 4, 32, 48)
        features = model.features(x)
        points = torch.tensor([[0, 0, 0], [0, 31, 47], [1, 5, 17], [1, 16, 24], [0, 9, 40]])
        at = model.head.point_logits(model.head.project_tokens(features), model.head.image_channels(x), points)
    expected = full[points[:, 0], :, points[:, 1], points[:, 2]]
    assert full.shape == (2, 4, 32, 48)
    assert torch.allclose(at, expected, atol=1e-5)
    # the banded forward equals the head's formula written with F.interpolate and 1x1 convolutions (NCHW), for any
    # band height, including bands that do not divide the slice, and for features in the backbone's NCHW layout as
    # in the feature cache's channels-last layout
    head = model.head
    cache_layout = features.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    with torch.no_grad():
        h = F.interpolate(head.project_tokens(features), size=(32, 48), mode="bilinear", align_corners=False)
        h = h + head.image_proj(head.image_channels(x))
        reference = head.out(F.gelu(head.hidden(F.gelu(h))))
        for band in (48, 5 * 48, 8192):
            assert torch.allclose(head(features, x, band_pixels=band), reference, atol=1e-5)
            assert torch.allclose(head(cache_layout, x, band_pixels=band), reference, atol=1e-5)
        assert torch.allclose(head.project_tokens(cache_layout), head.project_tokens(features), atol=1e-6)


def test_fewshot_head_config_validation():
    from MedDINOv3Core.models.fewshot_head import FewShotHeadConfig, is_fewshot_head

    assert is_fewshot_head(FewShotHeadConfig(3).to_dict()) and not is_fewshot_head({"n_classes": 3})
    with pytest.raises(ValueError, match="n_classes >= 2"):
        FewShotHeadConfig(1)
    with pytest.raises(ValueError, match="unknown option"):
        FewShotHeadConfig.from_dict({"n_classes": 3, "depth": 2})

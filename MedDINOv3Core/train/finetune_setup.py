"""The phases of a finetuning run around its loop: the data (case split, preprocessing, slices), the model and
its initial weights, the optimizer groups, validation (DSC per class) and the model cards and resume checks."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from MedDINOv3Core.card import DEFAULT_COLORS, WEIGHTS_NAME, ModelCard
from MedDINOv3Core.config_utils import resolve_aliases
from MedDINOv3Core.convert import load_state_dict_strict
from MedDINOv3Core.data.nnunet_data import (
    IGNORED,
    DatasetError,
    SegmentationDataset,
    SliceData,
    fit_ct_normalisation,
    load_case,
    median_inplane_spacing,
)
from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.inference import InferenceConfig, class_index, sliding_window_logits
from MedDINOv3Core.models.vit import ViTConfig, vit_config
from MedDINOv3Core.progress import ProgressCallback, check_cancel, report
from MedDINOv3Core.train.finetune_config import FROZEN_MODES, FinetuneConfig
from MedDINOv3Core.train.finetune_tasks import task_class
from MedDINOv3Core.weights import save_model_card

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "meddinov3-finetune-checkpoint"
# fields that may differ between a run and its resumption
RESUMABLE_CHANGES = ("resume", "device", "output_dir", "epochs", "compile")
# what the validation DSC is measured on (history.json "validation", the card's provenance)
HELD_OUT, TRAINING_CASES, NO_VALIDATION = "held-out cases", "training cases", "none"
MIN_CASES_TO_HOLD_OUT = 3  # with fewer, holding one out leaves too little to train on


# ------------------------------------------------------------------------------------------------ data and model


def _split(dataset: SegmentationDataset, config: FinetuneConfig) -> tuple[list[str], list[str], str, str]:
    """(training cases, held-out cases, what validation is measured on, a note saying why when not held-out).

    ``val_cases`` are held out as given. Else ``val_fraction`` of the cases (seeded choice), rounded but at least
    one and at most all but one, from MIN_CASES_TO_HOLD_OUT cases upwards; with fewer cases none is held out and
    the DSC is measured on the training cases. ``val_fraction`` 0 switches validation off.
    """
    names = [c.name for c in dataset.training]
    kind, note = HELD_OUT, ""
    if config.val_cases:
        val = list(config.val_cases)
        missing = [n for n in val if n not in names]
        if missing:
            raise DatasetError(f"val_cases {missing} are not training cases of {dataset.name!r}: {names[:10]}")
    elif config.val_fraction > 0 and len(names) >= MIN_CASES_TO_HOLD_OUT:
        n_val = min(len(names) - 1, max(1, int(round(len(names) * config.val_fraction))))
        order = np.random.default_rng(config.seed).permutation(len(names))
        val = [names[i] for i in sorted(order[:n_val])]
    elif config.val_fraction > 0:
        val, kind = [], TRAINING_CASES
        note = (
            f"only {len(names)} case(s), fewer than {MIN_CASES_TO_HOLD_OUT}: none is held out, so the DSC is "
            "measured on the training cases (it shows the fit, not generalisation) and best/ is the epoch that fits "
            "them best; add cases or name val_cases for a real validation"
        )
    else:
        val, kind = [], NO_VALIDATION
        note = "validation is off (val_fraction 0): best/ is the last epoch"
    train = [n for n in names if n not in val]
    if not train:
        raise DatasetError("no training cases left after holding out the validation cases")
    return train, val, kind, note


def _resolve_init(config: FinetuneConfig) -> tuple[ViTConfig, dict[str, torch.Tensor] | None, ModelCard | None, str]:
    """(backbone config, backbone-or-full state dict or None for random, the init card or None, its directory)."""
    if config.init_from.lower() in ("random", "none", ""):
        cfg = vit_config(config.backbone)
        if config.backbone_patch_size:
            cfg = cfg.replace(patch_size=int(config.backbone_patch_size))
        return _check_crop(config, cfg), None, None, ""
    from MedDINOv3Core.card import load_model_card
    from MedDINOv3Core.hub import resolve_model
    from MedDINOv3Core.weights import load_card_state_dict

    directory = resolve_model(config.init_from)
    card = load_model_card(directory)
    return _check_crop(config, card.backbone), load_card_state_dict(directory), card, str(directory)


def _check_crop(config: FinetuneConfig, backbone: ViTConfig) -> ViTConfig:
    """crop_size (the training patch and the validation tile) must be whole patches of the backbone."""
    p = backbone.patch_size
    if any(c % p for c in config.crop_size):
        fit = [max(p, c // p * p) for c in config.crop_size]
        raise ValueError(
            f"crop_size {list(config.crop_size)} is not a multiple of the backbone's patch size {p}; use e.g. "
            f"crop_size=[{fit[0]},{fit[1]}]"
        )
    return backbone


def _labels(dataset: SegmentationDataset, init_card: ModelCard | None) -> list[dict[str, Any]]:
    """Card label dicts for the dataset's classes: colours/terminology from the dataset's label properties, else
    from an init card's label of the same name, else a default palette."""
    known = {d["name"]: d for d in (init_card.labels if init_card is not None else ())}
    known.update({d["name"]: d for d in dataset.label_properties})
    out = []
    for i, (value, name) in enumerate(dataset.classes):
        entry = {"value": value, "name": name, "color": list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)])}
        if name in known:
            entry["color"] = list(known[name].get("color", entry["color"]))
            if known[name].get("terminology") is not None:
                entry["terminology"] = known[name]["terminology"]
        out.append(entry)
    return out


def resolve_intensity(config: FinetuneConfig, init_card: ModelCard | None) -> str:
    """The intensity setting a run uses: "auto" becomes "init" in the frozen-backbone modes when the init card
    has preprocessing (the backbone saw only that), else "dataset"; "init" needs such a card."""
    has = init_card is not None and bool(init_card.preprocessing)
    if config.intensity == "auto":
        return "init" if config.mode in FROZEN_MODES and has else "dataset"
    if config.intensity == "init" and not has:
        raise ValueError(f"intensity 'init': the init {config.init_from!r} is not a model card with preprocessing")
    return config.intensity


def _preprocessing(
    config: FinetuneConfig, dataset: SegmentationDataset, pairs: list, init_card: ModelCard | None = None
) -> tuple[PreprocessConfig, str]:
    """The run's preprocessing and a sentence saying where it comes from (the card's provenance)."""
    intensity = resolve_intensity(config, init_card)
    inherited = PreprocessConfig.from_dict(init_card.preprocessing) if intensity == "init" else None
    if config.spacing:
        spacing, spacing_source = tuple(config.spacing), "the spacing set in the config"
    elif inherited is not None:  # exactly the init card's grid: a feature cache built with that card matches
        spacing = inherited.spacing
        spacing_source = "its spacing" if spacing else "its native spacing (no in-plane resampling)"
    else:
        spacing = median_inplane_spacing([image for _, image, _ in pairs])
        spacing_source = "the median spacing of the training cases"
    if inherited is not None:
        name = init_card.name or config.init_from
        why = " (frozen backbone, intensity auto)" if config.intensity == "auto" else ""
        return replace(inherited, spacing=spacing), f"inherited from {name}{why}: its intensity and {spacing_source}"
    if intensity == "dataset" and dataset.modality.upper() == "CT":
        fitted = fit_ct_normalisation([(image, label) for _, image, label in pairs], spacing, seed=config.seed)
        return fitted, f"intensity fitted to the training cases' CT foreground; {spacing_source}"
    if intensity in ("dataset", "zscore"):
        return PreprocessConfig.mri_zscore(spacing=spacing), f"intensity z-score per volume; {spacing_source}"
    if intensity == "demo":
        return PreprocessConfig.meddinov3_demo(spacing=spacing), f"intensity: the demo constants; {spacing_source}"
    return PreprocessConfig("none", None, None, None, None, False, spacing), f"intensity none; {spacing_source}"


def _build_model(config: FinetuneConfig, backbone: ViTConfig, n_classes: int, init_backbone: bool = True) -> nn.Module:
    """The network of ``config.mode``; ``init_backbone=False`` when init weights are loaded into the backbone next."""
    return task_class(config).build_model(config, backbone, n_classes, init_backbone)


def _load_init_weights(model: nn.Module, state: dict[str, torch.Tensor] | None, card: ModelCard | None) -> bool:
    """Load the init weights into ``model``; True when the head came too (a segmentation card of the same head).

    The model takes the tensors of ``state`` (no second copy of a ViT-B in memory): the caller must not use
    ``state`` afterwards."""
    if state is None:
        return False
    own = model.state_dict()
    if card is not None and card.task == "segmentation" and set(state) == set(own):
        if all(state[k].shape == own[k].shape for k in own):
            load_state_dict_strict(model, state, source="the init model card", assign=True)
            log.info("initialised backbone and head from segmentation card %s", card.name)
            return True
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")} or state
    load_state_dict_strict(model.backbone, backbone, source="the init backbone", assign=True)
    log.info("initialised the backbone from %s", card.name if card is not None else "a checkpoint")
    return False


def trains_backbone(config: FinetuneConfig) -> bool:
    """Whether the run updates the backbone (mode full with a positive encoder learning rate); else it stays the
    init weights."""
    return config.mode == "full" and config.lr_encoder > 0


def backbone_fingerprint(model: nn.Module) -> list[float]:
    """Each backbone tensor's float64 sum: a cheap check (one read of the weights) that a frozen backbone is still
    the one a checkpoint was trained on."""
    return [float(torch.sum(t, dtype=torch.float64)) for _, t in sorted(model.backbone.state_dict().items())]


def _param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Encoder / head groups at their learning rates; no weight decay on biases, norms, tokens (ndim <= 1)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    train_backbone = trains_backbone(config)
    for name, p in model.named_parameters():
        is_backbone = name.startswith("backbone.")
        if is_backbone and not train_backbone:
            p.requires_grad_(False)
            continue
        if not p.requires_grad:  # e.g. the few-shot token projection, trained in a subspace and folded in
            continue
        decay = p.ndim > 1 and not name.endswith(("cls_token", "storage_tokens", "mask_token"))
        groups.setdefault(("backbone" if is_backbone else "head", decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        lr = config.lr_encoder if part == "backbone" else config.lr_decoder
        out.append({"params": params, "lr": lr, "base_lr": lr, "weight_decay": config.weight_decay if decay else 0.0})
    return out


# ------------------------------------------------------------------------------------------------ validation and saving


@torch.no_grad()
def validation_dice(
    model: nn.Module,
    data: SliceData,
    inference: InferenceConfig,
    patch_size: int,
    device: torch.device,
    cancel: Any = None,
) -> tuple[float, list[float]]:
    """Mean and per-class (foreground) DSC over the validation cases, on the model grid.

    Per case and class, DSC over the whole volume; a class absent from both prediction and reference in a case is
    left out of that class's mean (NaN convention of MedDINOv3Core.metrics); the overall value is the mean over
    classes.
    """
    model.eval()
    n_classes = data.n_classes
    per_class: list[list[float]] = [[] for _ in range(n_classes - 1)]
    for case in data.cases:
        inter = np.zeros(n_classes, np.int64)
        n_pred = np.zeros(n_classes, np.int64)
        n_ref = np.zeros(n_classes, np.int64)
        for k0 in range(0, case.images.shape[0], inference.batch_size):
            check_cancel(cancel)
            x = torch.from_numpy(np.asarray(case.images[k0 : k0 + inference.batch_size], dtype=np.float32))
            logits = sliding_window_logits(model, x[:, None].to(device), inference, patch_size, device)
            pred = class_index(logits).cpu().numpy().ravel()
            ref = np.asarray(case.targets[k0 : k0 + inference.batch_size]).astype(np.int64).ravel()
            labelled = ref != IGNORED  # unlabelled voxels (an "ignore" label) count nowhere
            pred, ref = pred[labelled], ref[labelled]
            inter += np.bincount(pred[pred == ref], minlength=n_classes)
            n_pred += np.bincount(pred, minlength=n_classes)
            n_ref += np.bincount(ref, minlength=n_classes)
        for c in range(1, n_classes):
            if n_pred[c] + n_ref[c]:
                per_class[c - 1].append(2.0 * inter[c] / (n_pred[c] + n_ref[c]))
    means = [float(np.mean(v)) if v else math.nan for v in per_class]
    finite = [m for m in means if not math.isnan(m)]
    return (float(np.mean(finite)) if finite else math.nan), means


def _save_card(
    directory: Path,
    model: nn.Module,
    config: FinetuneConfig,
    card_args: dict[str, Any],
    extra: dict[str, Any],
    same_weights_as: Path | None = None,
) -> Path:
    """Write the run's model card; ``same_weights_as``: a card just written from the same model (its weights file is
    linked instead of serialised again)."""
    provenance = {**card_args["provenance"], **extra}
    files = {"finetune_config.json": json.dumps(config.to_dict(), indent=2) + "\n"}
    card = task_class(config).new_card(model, card_args, provenance)
    weights = same_weights_as / WEIGHTS_NAME if same_weights_as is not None else None
    return save_model_card(directory, card, model.state_dict(), extra_files=files, weights_from=weights)


def _check_resumable(saved: dict[str, Any], config: FinetuneConfig, intensity: str = "") -> None:
    """Raise unless ``config`` may resume a checkpoint saved with ``saved``; ``intensity``: what the config's
    intensity resolves to (a checkpoint from before intensity "auto" saved "dataset", which "auto" may mean)."""
    now = config.to_dict()
    # options added since the checkpoint get their defaults; old spellings their current names
    saved = {**FinetuneConfig().to_dict(), **resolve_aliases(saved, where="checkpoint config")}
    if saved.get("intensity") == intensity and now["intensity"] == "auto":
        saved["intensity"] = "auto"
    diff = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"cannot resume: the configuration differs from the checkpoint's in {diff}; start a new output "
            "directory or use the original settings"
        )


@dataclass
class FinetuneData:
    """The loaded data of a run: the case split, the preprocessing and the slices on the model grid.

    ``val`` is the held-out cases, or the training slices themselves when ``validation`` is TRAINING_CASES, or
    None (NO_VALIDATION); ``validation_note`` says why when it is not HELD_OUT. ``preprocessing_source`` says where
    the preprocessing comes from (fitted, inherited from the init card, ...).
    """

    train_names: list[str]
    val_names: list[str]
    preprocessing: PreprocessConfig
    train: SliceData
    val: SliceData | None
    validation: str = HELD_OUT
    validation_note: str = ""
    preprocessing_source: str = ""
    volume_digests: dict[str, str] | None = None  # training case -> volume_hash (only to match feature caches)


def load_finetune_data(
    config: FinetuneConfig,
    dataset: SegmentationDataset,
    progress: ProgressCallback | None = None,
    cancel: Any = None,
    init_card: ModelCard | None = None,
) -> FinetuneData:
    """Split the cases, load them, fit the preprocessing on the training cases (or take the init card's, see
    ``resolve_intensity``) and resample both sets."""
    train_names, val_names, validation, note = _split(dataset, config)
    by_name = {c.name: c for c in dataset.training}
    loaded = []
    for i, name in enumerate(train_names + val_names):
        check_cancel(cancel)
        image, label = load_case(by_name[name], dataset)
        loaded.append((name, image, label))
        report(progress, "load", i + 1, len(train_names) + len(val_names), name)
    train_pairs, val_pairs = loaded[: len(train_names)], loaded[len(train_names) :]
    preprocessing, source = _preprocessing(config, dataset, train_pairs, init_card)
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else None
    ignore = dataset.ignore_value is not None
    train_data = SliceData.from_cases(
        train_pairs,
        preprocessing,
        dataset.n_classes,
        cache,
        labelled_only=task_class(config).labelled_only,
        ignore_label=ignore,
    )
    val_data = SliceData.from_cases(val_pairs, preprocessing, dataset.n_classes, cache) if val_pairs else None
    if validation == TRAINING_CASES:
        val_data = train_data  # fewshot: the labelled slices only, like training
    digests = None
    if config.features:
        from MedDINOv3Core.feature_cache import volume_hash

        digests = {n: volume_hash(i.array, i.spacing, i.origin, i.direction) for n, i, _ in train_pairs}
    return FinetuneData(train_names, val_names, preprocessing, train_data, val_data, validation, note, source, digests)


def match_feature_cache(
    config: FinetuneConfig, model: nn.Module, data: FinetuneData, pad_value: float
) -> dict[int, Any]:
    """The training cases (index into ``data.train.cases``) whose labelled slices take their tokens from the
    feature cache ``config.features``; raises FeatureCacheError (one line) when it serves none of them."""
    if not config.features:
        return {}
    from MedDINOv3Core.feature_cache import FeatureCache, FeatureCacheError
    from MedDINOv3Core.fewshot_cache import absolute_layers, backbone_hash, cache_problem

    cache = FeatureCache.open(config.features)
    facts = {
        "model_hash": backbone_hash(model),
        "preprocessing": data.preprocessing,
        "layers": absolute_layers(model.layers, model.backbone.config.depth),
        "pad_value": pad_value,
    }
    problem = cache_problem(cache, **facts)
    if problem is not None:
        raise FeatureCacheError(problem)
    digests = data.volume_digests or {}
    matched = {c: cache for c, case in enumerate(data.train.cases) if digests.get(case.name) == cache.key["volume"]}
    if not matched:
        raise FeatureCacheError(
            f"the feature cache {cache.path} belongs to another volume: none of the training cases "
            f"({', '.join(sorted(digests)[:5])}) has its content and geometry; build the cache from the case's image"
        )
    log.info("features of %d training case(s) from the cache %s", len(matched), cache.path)
    return matched

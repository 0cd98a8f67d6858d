"""Segmentation finetuning: one loop, three modes (REFERENCE.md section 2).

- ``full``: the paper recipe. Backbone + Primus decoder trained together: AdamW betas (0.9, 0.98), lr 3e-4 for the
  decoder and 3e-5 for the encoder, weight decay 0.05 (not on biases, norms and tokens), linear decay to 0 without
  warm-up, drop path 0.2, gradient-norm clip 12, soft Dice (no background) + CE 1:1, mixed precision on GPU,
  2D patches with 33% foreground oversampling and nnU-Net augmentation.
- ``decoder``: the same with the backbone frozen (eval mode, no gradients): only the decoder learns.
- ``fewshot``: frozen backbone; the multi-scale features of the labelled slices are computed ONCE and cached, then a
  light per-pixel head (MedDINOv3Core.models.fewshot_head) trains on sampled pixels in seconds on a CPU. Only
  slices with at least one labelled voxel are used: unpainted slices are unlabelled, not background.

The loop (``run_finetuning``) reads top to bottom: data -> preprocessing statistics -> model -> optimizer -> for
every step: batch (a pure function of (seed, step)), loss, backward, clip, AdamW step at the scheduled lr; after
every epoch: validation DSC per class on held-out cases (on the model grid, with the card's tiled inference),
the last model card and the training checkpoint (atomic), and the best model card when the mean DSC improved.

Output directory ``output``: ``best/`` and ``last/`` (model cards, loadable by MedDINOv3Core.weights.load_model,
predict, explore and Slicer; without validation data, best = last), ``checkpoint.pt`` (model, optimizer, step, RNG
states, history: exact resume at an epoch boundary), ``history.json`` and ``finetune_config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from MedDINOv3Core.atomic import write_json
from MedDINOv3Core.config_utils import coerce_numbers, config_from_dict, config_to_dict, read_recipe
from MedDINOv3Core.data.augment import AugmentConfig
from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.data.segmentation_data import (
    DatasetError,
    SegmentationDataset,
    SliceData,
    SliceSampler,
    fit_ct_normalisation,
    load_case,
    load_nnunet_dataset,
    median_inplane_spacing,
)
from MedDINOv3Core.device import autocast, autocast_dtype, select_device
from MedDINOv3Core.inference import InferenceConfig, sliding_window_logits
from MedDINOv3Core.losses.segmentation import DiceCELoss
from MedDINOv3Core.models.fewshot_head import FewShotHeadConfig, FewShotSegmenter, new_fewshot_card
from MedDINOv3Core.models.segmenter import DEFAULT_COLORS, Segmenter, SegmenterConfig, new_segmentation_card
from MedDINOv3Core.models.vit import ViTConfig, vit_config
from MedDINOv3Core.progress import check_cancel, report
from MedDINOv3Core.train import schedules
from MedDINOv3Core.train.checkpoint import git_commit, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from MedDINOv3Core.weights import ModelCard, load_state_dict_strict, save_model_card

log = logging.getLogger(__name__)

MODES = ("full", "decoder", "fewshot")
INTENSITY = ("dataset", "demo", "zscore", "none")
CHECKPOINT_FORMAT = "meddinov3-finetune-checkpoint"
# fields that may differ between a run and its resumption
RESUMABLE_CHANGES = ("resume", "device", "output", "epochs")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a finetuning run needs (YAML recipes in training/configs/finetune*.yaml).

    Args:
        mode: "full", "decoder" or "fewshot".
        data: nnU-Net v2 raw dataset folder (unused when a dataset is passed to run_finetuning).
        output: output directory.
        init: where the backbone comes from: "random", a model-card directory, a registry name, a Hub repo or an
            upstream checkpoint file (MedDINOv3Core.hub.resolve_model). A segmentation card whose head matches
            also provides the head.
        backbone: ViT preset for init="random" ("vit_tiny", "vit_small", "vit_base", "vit_large").
        backbone_patch_size: patch size override for init="random" (0 keeps the preset's 16).
        intermediate_layers: aggregated blocks (empty: the backbone's default four).
        val_cases: names of the training cases held out for validation; empty: ``val_fraction`` of them.
        val_fraction: fraction of cases held out (seeded choice) when val_cases is empty; 0 disables validation.
        epochs, iterations_per_epoch, batch_size: the schedule (paper: 1000 x 250).
        crop_size: (h, w) training patch on the model grid (also the inference tile size for full/decoder).
        spacing: model in-plane spacing (x, y) mm; empty: the median of the training cases.
        intensity: "dataset" (nnU-Net CT statistics of the training foreground, stored in the card; z-score per
            volume for non-CT), "demo" (the MedDINOv3 demo constants), "zscore", "none".
        lr_decoder, lr_encoder, weight_decay, betas, drop_path, grad_clip: the optimiser recipe.
        warmup_fraction: linear learning-rate warm-up from 0 over this fraction of all iterations, then the linear
            decay to 0 (the paper: no warm-up).
        dice_weight, ce_weight: loss weights.
        oversample_foreground: foreground-centred fraction of every batch.
        augment: nnU-Net augmentation switched on; ``augmentation`` overrides its probabilities/ranges.
        amp: mixed precision on GPU/MPS (always fp32 on CPU).
        fewshot_hidden, fewshot_image_sigmas, fewshot_pixels, fewshot_position: few-shot head width, image
            channel sigmas, pixels sampled per step, position channels (see FewShotHeadConfig).
        fewshot_pca_dim: the cached features are trained on in their first principal components (0: all).
        val_batch_size: slices per validation forward pass.
        seed: everything random derives from it.
        device: "auto", "cpu", "cuda[:N]", "mps".
        cache_dir: memory-map preprocessed slices from this folder (datasets larger than memory).
        name, description, license: model card metadata.
        resume: continue from ``output/checkpoint.pt``.
    """

    mode: str = "full"
    data: str = ""
    output: str = ""
    init: str = "random"
    backbone: str = "vit_base"
    backbone_patch_size: int = 0
    intermediate_layers: tuple[int, ...] = ()
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.2
    epochs: int = 1000
    iterations_per_epoch: int = 250
    batch_size: int = 8
    crop_size: tuple[int, int] = (512, 512)
    spacing: tuple[float, ...] = ()
    intensity: str = "dataset"
    lr_decoder: float = 3e-4
    lr_encoder: float = 3e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    drop_path: float = 0.2
    grad_clip: float = 12.0
    warmup_fraction: float = 0.0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    oversample_foreground: float = 0.33
    augment: bool = True
    augmentation: dict[str, Any] = field(default_factory=dict)
    amp: bool = True
    fewshot_hidden: int = 64
    fewshot_image_sigmas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    fewshot_pixels: int = 32768
    fewshot_position: bool = True
    fewshot_pca_dim: int = 256
    val_batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    cache_dir: str = ""
    name: str = ""
    description: str = ""
    license: str = ""
    resume: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"finetune mode must be one of {MODES}, got {self.mode!r}")
        if self.intensity not in INTENSITY:
            raise ValueError(f"intensity must be one of {INTENSITY}, got {self.intensity!r}")
        for name in ("epochs", "iterations_per_epoch", "batch_size", "val_batch_size", "fewshot_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        object.__setattr__(self, "crop_size", tuple(int(c) for c in self.crop_size))
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be two positive integers (h, w), got {self.crop_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.grad_clip <= 0 or self.lr_decoder <= 0 or self.lr_encoder < 0:
            raise ValueError("grad_clip and lr_decoder must be positive and lr_encoder non-negative")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        AugmentConfig.from_dict(self.augmentation)  # validate early

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iterations_per_epoch

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return config_from_dict(cls, dict(data), where="finetune config")


def load_finetune_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """A FinetuneConfig from a YAML recipe (optional ``base: other.yaml``, relative to it) plus overrides.

    Unknown keys raise, naming the valid ones.
    """
    data = read_recipe(path, "finetune recipe") if path else {}
    data.update(overrides or {})
    return FinetuneConfig.from_dict(coerce_numbers(FinetuneConfig, data))


@dataclass
class FinetuneResult:
    """What run_finetuning returns: the card directories, the per-epoch history and the best validation DSC."""

    best: Path
    last: Path
    history: list[dict[str, Any]]
    best_dsc: float
    seconds: float


# ------------------------------------------------------------------------------------------------ set-up


def _split(dataset: SegmentationDataset, config: FinetuneConfig) -> tuple[list[str], list[str]]:
    names = [c.name for c in dataset.training]
    if config.val_cases:
        val = list(config.val_cases)
        missing = [n for n in val if n not in names]
        if missing:
            raise DatasetError(f"val_cases {missing} are not training cases of {dataset.name!r}: {names[:10]}")
    else:
        n_val = int(round(len(names) * config.val_fraction))
        order = np.random.default_rng(config.seed).permutation(len(names))
        val = [names[i] for i in sorted(order[:n_val])]
    train = [n for n in names if n not in val]
    if not train:
        raise DatasetError("no training cases left after holding out the validation cases")
    return train, val


def _resolve_init(config: FinetuneConfig) -> tuple[ViTConfig, dict[str, torch.Tensor] | None, ModelCard | None, str]:
    """(backbone config, backbone-or-full state dict or None for random, the init card or None, its directory)."""
    if config.init.lower() in ("random", "none", ""):
        cfg = vit_config(config.backbone)
        if config.backbone_patch_size:
            cfg = cfg.replace(patch_size=int(config.backbone_patch_size))
        return cfg, None, None, ""
    from MedDINOv3Core.hub import resolve_model
    from MedDINOv3Core.weights import load_card_state_dict, load_model_card

    directory = resolve_model(config.init)
    card = load_model_card(directory)
    return card.backbone, load_card_state_dict(directory), card, str(directory)


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


def _preprocessing(config: FinetuneConfig, dataset: SegmentationDataset, pairs: list) -> PreprocessConfig:
    spacing = tuple(config.spacing) or median_inplane_spacing([image for _, image, _ in pairs])
    if config.intensity == "dataset":
        if dataset.modality.upper() == "CT":
            return fit_ct_normalisation([(image, label) for _, image, label in pairs], spacing, seed=config.seed)
        return PreprocessConfig.mri_zscore(spacing=spacing)
    if config.intensity == "demo":
        return PreprocessConfig.meddinov3_demo(spacing=spacing)
    if config.intensity == "zscore":
        return PreprocessConfig.mri_zscore(spacing=spacing)
    return PreprocessConfig("none", None, None, None, None, False, spacing)


def _build_model(config: FinetuneConfig, backbone: ViTConfig, n_classes: int) -> nn.Module:
    if config.mode == "fewshot":
        head = FewShotHeadConfig(
            n_classes,
            intermediate_layers=tuple(config.intermediate_layers),
            hidden=config.fewshot_hidden,
            image_sigmas=tuple(config.fewshot_image_sigmas),
            position=config.fewshot_position,
        )
        return FewShotSegmenter(backbone, head)
    drop = config.drop_path if config.mode == "full" else 0.0
    return Segmenter(
        backbone.replace(drop_path_rate=drop), SegmenterConfig(n_classes, tuple(config.intermediate_layers))
    )


def _load_init_weights(model: nn.Module, state: dict[str, torch.Tensor] | None, card: ModelCard | None) -> None:
    if state is None:
        return
    own = model.state_dict()
    if card is not None and card.task == "segmentation" and set(state) == set(own):
        if all(state[k].shape == own[k].shape for k in own):
            load_state_dict_strict(model, state, source="the init model card")
            log.info("initialised backbone and head from segmentation card %s", card.name)
            return
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")} or state
    load_state_dict_strict(model.backbone, backbone, source="the init backbone")
    log.info("initialised the backbone from %s", card.name if card is not None else "a checkpoint")


def _param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Encoder / head groups at their learning rates; no weight decay on biases, norms, tokens (ndim <= 1)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    train_backbone = config.mode == "full" and config.lr_encoder > 0
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


# ------------------------------------------------------------------------------------------------ steps


class _PatchTask:
    """full / decoder: Dice + CE on sampled, augmented 2D patches."""

    def __init__(self, model: Segmenter, sampler: SliceSampler, loss: DiceCELoss, frozen: bool, device) -> None:
        self.model, self.sampler, self.loss, self.frozen, self.device = model, sampler, loss, frozen, device

    def train_mode(self) -> None:
        self.model.train()
        if self.frozen:
            self.model.backbone.eval()

    def __call__(self, step: int) -> torch.Tensor:
        x, y = self.sampler.batch(step)
        x, y = x.to(self.device), y.to(self.device)
        with autocast(self.device):
            if self.frozen:
                with torch.no_grad():
                    features = self.model.features(x)
            else:
                features = self.model.features(x)
            logits = self.model.decoder(features)
        return self.loss(logits, y)


class _FewShotTask:
    """fewshot: features of the labelled slices cached once; the head trains on sampled pixels.

    The cached token features (F = 3072 channels for ViT-B) are reduced once to their ``pca_dim`` principal
    components (seeded randomized PCA of the training tokens); the head's token projection is trained in that
    subspace (``self.reduced``, pca_dim -> hidden) and folded back into ``head.token_proj`` (F -> hidden) by
    ``fold()`` before every validation and save, so the saved model is an ordinary FewShotSegmenter. This makes a
    training step ~F / pca_dim times cheaper (the F x hidden projection of every token dominated it) and
    regularises the few-shot fit.
    """

    def __init__(
        self,
        model: FewShotSegmenter,
        data: SliceData,
        loss: DiceCELoss,
        pixels: int,
        pca_dim: int,
        seed: int,
        device,
        progress,
    ) -> None:
        self.model, self.loss, self.pixels, self.seed, self.device = model, loss, pixels, seed, device
        p = model.patch_size
        features, channels, targets = [], [], []
        total = len(data)
        report(progress, "features", 0, total, "caching backbone features of the labelled slices")
        model.eval()
        for i, (c, z) in enumerate(data.slices):
            image = torch.from_numpy(np.asarray(data.cases[c].images[z], dtype=np.float32))
            target = torch.from_numpy(np.asarray(data.cases[c].targets[z]).astype(np.int64))
            h, w = image.shape
            ph, pw = -(-h // p) * p, -(-w // p) * p
            top, left = (ph - h) // 2, (pw - w) // 2  # the padding of sliding_window_logits for whole slices
            x = torch.zeros((1, 1, ph, pw))
            x[0, 0, top : top + h, left : left + w] = image
            t = torch.full((ph, pw), -1, dtype=torch.int64)
            t[top : top + h, left : left + w] = target
            with torch.no_grad():
                features.append(model.features(x.to(device)))
                channels.append(model.head.image_channels(x.to(device)))
            targets.append(t)
            report(progress, "features", i + 1, total, "")
        shapes = {tuple(t.shape) for t in targets}
        if len(shapes) > 1:
            raise DatasetError(f"few-shot slices must share one in-plane size on the model grid, got {sorted(shapes)}")
        feats = torch.cat(features)  # (S, F, h, w)
        self.grid = (feats.shape[0], feats.shape[2], feats.shape[3])
        tokens = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])  # (S h w, F)
        self.mean = tokens.mean(0)
        k = min(pca_dim, tokens.shape[0], tokens.shape[1]) if pca_dim > 0 else tokens.shape[1]
        if k < tokens.shape[1]:
            with torch.random.fork_rng(devices=[]):  # deterministic, and the global RNG stream is untouched
                torch.manual_seed(seed)
                _, _, v = torch.pca_lowrank(tokens, q=k, center=True, niter=4)
            self.basis = v[:, :k].contiguous()  # (F, k)
        else:
            self.basis = torch.eye(tokens.shape[1], device=tokens.device)
        self.tokens = (tokens - self.mean) @ self.basis  # (S h w, k)
        head = model.head
        self.reduced = nn.Linear(self.basis.shape[1], head.config.hidden).to(device)
        with torch.no_grad():  # start from the head's initial projection restricted to the subspace
            w = head.token_proj.weight[:, :, 0, 0]
            self.reduced.weight.copy_(w @ self.basis)
            self.reduced.bias.copy_(head.token_proj.bias + w @ self.mean)
        head.token_proj.requires_grad_(False)
        self.channels = torch.cat(channels)  # (S, K, H, W)
        self.targets = torch.stack(targets).to(device)  # (S, H, W), -1 outside the slices
        self.valid = torch.nonzero(self.targets >= 0)  # (M, 3) rows (slice, y, x)
        log.info("few-shot: %d slices, %d tokens, features %d -> %d dims", self.grid[0], len(tokens), w.shape[1], k)

    @torch.no_grad()
    def fold(self) -> None:
        """Write the subspace projection into ``head.token_proj``: W = W_r B^T, b = b_r - W_r B^T mean."""
        weight = self.reduced.weight @ self.basis.T  # (hidden, F)
        self.model.head.token_proj.weight.copy_(weight[:, :, None, None])
        self.model.head.token_proj.bias.copy_(self.reduced.bias - weight @ self.mean)

    def train_mode(self) -> None:
        self.model.eval()
        self.model.head.train()

    def __call__(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))
        index = torch.randint(self.valid.shape[0], (self.pixels,), generator=g)  # with replacement: O(pixels)
        points = self.valid[index.to(self.valid.device)]
        s, h, w = self.grid
        projected = self.reduced(self.tokens).reshape(s, h, w, -1).permute(0, 3, 1, 2)  # (S, hidden, h, w)
        logits = self.model.head.point_logits(projected, self.channels, points)  # (N, C)
        target = self.targets[points[:, 0], points[:, 1], points[:, 2]]
        return self.loss(logits.T[None, :, :, None], target[None, :, None])


# ------------------------------------------------------------------------------------------------ validation


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
            pred = logits.argmax(1).cpu().numpy().ravel()
            ref = np.asarray(case.targets[k0 : k0 + inference.batch_size]).astype(np.int64).ravel()
            inter += np.bincount(pred[pred == ref], minlength=n_classes)
            n_pred += np.bincount(pred, minlength=n_classes)
            n_ref += np.bincount(ref, minlength=n_classes)
        for c in range(1, n_classes):
            if n_pred[c] + n_ref[c]:
                per_class[c - 1].append(2.0 * inter[c] / (n_pred[c] + n_ref[c]))
    means = [float(np.mean(v)) if v else math.nan for v in per_class]
    finite = [m for m in means if not math.isnan(m)]
    return (float(np.mean(finite)) if finite else math.nan), means


# ------------------------------------------------------------------------------------------------ the loop


def _save_card(
    directory: Path, model: nn.Module, config: FinetuneConfig, card_args: dict[str, Any], extra: dict[str, Any]
) -> Path:
    provenance = {**card_args["provenance"], **extra}
    files = {"finetune_config.json": json.dumps(config.to_dict(), indent=2) + "\n"}
    if config.mode == "fewshot":
        card = new_fewshot_card(
            card_args["backbone"],
            card_args["labels"],
            model.config,
            card_args["preprocessing"].to_dict(),
            card_args["inference"].to_dict(),
            name=card_args["name"],
            description=card_args["description"],
            license=card_args["license"],
            provenance=provenance,
        )
    else:
        card = new_segmentation_card(
            card_args["backbone"],
            card_args["labels"],
            card_args["preprocessing"],
            card_args["inference"],
            model.config,
            name=card_args["name"],
            description=card_args["description"],
            license=card_args["license"],
            provenance=provenance,
        )
    return save_model_card(directory, card, model.state_dict(), extra_files=files)


def _check_resumable(saved: dict[str, Any], config: FinetuneConfig) -> None:
    now = config.to_dict()
    saved = {**FinetuneConfig().to_dict(), **saved}  # options added since the checkpoint: their defaults
    diff = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"cannot resume: the configuration differs from the checkpoint's in {diff}; start a new output "
            "directory or use the original settings"
        )


def run_finetuning(
    config: FinetuneConfig,
    dataset: SegmentationDataset | None = None,
    progress: Callable[..., None] | None = None,
    cancel: Any = None,
) -> FinetuneResult:
    """Finetune a segmentation model; see the module docstring.

    Args:
        config: the run's settings.
        dataset: the data (default: ``load_nnunet_dataset(config.data)``).
        progress: callback (stage, done, total, message): "load", "features" (fewshot), "finetune" (steps),
            "validate" (epochs).
        cancel: CancelToken / threading.Event, checked every step (raises progress.Cancelled; the last epoch's
            checkpoint stays valid for --resume).

    Returns:
        a FinetuneResult.
    """
    start = time.perf_counter()
    if not config.output:
        raise ValueError("finetune needs an output directory (config 'output' / --out)")
    out = Path(config.output).expanduser()
    device = select_device(config.device)
    if dataset is None:
        if not config.data:
            raise ValueError("finetune needs a dataset: an nnU-Net raw dataset folder (config 'data' / --data)")
        dataset = load_nnunet_dataset(config.data)
    train_names, val_names = _split(dataset, config)
    torch.manual_seed(config.seed)

    by_name = {c.name: c for c in dataset.training}
    loaded = []
    for i, name in enumerate(train_names + val_names):
        check_cancel(cancel)
        image, label = load_case(by_name[name], dataset)
        loaded.append((name, image, label))
        report(progress, "load", i + 1, len(train_names) + len(val_names), name)
    train_pairs, val_pairs = loaded[: len(train_names)], loaded[len(train_names) :]
    preprocessing = _preprocessing(config, dataset, train_pairs)
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else None
    train_data = SliceData.from_cases(
        train_pairs, preprocessing, dataset.n_classes, cache, labelled_only=config.mode == "fewshot"
    )
    val_data = SliceData.from_cases(val_pairs, preprocessing, dataset.n_classes, cache) if val_pairs else None
    del loaded, train_pairs, val_pairs
    log.info("finetune %s: %d training slices, %d validation cases", config.mode, len(train_data), len(val_names))

    backbone, init_state, init_card, init_dir = _resolve_init(config)
    model = _build_model(config, backbone, dataset.n_classes)
    _load_init_weights(model, init_state, init_card)
    model.to(device)
    patch = backbone.patch_size
    tile = () if config.mode == "fewshot" else tuple(config.crop_size)
    inference = InferenceConfig(tile_size=tile, batch_size=config.val_batch_size)
    loss = DiceCELoss(config.dice_weight, config.ce_weight)
    if config.mode == "fewshot":
        task = _FewShotTask(
            model, train_data, loss, config.fewshot_pixels, config.fewshot_pca_dim, config.seed, device, progress
        )
    else:
        augment = AugmentConfig.from_dict({**config.augmentation, "enabled": config.augment})
        sampler = SliceSampler(
            train_data, config.crop_size, config.batch_size, config.oversample_foreground, augment, config.seed
        )
        task = _PatchTask(model, sampler, loss, config.mode == "decoder", device)
    groups = _param_groups(model, config)
    if isinstance(task, _FewShotTask):
        groups.append(
            {"params": list(task.reduced.parameters()), "lr": config.lr_decoder, "base_lr": config.lr_decoder}
        )
        groups[-1]["weight_decay"] = config.weight_decay
    optimizer = torch.optim.AdamW(groups, betas=tuple(config.betas))
    scaler = torch.amp.GradScaler(device.type) if config.amp and autocast_dtype(device) == torch.float16 else None
    trainable = [p for group in groups for p in group["params"]]

    card_args = {
        "backbone": backbone,  # drop path is a training setting: the card keeps the init value
        "labels": _labels(dataset, init_card),
        "preprocessing": preprocessing,
        "inference": inference.replace(batch_size=4),
        "name": config.name or f"{dataset.name}-{config.mode}",
        "description": config.description
        or f"{config.mode} finetuning on {dataset.name} ({len(train_names)} training cases)",
        "license": config.license or (init_card.license if init_card is not None else ""),
        "provenance": {
            "training": "python -m training finetune",
            "mode": config.mode,
            "init": config.init,
            "init_card": init_card.name if init_card is not None else "",
            "init_path": init_dir,
            "dataset": dataset.name,
            "train_cases": train_names,
            "val_cases": val_names,
            "git_commit": git_commit(),
        },
    }

    ckpt_path = out / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    best_dsc, epoch0 = -math.inf, 0
    if config.resume:
        state = load_checkpoint(ckpt_path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not a finetune checkpoint")
        _check_resumable(json.loads(state["config"]), config)
        model.load_state_dict(state["model"])
        if isinstance(task, _FewShotTask):
            task.reduced.load_state_dict(state["fewshot_reduced"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        history = json.loads(state["history"])
        best_dsc, epoch0 = float(state["best_dsc"]), int(state["epoch"])
        log.info("resumed from %s at epoch %d", ckpt_path, epoch0)
        if epoch0 >= config.epochs:
            log.info("the checkpoint already completed %d epochs", epoch0)
    out.mkdir(parents=True, exist_ok=True)

    total = config.total_steps
    warmup = int(round(config.warmup_fraction * total))
    for epoch in range(epoch0, config.epochs):
        task.train_mode()
        t0, losses = time.perf_counter(), []
        for it in range(config.iterations_per_epoch):
            check_cancel(cancel)
            step = epoch * config.iterations_per_epoch + it
            for group in optimizer.param_groups:
                group["lr"] = schedules.warmup_linear(step, total, group["base_lr"], 0.0, warmup)
            value = task(step)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(value).backward()
                scaler.unscale_(optimizer)
            else:
                value.backward()
            if not torch.isfinite(value):
                raise FloatingPointError(f"the loss became {value.item()} at step {step}; lower the learning rate")
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            losses.append(float(value.detach()))
            report(progress, "finetune", step + 1, total, f"epoch {epoch + 1} loss {losses[-1]:.4f}")
        if isinstance(task, _FewShotTask):
            task.fold()
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * config.iterations_per_epoch,
            "loss": float(np.mean(losses)),
            "train_seconds": time.perf_counter() - t0,
        }
        if val_data is not None:
            dsc, per_class = validation_dice(model, val_data, inference, patch, device, cancel)
            entry["val_dsc"] = dsc
            entry["val_dsc_per_class"] = {name: d for (_, name), d in zip(dataset.classes, per_class)}
            report(progress, "validate", epoch + 1, config.epochs, f"epoch {epoch + 1} val DSC {dsc:.4f}")
        history.append(entry)
        log.info("epoch %d: %s", epoch + 1, {k: v for k, v in entry.items() if k != "val_dsc_per_class"})
        score = entry.get("val_dsc", math.nan)
        improved = val_data is None or (not math.isnan(score) and score > best_dsc)
        summary = {"epochs_done": epoch + 1, "history": history[-1]}
        _save_card(out / "last", model, config, card_args, summary)
        if improved:
            best_dsc = score if val_data is not None else best_dsc
            _save_card(out / "best", model, config, card_args, {**summary, "best_epoch": epoch + 1})
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": json.dumps(config.to_dict()),
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "history": json.dumps(history),
            "best_dsc": best_dsc,
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if isinstance(task, _FewShotTask):
            state["fewshot_reduced"] = task.reduced.state_dict()
        save_checkpoint(ckpt_path, state)
        _write_json(out / "history.json", history)
    _write_json(out / "finetune_config.json", config.to_dict())
    seconds = time.perf_counter() - start
    log.info("finetuning done in %.1f s; best validation DSC %s", seconds, best_dsc)
    return FinetuneResult(out / "best", out / "last", history, best_dsc, seconds)


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data)


__all__ = ["MODES", "FinetuneConfig", "FinetuneResult", "load_finetune_config", "run_finetuning", "validation_dice"]

"""The training step of each finetuning mode, behind one interface (``_Task``) that run_finetuning drives.

A task is called with the global step and returns the loss; its hooks add the parameters it trains outside the model
(``extra_param_groups``), finish an epoch (``end_epoch``) and carry their state in the training checkpoint
(``extra_state`` / ``load_extra_state``). Its class answers what the mode needs before and after the loop: the
network (``build_model``), which slices it trains on (``labelled_only``), how it validates and pads
(``whole_slices``, ``pads_like_init``), whether it reads a feature cache (``uses_feature_cache``) and the model card
it is saved as (``new_card``). ``task_class`` is the one place that picks the mode's class; ``make_task`` builds its
task.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from MedDINOv3Core.architecture import ViTConfig
from MedDINOv3Core.card import ModelCard
from MedDINOv3Core.data.augment import AugmentConfig
from MedDINOv3Core.data.nnunet_data import DatasetError, SliceData, SliceSampler
from MedDINOv3Core.device import autocast
from MedDINOv3Core.losses.segmentation import DiceCELoss
from MedDINOv3Core.models.fewshot_head import FewShotHeadConfig, FewShotSegmenter
from MedDINOv3Core.models.segmenter import Segmenter, SegmenterConfig
from MedDINOv3Core.progress import ProgressCallback, report
from MedDINOv3Core.segmentation_cards import new_fewshot_card, new_segmentation_card
from MedDINOv3Core.train.finetune_config import FinetuneConfig

log = logging.getLogger(__name__)


class _Task:
    """One finetuning mode's step. Subclasses implement ``create``, ``build_model``, ``new_card``, ``train_mode``
    and ``__call__``; the other hooks default to nothing."""

    labelled_only = False  # trains on the labelled slices only (unpainted slices are unlabelled, not background)
    whole_slices = False  # validates and predicts on whole slices (else on tiles of crop_size)
    pads_like_init = False  # pads slices with the init card's pad value (its frozen backbone saw slices padded so)
    uses_feature_cache = False  # takes the painted volume's tokens from a feature cache when one is given

    @classmethod
    def create(
        cls,
        config: FinetuneConfig,
        model: nn.Module,
        data: SliceData,
        loss: DiceCELoss,
        device: torch.device,
        progress: ProgressCallback | None,
        features: dict[int, Any] | None,
        pad_value: float,
        warm: bool,
    ) -> _Task:
        """The task for ``model`` on the training slices ``data`` (the arguments of ``make_task``)."""
        raise NotImplementedError

    @staticmethod
    def build_model(config: FinetuneConfig, backbone: ViTConfig, n_classes: int, init_backbone: bool) -> nn.Module:
        """The mode's network; ``init_backbone=False`` when init weights are loaded into the backbone next."""
        raise NotImplementedError

    @staticmethod
    def new_card(model: nn.Module, card_args: dict[str, Any], provenance: dict[str, Any]) -> ModelCard:
        """The model card of the trained ``model`` (``card_args``: what the run's cards are written with)."""
        raise NotImplementedError

    def train_mode(self) -> None:
        raise NotImplementedError

    def __call__(self, step: int) -> torch.Tensor:
        raise NotImplementedError

    def extra_param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups for parameters the task trains outside the model."""
        return []

    def end_epoch(self) -> None:
        """Called after every epoch's steps, before validation and saving."""

    def extra_state(self) -> dict[str, Any]:
        """Entries the training checkpoint holds for this task."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` saved."""


class _PatchTask(_Task):
    """full / decoder: Dice + CE on sampled, augmented 2D patches."""

    def __init__(self, model: Segmenter, sampler: SliceSampler, loss: DiceCELoss, frozen: bool, device) -> None:
        self.model, self.sampler, self.loss, self.frozen, self.device = model, sampler, loss, frozen, device

    @classmethod
    def create(cls, config, model, data, loss, device, progress, features, pad_value, warm) -> _PatchTask:
        augment = AugmentConfig.from_dict({**config.augmentation, "enabled": config.augment})
        sampler = SliceSampler(
            data, config.crop_size, config.batch_size, config.oversample_foreground, augment, config.seed
        )
        return cls(model, sampler, loss, config.mode == "decoder", device)

    @staticmethod
    def build_model(config: FinetuneConfig, backbone: ViTConfig, n_classes: int, init_backbone: bool) -> nn.Module:
        drop = config.drop_path if config.mode == "full" else 0.0
        return Segmenter(
            backbone.replace(drop_path_rate=drop),
            SegmenterConfig(n_classes, tuple(config.intermediate_layers)),
            init_backbone,
        )

    @staticmethod
    def new_card(model: nn.Module, card_args: dict[str, Any], provenance: dict[str, Any]) -> ModelCard:
        return new_segmentation_card(
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


class _FewShotTask(_Task):
    """fewshot: features of the labelled slices cached once; the head trains on sampled pixels.

    The cached token features (F = 3072 channels for ViT-B) are reduced once to their ``pca_dim`` principal
    components (seeded randomized PCA of the training tokens); the head's token projection is trained in that
    subspace (``self.reduced``, pca_dim -> hidden) and folded back into ``head.token_proj`` (F -> hidden) by
    ``fold()`` before every validation and save, so the saved model is an ordinary FewShotSegmenter. This makes a
    training step ~F / pca_dim times cheaper (the F x hidden projection of every token dominated it) and
    regularises the few-shot fit. ``warm`` (the head came from the init card, a previous round's few-shot model):
    the previous projection W_0 is kept whole and the subspace map learns a correction from zero, so the next round
    starts exactly where the last one ended.

    Slices are padded centred with ``pad_value`` (the card's inference pad value: what predict_volume and the
    feature cache do). The slices of a case in ``features`` (case index -> matching FeatureCache) take their
    tokens from the cache: no backbone pass (progress "features" says "from cache").
    """

    labelled_only = True
    whole_slices = True
    pads_like_init = True
    uses_feature_cache = True

    def __init__(
        self,
        model: FewShotSegmenter,
        data: SliceData,
        loss: DiceCELoss,
        pixels: int,
        pca_dim: int,
        seed: int,
        device,
        progress: ProgressCallback | None,
        features_from: dict[int, Any] | None = None,
        pad_value: float = 0.0,
        warm: bool = False,
    ) -> None:
        from MedDINOv3Core.fewshot_cache import slice_tokens

        self.model, self.loss, self.pixels, self.seed, self.device = model, loss, pixels, seed, device
        p = model.patch_size
        features, channels, targets = [], [], []
        total = len(data)
        cached = features_from or {}
        self.backbone_slices = sum(1 for c, _ in data.slices if c not in cached)  # slices the backbone runs on
        what = "from cache" if not self.backbone_slices else "backbone pass over the labelled slices"
        report(progress, "features", 0, total, what)
        model.eval()
        for i, (c, z) in enumerate(data.slices):
            image = torch.from_numpy(np.asarray(data.cases[c].images[z], dtype=np.float32))
            target = torch.from_numpy(np.asarray(data.cases[c].targets[z]).astype(np.int64))
            h, w = image.shape
            ph, pw = -(-h // p) * p, -(-w // p) * p
            top, left = (ph - h) // 2, (pw - w) // 2  # the padding of sliding_window_logits for whole slices
            x = torch.full((1, 1, ph, pw), float(pad_value))
            x[0, 0, top : top + h, left : left + w] = image
            t = torch.full((ph, pw), -1, dtype=torch.int64)
            t[top : top + h, left : left + w] = target
            with torch.no_grad():
                if c in cached:
                    tokens = slice_tokens(cached[c], data.cases[c].slice_index(z))
                    if tuple(tokens.shape[-2:]) != (ph // p, pw // p):
                        raise DatasetError(
                            f"the feature cache's grid {tuple(tokens.shape[-2:])} differs from the slices' "
                            f"{(ph // p, pw // p)}; rebuild the cache with this model"
                        )
                    features.append(tokens.to(device))
                else:
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
        w = head.token_proj.weight[:, :, 0, 0].detach().clone()
        with torch.no_grad():
            if warm:  # keep the previous round's projection whole and learn a correction in the subspace
                self.base_weight, self.base_bias = w, head.token_proj.bias.detach().clone()
                self.reduced.weight.zero_()
                self.reduced.bias.zero_()
            else:  # start from the head's initial projection restricted to the subspace
                self.base_weight, self.base_bias = torch.zeros_like(w), torch.zeros_like(head.token_proj.bias)
                self.reduced.weight.copy_(w @ self.basis)
                self.reduced.bias.copy_(head.token_proj.bias + w @ self.mean)
            self.base = tokens @ self.base_weight.T + self.base_bias  # (S h w, hidden): 0 for a cold start
        head.token_proj.requires_grad_(False)
        self.channels = torch.cat(channels)  # (S, K, H, W)
        self.targets = torch.stack(targets).to(device)  # (S, H, W), -1 outside the slices
        self.valid = torch.nonzero(self.targets >= 0)  # (M, 3) rows (slice, y, x)
        log.info("few-shot: %d slices, %d tokens, features %d -> %d dims", self.grid[0], len(tokens), w.shape[1], k)

    @classmethod
    def create(cls, config, model, data, loss, device, progress, features, pad_value, warm) -> _FewShotTask:
        return cls(
            model,
            data,
            loss,
            config.fewshot_pixels,
            config.fewshot_pca_dim,
            config.seed,
            device,
            progress,
            features,
            pad_value,
            warm,
        )

    @staticmethod
    def build_model(config: FinetuneConfig, backbone: ViTConfig, n_classes: int, init_backbone: bool) -> nn.Module:
        head = FewShotHeadConfig(
            n_classes,
            intermediate_layers=tuple(config.intermediate_layers),
            hidden=config.fewshot_hidden,
            image_sigmas=tuple(config.fewshot_image_sigmas),
            position=config.fewshot_position,
        )
        return FewShotSegmenter(backbone, head, init_backbone)

    @staticmethod
    def new_card(model: nn.Module, card_args: dict[str, Any], provenance: dict[str, Any]) -> ModelCard:
        return new_fewshot_card(
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

    def extra_param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": list(self.reduced.parameters()), "lr": lr, "base_lr": lr, "weight_decay": weight_decay}]

    def end_epoch(self) -> None:
        self.fold()

    def extra_state(self) -> dict[str, Any]:
        return {"fewshot_reduced": self.reduced.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.reduced.load_state_dict(state["fewshot_reduced"])

    @torch.no_grad()
    def fold(self) -> None:
        """Write the subspace projection into ``head.token_proj``: W = W_0 + W_r B^T, b = b_0 + b_r - W_r B^T mean
        (W_0, b_0: the warm start's projection, else 0)."""
        weight = self.reduced.weight @ self.basis.T  # (hidden, F)
        self.model.head.token_proj.weight.copy_((self.base_weight + weight)[:, :, None, None])
        self.model.head.token_proj.bias.copy_(self.base_bias + self.reduced.bias - weight @ self.mean)

    def train_mode(self) -> None:
        self.model.eval()
        self.model.head.train()

    def __call__(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))
        index = torch.randint(self.valid.shape[0], (self.pixels,), generator=g)  # with replacement: O(pixels)
        points = self.valid[index.to(self.valid.device)]
        s, h, w = self.grid
        projected = (self.base + self.reduced(self.tokens)).reshape(s, h, w, -1).permute(0, 3, 1, 2)  # (S, hid, h, w)
        logits = self.model.head.point_logits(projected, self.channels, points)  # (N, C)
        target = self.targets[points[:, 0], points[:, 1], points[:, 2]]
        return self.loss(logits.T[None, :, :, None], target[None, :, None])


def task_class(config: FinetuneConfig) -> type[_Task]:
    """The task class of ``config.mode``: fewshot, else the patch task of full / decoder."""
    return _FewShotTask if config.mode == "fewshot" else _PatchTask


def make_task(
    config: FinetuneConfig,
    model: nn.Module,
    data: SliceData,
    loss: DiceCELoss,
    device: torch.device,
    progress: ProgressCallback | None,
    features: dict[int, Any] | None = None,
    pad_value: float = 0.0,
    warm: bool = False,
) -> _Task:
    """The task of ``config.mode`` for ``model`` on the training slices ``data``; fewshot: ``features`` (case
    index -> matching FeatureCache), the slices' ``pad_value`` and ``warm`` (the head was loaded from the init card)."""
    return task_class(config).create(config, model, data, loss, device, progress, features, pad_value, warm)

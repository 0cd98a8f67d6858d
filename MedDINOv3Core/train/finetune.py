"""Segmentation finetuning: one loop, three modes (the MedDINOv3 paper, arXiv:2509.02379).

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
The settings are in train.finetune_config, the phases around the loop in train.finetune_setup and each mode's
training step in train.finetune_tasks; the public names are re-exported here.

Preprocessing: the frozen-backbone modes (decoder, fewshot) keep the init card's preprocessing by default (intensity
"auto"): the backbone was trained on those intensities and that grid. Otherwise it is fitted to the training cases.
The card's provenance says which (``preprocessing_source``).

Validation: on the held-out cases (``val_cases``, or ``val_fraction`` of them: at least one from 3 cases upwards).
With 1 or 2 cases none is held out: the DSC is measured on the training cases, with a warning (logged, in every
history.json entry as ``validation_note`` and in the cards' provenance). ``val_fraction`` 0 switches it off.

Output directory ``output_dir``: ``best/`` and ``last/`` (model cards, loadable by MedDINOv3Core.weights.load_model,
predict, explore and Slicer), ``checkpoint.pt`` (model, optimizer, step, RNG states, history: exact resume at an
epoch boundary), ``history.json`` and ``finetune_config.json``. ``best/`` is the epoch with the best DSC on what
validation is measured on (provenance ``best_selected_by``); without validation it is the last epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from MedDINOv3Core.atomic import write_json
from MedDINOv3Core.card import ModelCard
from MedDINOv3Core.data.nnunet_data import SegmentationDataset, load_nnunet_dataset
from MedDINOv3Core.device import autocast_dtype, compile_blocks, select_device
from MedDINOv3Core.inference import InferenceConfig
from MedDINOv3Core.losses.segmentation import DiceCELoss
from MedDINOv3Core.models.vit import ViTConfig
from MedDINOv3Core.progress import ProgressCallback, check_cancel, report
from MedDINOv3Core.train import schedules
from MedDINOv3Core.train.checkpoint import git_commit, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from MedDINOv3Core.train.finetune_config import INTENSITY, MODES, FinetuneConfig, load_finetune_config
from MedDINOv3Core.train.finetune_setup import (
    CHECKPOINT_FORMAT,
    HELD_OUT,
    NO_VALIDATION,
    RESUMABLE_CHANGES,
    TRAINING_CASES,
    FinetuneData,
    _build_model,
    _check_resumable,
    _labels,
    _load_init_weights,
    _param_groups,
    _resolve_init,
    _save_card,
    backbone_fingerprint,
    load_finetune_data,
    match_feature_cache,
    resolve_intensity,
    trains_backbone,
    validation_dice,
)
from MedDINOv3Core.train.finetune_tasks import _Task, make_task, task_class
from MedDINOv3Core.train.step_losses import READ_EVERY, StepLosses

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What run_finetuning returns: the card directories, the per-epoch history and the best validation DSC."""

    best: Path
    last: Path
    history: list[dict[str, Any]]
    best_dsc: float
    seconds: float
    validation: str = HELD_OUT  # what best_dsc is measured on: HELD_OUT, TRAINING_CASES or NO_VALIDATION
    preprocessing_source: str = ""


@dataclass
class _Training:
    """What the loop holds: the model, its task and optimizer, and what the cards are written with."""

    model: nn.Module
    task: _Task
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    trainable: list[nn.Parameter]
    inference: InferenceConfig
    backbone: ViTConfig
    card_args: dict[str, Any]
    backbone_is_init: bool = False  # frozen and loaded from the init weights: checkpoints leave it out


def _set_up(
    config: FinetuneConfig,
    dataset: SegmentationDataset,
    data: FinetuneData,
    device: torch.device,
    progress: ProgressCallback | None,
    init: tuple[ViTConfig, dict[str, torch.Tensor] | None, ModelCard | None, str],
) -> _Training:
    """The model (initial weights loaded from ``init``, see _resolve_init), the mode's task, the optimizer and the
    model-card fields."""
    backbone, init_state, init_card, init_dir = init
    model = _build_model(config, backbone, dataset.n_classes, init_backbone=init_state is None)
    warm = _load_init_weights(model, init_state, init_card)
    model.to(device)
    if config.compile:
        compile_blocks(model)
    kind = task_class(config)  # the mode's specifics
    tile = () if kind.whole_slices else tuple(config.crop_size)
    # few-shot: the frozen backbone sees slices padded as the init card pads them (and as its feature caches hold them)
    init_inference = InferenceConfig.from_dict(init_card.inference or {}) if init_card is not None else None
    pad = init_inference.pad_value if init_inference is not None and kind.pads_like_init else 0.0
    inference = InferenceConfig(tile_size=tile, batch_size=config.val_batch_size, pad_value=pad)
    loss = DiceCELoss(config.dice_weight, config.ce_weight)
    features = match_feature_cache(config, model, data, pad) if kind.uses_feature_cache else {}
    task = make_task(config, model, data.train, loss, device, progress, features=features, pad_value=pad, warm=warm)
    groups = _param_groups(model, config) + task.extra_param_groups(config.lr_decoder, config.weight_decay)
    optimizer = torch.optim.AdamW(groups, betas=tuple(config.betas))
    scaler = torch.amp.GradScaler(device.type) if config.amp and autocast_dtype(device) == torch.float16 else None
    trainable = [p for group in groups for p in group["params"]]
    card_args = {
        "backbone": backbone,  # drop path is a training setting: the card keeps the init value
        "labels": _labels(dataset, init_card),
        "preprocessing": data.preprocessing,
        "inference": inference.replace(batch_size=4),
        "name": config.name or f"{dataset.name}-{config.mode}",
        "description": config.description
        or f"{config.mode} finetuning on {dataset.name} ({len(data.train_names)} training cases)",
        "license": config.license or (init_card.license if init_card is not None else ""),
        "provenance": {
            "training": "python -m training finetune",
            "mode": config.mode,
            "init": config.init_from,
            "init_card": init_card.name if init_card is not None else "",
            "init_path": init_dir,
            "dataset": dataset.name,
            "train_cases": data.train_names,
            "val_cases": data.val_names,
            "validation": data.validation + (f" ({data.validation_note})" if data.validation_note else ""),
            "preprocessing_source": data.preprocessing_source,
            "git_commit": git_commit(),
        },
    }
    frozen_init = init_state is not None and not trains_backbone(config)
    return _Training(model, task, optimizer, scaler, trainable, inference, backbone, card_args, frozen_init)


def _resume(
    run: _Training, config: FinetuneConfig, ckpt_path: Path, intensity: str
) -> tuple[list[dict[str, Any]], float, int]:
    """Restore a run from its checkpoint: (history, best DSC, epochs done)."""
    state = load_checkpoint(ckpt_path, map_location="cpu", what="finetune checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{ckpt_path} is not a finetune checkpoint")
    _check_resumable(json.loads(state["config"]), config, intensity)
    saved = state["model"]
    if "backbone_fingerprint" in state:  # saved without the frozen backbone: it must be the init weights loaded now
        if state["backbone_fingerprint"] != backbone_fingerprint(run.model):
            raise ValueError(
                f"cannot resume {ckpt_path}: the init model's backbone weights changed since it was saved; start a "
                "new output directory"
            )
        saved = {**{k: v for k, v in run.model.state_dict().items() if k.startswith("backbone.")}, **saved}
    run.model.load_state_dict(saved)
    run.task.load_extra_state(state)
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    history = json.loads(state["history"])
    best_dsc, epoch0 = float(state["best_dsc"]), int(state["epoch"])
    log.info("resumed from %s at epoch %d", ckpt_path, epoch0)
    if epoch0 >= config.epochs:
        log.info("the checkpoint already completed %d epochs", epoch0)
    return history, best_dsc, epoch0


def _train_epoch(
    run: _Training, config: FinetuneConfig, epoch: int, progress: ProgressCallback | None, cancel: Any
) -> dict[str, Any]:
    """One epoch of steps; returns its history entry (epoch, step, mean loss, seconds). The losses stay on the
    device and are read every READ_EVERY steps and at the end of the epoch (StepLosses: a non-finite loss raises
    there, before any checkpoint)."""
    total = config.total_steps
    warmup = int(round(config.warmup_fraction * total))
    optimizer, scaler = run.optimizer, run.scaler
    run.task.train_mode()
    t0, losses, last = time.perf_counter(), [], ""
    window = StepLosses(lambda step, _, value: f"the loss became {value} at step {step}; lower the learning rate")
    for it in range(config.iterations_per_epoch):
        check_cancel(cancel)
        step = epoch * config.iterations_per_epoch + it
        for group in optimizer.param_groups:
            group["lr"] = schedules.warmup_linear(step, total, group["base_lr"], 0.0, warmup)
        value = run.task(step)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(value).backward()
            scaler.unscale_(optimizer)
        else:
            value.backward()
        torch.nn.utils.clip_grad_norm_(run.trainable, config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        window.add(step, {"loss": value})
        if len(window) >= READ_EVERY or it == config.iterations_per_epoch - 1:
            losses += [row["loss"] for _, row in window.read()]
            last = f" loss {losses[-1]:.4f}"
        report(progress, "finetune", step + 1, total, f"epoch {epoch + 1}{last}")
    run.task.end_epoch()
    return {
        "epoch": epoch + 1,
        "step": (epoch + 1) * config.iterations_per_epoch,
        "loss": float(np.mean(losses)),
        "train_seconds": time.perf_counter() - t0,
    }


def _checkpoint_state(
    run: _Training, config: FinetuneConfig, epoch: int, history: list[dict[str, Any]], best_dsc: float
) -> dict[str, Any]:
    model = run.model.state_dict()
    frozen = run.backbone_is_init
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config.to_dict()),
        "epoch": epoch + 1,
        # a frozen backbone is the init weights, which resuming loads again: only its fingerprint is kept
        "model": {k: v for k, v in model.items() if not (frozen and k.startswith("backbone."))},
        "optimizer": run.optimizer.state_dict(),
        "rng": rng_state(),
        "history": json.dumps(history),
        "best_dsc": best_dsc,
        "git_commit": git_commit(),  # the code that wrote it, as in pretraining checkpoints and model cards
    }
    if frozen:
        state["backbone_fingerprint"] = backbone_fingerprint(run.model)
    if run.scaler is not None:
        state["scaler"] = run.scaler.state_dict()
    state.update(run.task.extra_state())
    return state


def run_finetuning(
    config: FinetuneConfig,
    dataset: SegmentationDataset | None = None,
    progress: ProgressCallback | None = None,
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
    if not config.output_dir:
        raise ValueError("finetune needs an output directory (config 'output_dir' / --out)")
    out = Path(config.output_dir).expanduser()
    device = select_device(config.device)
    if dataset is None:
        if not config.data:
            raise ValueError("finetune needs a dataset: an nnU-Net raw dataset folder (config 'data' / --data)")
        dataset = load_nnunet_dataset(config.data)
    torch.manual_seed(config.seed)  # the case split draws from its own seeded numpy generator
    init = _resolve_init(config)
    data = load_finetune_data(config, dataset, progress, cancel, init_card=init[2])
    n_val = len(data.val_names)
    log.info("finetune %s: %d training slices, %d validation case%s", config.mode, len(data.train), n_val,
             "" if n_val == 1 else "s")  # fmt: skip
    log.info("preprocessing %s", data.preprocessing_source)
    if data.validation == TRAINING_CASES:
        log.warning("validation: %s", data.validation_note)
    elif data.validation == NO_VALIDATION:
        log.info("%s", data.validation_note)
    run = _set_up(config, dataset, data, device, progress, init)

    ckpt_path = out / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    best_dsc, best_epoch, epoch0 = -math.inf, 0, 0
    if config.resume:
        history, best_dsc, epoch0 = _resume(run, config, ckpt_path, resolve_intensity(config, init[2]))
        best_epoch = _best_epoch(history, best_dsc)
    out.mkdir(parents=True, exist_ok=True)
    selected_by = {
        HELD_OUT: "the best validation DSC on the held-out cases",
        TRAINING_CASES: "the best DSC on the training cases (none held out)",
        NO_VALIDATION: "the last epoch (no validation)",
    }[data.validation]

    for epoch in range(epoch0, config.epochs):
        entry = _train_epoch(run, config, epoch, progress, cancel)
        if data.val is not None:
            patch = run.backbone.patch_size
            what = "val DSC" if data.validation == HELD_OUT else "DSC on the training cases"
            dsc, per_class = validation_dice(run.model, data.val, run.inference, patch, device, cancel)
            entry["val_dsc"] = dsc
            entry["val_dsc_per_class"] = {name: d for (_, name), d in zip(dataset.classes, per_class)}
            report(progress, "validate", epoch + 1, config.epochs, f"epoch {epoch + 1} {what} {dsc:.4f}")
        entry["validation"] = data.validation
        if data.validation_note:
            entry["validation_note"] = data.validation_note
        history.append(entry)
        shown = {k: v for k, v in entry.items() if k not in ("val_dsc_per_class", "validation_note")}
        log.info("epoch %d: %s", epoch + 1, shown)
        score = entry.get("val_dsc", math.nan)
        improved = data.val is None or (not math.isnan(score) and score > best_dsc)
        summary = {"epochs_done": epoch + 1, "history": history[-1]}
        last = _save_card(out / "last", run.model, config, run.card_args, summary)
        if improved:
            best_dsc, best_epoch = (score if data.val is not None else best_dsc), epoch + 1
            extra = {**summary, "best_epoch": best_epoch, "best_selected_by": selected_by}
            _save_card(out / "best", run.model, config, run.card_args, extra, same_weights_as=last)
        save_checkpoint(ckpt_path, _checkpoint_state(run, config, epoch, history, best_dsc))
        write_json(out / "history.json", history)
        from MedDINOv3Core.curves import write_finetune_curve

        write_finetune_curve(history, out / "history.png")  # the loss / validation DSC curves
    write_json(out / "finetune_config.json", config.to_dict())
    seconds = time.perf_counter() - start
    if data.validation == HELD_OUT:
        log.info("finetuning done in %.1f s; best validation DSC %.4f (epoch %d)", seconds, best_dsc, best_epoch)
    elif data.validation == TRAINING_CASES:
        log.warning(
            "finetuning done in %.1f s; best DSC on the TRAINING cases %.4f (epoch %d): no held-out case, so this "
            "is not a validation score",
            seconds,
            best_dsc,
            best_epoch,
        )
    else:
        log.info("finetuning done in %.1f s; no validation: best/ is the last epoch", seconds)
    return FinetuneResult(
        out / "best", out / "last", history, best_dsc, seconds, data.validation, data.preprocessing_source
    )


def _best_epoch(history: list[dict[str, Any]], best_dsc: float) -> int:
    """The epoch of a resumed history whose DSC is ``best_dsc`` (the last epoch without validation)."""
    matches = [h["epoch"] for h in history if h.get("val_dsc") == best_dsc]
    return matches[0] if matches else (history[-1]["epoch"] if history else 0)


__all__ = [
    "CHECKPOINT_FORMAT",
    "INTENSITY",
    "MODES",
    "RESUMABLE_CHANGES",
    "FinetuneConfig",
    "FinetuneResult",
    "load_finetune_config",
    "run_finetuning",
    "validation_dice",
]

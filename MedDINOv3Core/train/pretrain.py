"""Self-supervised pretraining of the MedDINOv3 backbone on CT slices (DINOv3 recipe, stages 1-3).

One visible loop, top to bottom (``run_pretraining``):

1. Data: the slice cache (built once), the step-seeded sampler and the multi-crop dataset.
2. Models: the student (backbone + DINO head + iBOT head), its EMA teacher, and for Gram anchoring a frozen Gram
   teacher from an earlier checkpoint. Under torchrun the student is wrapped in DDP (or sharded with FSDP2).
3. Each step: schedules (pure functions of the step) set lr, weight decay, teacher temperature and momentum; the
   teacher makes targets (Sinkhorn-Knopp centred), the student is trained on
   L = L_DINO + L_iBOT + 0.1 L_KoLeo (+ 2 L_Gram in stages 2 and 3), gradients are clipped, the prototype layers
   stay frozen for the first iterations, and the teacher follows the student by EMA.
4. Rank 0 logs and writes atomic checkpoints holding everything needed for an exact resume (model, teacher,
   optimizer, loss state, step = data position, RNG of every rank).

The settings are in train.pretrain_config and the models in train.pretrain_model; their public names are
re-exported here. ``export_backbone`` (in train.checkpoint, re-exported here) turns a checkpoint's teacher
backbone into a model card for finetuning and exploration.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from MedDINOv3Core.atomic import atomic_path, write_json
from MedDINOv3Core.data.slice_cache import (
    PretrainDataset,
    SliceCache,
    StepBatchSampler,
    build_slice_cache,
    check_data_roots,
    collate_views,
)
from MedDINOv3Core.device import autocast, select_device
from MedDINOv3Core.losses import masked_patch_weights
from MedDINOv3Core.models.vit import ViTConfig
from MedDINOv3Core.progress import ProgressCallback, check_cancel, report
from MedDINOv3Core.train import distributed as D
from MedDINOv3Core.train import schedules
from MedDINOv3Core.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    export_backbone,
    git_commit,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from MedDINOv3Core.train.pretrain_config import PretrainConfig, load_pretrain_config
from MedDINOv3Core.train.pretrain_model import SSLModel, _Run, ema_update, param_groups
from MedDINOv3Core.train.step_losses import READ_EVERY, StepLosses

log = logging.getLogger(__name__)
__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "SSLModel",
    "StepStats",
    "ema_update",
    "export_backbone",
    "load_pretrain_config",
    "param_groups",
    "run_pretraining",
    "train_step",
    "training_flops_per_image",
]


@dataclass
class PretrainResult:
    """What a run returns: the last step, the per-step mean total loss (and parts), the final checkpoint."""

    step: int
    history: list[dict[str, float]]
    checkpoint: Path | None


def _gram_targets(run: _Run, gram_crops: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Gram teacher patch features of the 2x crops, pooled down to the student's grid: (n_global*B, N, D)."""
    f = run.gram_teacher.forward_features(gram_crops)
    b, _, d = f.patch_tokens.shape
    fmap = f.patch_tokens.transpose(1, 2).reshape(b, d, *f.grid)
    if tuple(f.grid) != tuple(grid):
        fmap = F.adaptive_avg_pool2d(fmap, grid)
    return fmap.flatten(2).transpose(1, 2)


@dataclass
class StepStats:
    """One step's losses as device tensors (read back in windows: MedDINOv3Core.train.step_losses) and its
    schedule values (lr, wd, teacher_temp, momentum) as numbers."""

    losses: dict[str, torch.Tensor]
    schedule: dict[str, float]


def train_step(run: _Run, batch: dict[str, torch.Tensor], step: int) -> StepStats:
    """One optimisation step on this process's share of the global batch; returns its losses (this process) without
    waiting for the device (a non-finite loss is found when they are read)."""
    cfg, dev = run.config, run.device
    total = cfg.total_steps
    lr = schedules.warmup_cosine(step, total, cfg.lr, cfg.min_lr, cfg.warmup_steps)
    wd = schedules.weight_decay(step, total, cfg.weight_decay_start, cfg.weight_decay_end)
    t_temp = schedules.teacher_temperature(
        step, cfg.teacher_temp_start, cfg.teacher_temp, cfg.teacher_temp_warmup_steps
    )
    momentum = schedules.ema_momentum(step, total, cfg.momentum_start, cfg.momentum_end)
    for g in run.optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]
        g["weight_decay"] = wd * g["wd_mult"]

    global_crops = batch["global"].to(dev, non_blocking=True)
    local_crops = batch["local"].to(dev, non_blocking=True)
    masks = batch["masks"].to(dev, non_blocking=True)
    n_g, n_l = cfg.n_global, cfg.n_local
    b = global_crops.shape[0] // n_g

    with autocast(dev, cfg.amp):
        with torch.no_grad():
            t_out = run.teacher(global_crops, masks=masks, teacher=True)
        s_out = run.model(global_crops, local_crops, masks)
        dino_targets = run.dino_loss.teacher_targets(t_out["dino_logits"].float().reshape(n_g, b, -1), t_temp)
        ibot_targets = run.ibot_loss.teacher_targets(t_out["ibot_logits"].float(), t_temp)
        losses: dict[str, torch.Tensor] = {}
        losses["dino"] = run.dino_loss(s_out["dino_logits"].reshape(n_g + n_l, b, -1), dino_targets)
        weights, n_masked = masked_patch_weights(masks)
        losses["ibot"] = run.ibot_loss(s_out["ibot_logits"], ibot_targets, weights, n_masked)
        losses["koleo"] = sum(run.koleo_loss(c) for c in s_out["cls_global"].chunk(n_g))
        if run.gram_teacher is not None:
            with torch.no_grad():
                p = run.backbone_config.patch_size
                grid = (global_crops.shape[-2] // p, global_crops.shape[-1] // p)
                target = _gram_targets(run, batch["gram"].to(dev, non_blocking=True), grid)
            losses["gram"] = run.gram_loss(s_out["patch_global"], target)
        loss = (
            cfg.dino_weight * losses["dino"]
            + cfg.ibot_weight * losses["ibot"]
            + cfg.koleo_weight * losses["koleo"]
            + (cfg.gram_weight * losses["gram"] if "gram" in losses else 0.0)
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.student.parameters(), cfg.grad_clip)
    if schedules.last_layer_frozen(step, cfg.freeze_last_layer_steps):
        for g in run.optimizer.param_groups:
            if g["last_layer"]:
                for p in g["params"]:
                    p.grad = None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    ema_update(run.teacher, run.student, momentum)
    return StepStats({**losses, "total": loss}, {"lr": lr, "wd": wd, "teacher_temp": t_temp, "momentum": momentum})


def _checkpoint_state(run: _Run, step: int) -> dict[str, Any] | None:
    """The full training state (collective: every rank must call it); None on ranks other than 0."""
    student, teacher, optim = run.model_states()
    rngs = [None] * run.world
    if D.is_enabled():
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if not D.is_main_process():
        return None
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "world_size": run.world,
        "config": run.config.to_dict(),
        "backbone_config": run.backbone_config.to_dict(),
        "head_config": run.config.head_config().to_dict(),
        "preprocessing": run.config.crop_config().preprocessing(),
        "git_commit": git_commit(),
        "student": student,
        "teacher": teacher,
        "optimizer": optim,
        "loss_state": {"dino": run.dino_loss.state_dict(), "ibot": run.ibot_loss.state_dict()},
        "scaler": run.scaler.state_dict(),
        "rng": rngs,
    }


def _save(run: _Run, path: Path, step: int) -> Path:
    state = _checkpoint_state(run, step)
    if state is not None:
        save_checkpoint(path, state)
    D.barrier()
    return path


def _prepare_slice_cache(
    config: PretrainConfig, cache_dir: Path, progress: ProgressCallback | None, cancel, poll_s: float = 2.0
) -> SliceCache:
    """Rank 0 builds (or completes) the cache and then writes a marker named after the torchrun job; the other
    ranks poll for that marker. ``cache_dir`` must be on a filesystem every rank can read (or be prebuilt)."""
    job = os.environ.get("TORCHELASTIC_RUN_ID", "local")
    marker = cache_dir / f".ready-{job}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if D.rank_from_env() == 0:
        cache = build_slice_cache(
            config.data, cache_dir, config.slice_size, config.hu_range, progress=progress, cancel=cancel
        )
        if D.launched_by_torchrun():
            for old in cache_dir.glob(".ready-*"):
                old.unlink(missing_ok=True)
            marker.touch()
        return cache
    waited = 0.0
    while not marker.exists():
        check_cancel(cancel)
        if waited % 300 < poll_s:
            log.info("rank %d waiting for rank 0 to build the slice cache %s", D.rank_from_env(), cache_dir)
        time.sleep(poll_s)
        waited += poll_s
    return SliceCache(cache_dir)


def _write_config(config: PretrainConfig, out_dir: Path) -> None:
    """Rank 0 writes the resolved config as ``config.json`` (atomically) in the output directory."""
    if D.rank_from_env() == 0:
        write_json(out_dir / "config.json", config.to_dict())


def _resume(run: _Run, config: PretrainConfig, ckpt_path: Path, device: torch.device) -> int:
    """Restore an interrupted run from ``ckpt_path`` when there is one (and resume is on); returns its step."""
    if not (config.resume and ckpt_path.is_file()):
        return 0
    rank, world = D.rank(), D.world_size()
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    run.load_states(ckpt)
    start = int(ckpt["step"])
    if ckpt.get("world_size") == world:
        set_rng_state(ckpt["rng"][rank])
    else:
        log.warning(
            "resuming on %d processes from a checkpoint of %s: RNG streams restart", world, ckpt.get("world_size")
        )
        torch.manual_seed(config.seed + rank + 1000003 * start)
    log.info("resumed from %s at step %d", ckpt_path, start)
    return start


def _loader(
    run: _Run, config: PretrainConfig, cache: SliceCache, start: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """This process's batches from step ``start`` on: multi-crop views of the slice cache, step-seeded."""
    crops = config.crop_config()
    dataset = PretrainDataset(
        cache,
        crops,
        run.backbone_config.patch_size,
        config.seed,
        config.mask_probability,
        config.mask_ratio,
        with_gram=run.gram_teacher is not None,
    )
    sampler = StepBatchSampler(
        len(dataset), config.batch_size, crops, config.seed, config.total_steps, start, D.rank(), D.world_size()
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_views,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # A private generator: creating the iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(config.seed),
    )


def _keep_copy(ckpt_path: Path, done: int) -> None:
    """A permanent copy of ``last.pt`` as ``step_NNNNNNN.pt`` (e.g. a Gram teacher for stage 2)."""
    with atomic_path(ckpt_path.with_name(f"step_{done:07d}.pt")) as tmp:
        shutil.copyfile(ckpt_path, tmp)


def run_pretraining(config: PretrainConfig, progress: ProgressCallback | None = None, cancel=None) -> PretrainResult:
    """Pretrain (or resume pretraining) as configured; see the module docstring for the steps.

    Works in one process and, unchanged, under torchrun (the process group is set up here from its environment).
    Only rank 0 reports progress, logs metrics (``metrics.jsonl``) and writes checkpoints
    (``checkpoints/last.pt``, atomic) and the resolved config (``config.json``) in ``output_dir``.
    """
    if not config.data:
        raise ValueError("no pretraining data: set data=[folder, ...] (CT volumes: NIfTI, NRRD, MHA, DICOM series)")
    if config.gram_weight > 0 and not (config.gram_teacher or config.init_from):
        raise ValueError("gram_weight > 0 needs gram_teacher= (an earlier pretraining checkpoint or model card)")
    check_data_roots(config.data)  # before anything is written into output_dir
    device = D.local_device(select_device(config.device))
    out_dir = Path(config.output_dir).expanduser()
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    _write_config(config, out_dir)

    # 1. data: the slice cache, built once by rank 0 BEFORE the process group exists, so that a build of hours
    # cannot hit a collective timeout; the other ranks wait for its ready marker and open it.
    cache_dir = Path(config.cache_dir or out_dir / "slice_cache").expanduser() / f"size_{config.slice_size or 0}"
    cache = _prepare_slice_cache(config, cache_dir, progress, cancel)
    D.init_distributed(device)
    rank, world = D.rank(), D.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} (global) is not divisible by {world} processes")

    # 2. models, optimizer, and the state of an interrupted run.
    torch.manual_seed(config.seed)  # the same initial weights on every rank (student, heads, and so the teacher)
    run = _Run(config, device)
    torch.manual_seed(config.seed + rank)  # then each rank its own stream (drop path, RoPE augmentation)
    start = _resume(run, config, ckpt_path, device)
    loader = _loader(run, config, cache, start, device)

    # 3. the loop.
    history: list[dict[str, float]] = []
    metrics = (out_dir / "metrics.jsonl").open("a", encoding="utf-8") if D.is_main_process() else None
    t0, last_path, last = time.perf_counter(), None, ""
    window = StepLosses(
        lambda step, name, value: (
            f"pretraining loss {name} is {value} at step {step}; lower lr= or set amp=false, then resume"
        )
    )
    try:
        for step, batch in enumerate(loader, start=start):
            check_cancel(cancel)
            stats = train_step(run, batch, step)
            window.add(step, stats.losses, stats.schedule)
            done = step + 1
            logged = done % config.log_every == 0 or done == config.total_steps
            saved = done % config.checkpoint_every == 0 or done == config.total_steps
            if logged or saved or len(window) >= READ_EVERY:  # the same steps on every rank (a collective)
                rate = (done - start) * config.batch_size / max(time.perf_counter() - t0, 1e-9)
                for s, values in window.read(reduce=D.all_reduce_mean):  # raises on a non-finite loss
                    history.append({**values, "step": s})
                    if metrics is not None and ((s + 1) % config.log_every == 0 or s + 1 == config.total_steps):
                        metrics.write(json.dumps({**history[-1], "images_per_s": rate}) + "\n")
                        metrics.flush()
                        log.info("step %d/%d loss %.4f (%.1f img/s)", s + 1, config.total_steps, values["total"], rate)
                last = f"loss {history[-1]['total']:.4f}"
            if D.is_main_process():
                report(progress, "pretrain", done, config.total_steps, last)
            if saved:
                last_path = _save(run, ckpt_path, done)
                if config.keep_every and done % config.keep_every == 0 and D.is_main_process():
                    _keep_copy(ckpt_path, done)  # last.pt keeps moving
    finally:
        if metrics is not None:
            metrics.close()
            from MedDINOv3Core.curves import write_pretrain_curve

            write_pretrain_curve(out_dir / "metrics.jsonl")  # metrics.png beside it
    return PretrainResult(
        step=start + len(history), history=history, checkpoint=last_path or (ckpt_path if ckpt_path.is_file() else None)
    )


def training_flops_per_image(
    config: PretrainConfig, backbone_config: ViTConfig, global_size: int, local_size: int
) -> float:
    """Analytic matmul FLOPs (2 per multiply-add) of one image's training step in the backbones.

    Student forward + backward (3x forward) over all its crops plus the teacher's forward over the global crops;
    heads, norms and the Gram teacher are not counted.
    """

    def vit_forward(size: int) -> float:
        return backbone_config.forward_flops(size, size)

    student = config.n_global * vit_forward(global_size) + config.n_local * vit_forward(local_size)
    return 3 * student + config.n_global * vit_forward(global_size)

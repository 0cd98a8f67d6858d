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

``export_backbone`` (in train.checkpoint, re-exported here) turns a checkpoint's teacher backbone into a model card
for finetuning and exploration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.config_utils import coerce_numbers, config_from_dict, config_to_dict, read_recipe
from MedDINOv3Core.data.crops import CropConfig
from MedDINOv3Core.data.datasets import (
    PretrainDataset,
    SliceCache,
    StepBatchSampler,
    build_slice_cache,
    collate_views,
)
from MedDINOv3Core.device import autocast, autocast_dtype, select_device
from MedDINOv3Core.losses import DINOLoss, GramLoss, KoLeoLoss, iBOTPatchLoss, masked_patch_weights
from MedDINOv3Core.models.heads import DINOHead, HeadConfig
from MedDINOv3Core.models.vit import VisionTransformer, ViTConfig, vit_config
from MedDINOv3Core.progress import check_cancel, report
from MedDINOv3Core.train import distributed as D
from MedDINOv3Core.train import schedules
from MedDINOv3Core.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    export_backbone,
    git_commit,
    load_backbone_source,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

log = logging.getLogger(__name__)
__all__ = ["PretrainConfig", "PretrainResult", "SSLModel", "export_backbone", "load_pretrain_config", "run_pretraining"]

_CROP_FIELDS = {f.name for f in dataclasses.fields(CropConfig)}


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run (recipes in training/configs/*.yaml; key=value overrides).

    Crop settings (global_sizes, local_sizes, n_global, n_local, global_scale, local_scale, flip_p, brightness,
    contrast, blur_p, blur_sigma, gram_scale, hu_range, norm_mean, norm_std, in_chans) mirror CropConfig.
    ``batch_size`` is the GLOBAL batch (split evenly over processes). Step counts are iterations.
    ``checkpoints/last.pt`` is rewritten every ``checkpoint_every`` steps; ``keep_every`` > 0 also keeps a
    permanent ``checkpoints/step_NNNNNNN.pt`` at those steps (a multiple of checkpoint_every).
    """

    # data
    data: tuple[str, ...] = ()
    cache_dir: str = ""
    slice_size: int = 256
    num_workers: int = 0
    # model
    backbone: str = "vit_base"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    head_out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    # crops and masks: the multi-crop defaults are CropConfig's (one source of truth; flat here for key=value overrides)
    global_sizes: tuple[int, ...] = CropConfig.global_sizes
    local_sizes: tuple[int, ...] = CropConfig.local_sizes
    n_global: int = CropConfig.n_global
    n_local: int = CropConfig.n_local
    global_scale: tuple[float, float] = CropConfig.global_scale
    local_scale: tuple[float, float] = CropConfig.local_scale
    flip_p: float = CropConfig.flip_p
    brightness: float = CropConfig.brightness
    contrast: float = CropConfig.contrast
    blur_p: float = CropConfig.blur_p
    blur_sigma: tuple[float, float] = CropConfig.blur_sigma
    gram_scale: int = CropConfig.gram_scale
    hu_range: tuple[float, float] = CropConfig.hu_range
    norm_mean: float = CropConfig.norm_mean
    norm_std: float = CropConfig.norm_std
    in_chans: int = CropConfig.in_chans
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    # losses
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    gram_weight: float = 0.0
    gram_teacher: str = ""
    centering: str = "sinkhorn_knopp"
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.07
    teacher_temp_warmup_steps: int = 30000
    koleo_gather: bool = True
    # optimisation
    total_steps: int = 100000
    batch_size: int = 512
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup_steps: int = 10000
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    freeze_last_layer_steps: int = 1250
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    # run
    output_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    fsdp: bool = False
    checkpoint_every: int = 1000
    keep_every: int = 0
    log_every: int = 10
    resume: bool = True

    def __post_init__(self) -> None:
        for name in ("total_steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {self.mask_probability}")
        self.crop_config()  # validates the crop settings

    def crop_config(self) -> CropConfig:
        return CropConfig(**{k: getattr(self, k) for k in _CROP_FIELDS})

    def head_config(self) -> HeadConfig:
        return HeadConfig(self.head_out_dim, self.head_hidden_dim, self.head_bottleneck_dim, self.head_layers)

    def replace(self, **changes: Any) -> PretrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        return config_from_dict(cls, data, where="pretraining config")


# ------------------------------------------------------------------------------------------------ models


class SSLModel(nn.Module):
    """Backbone + DINO head (class tokens) + iBOT head (masked patch tokens): the student, and its EMA teacher.

    ``forward`` runs the student on one step's views in a single call (so DDP sees one forward).
    """

    def __init__(self, backbone_config: ViTConfig, head_config: HeadConfig) -> None:
        super().__init__()
        self.backbone = VisionTransformer(backbone_config)
        self.dino_head = DINOHead(backbone_config.embed_dim, head_config)
        self.ibot_head = DINOHead(backbone_config.embed_dim, head_config)

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        teacher: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Student (or, with ``teacher=True``, teacher) outputs. Everything goes through this one call, so DDP and
        FSDP see a single forward.

        Args:
            global_crops: (n_global * B, C, G, G). local_crops: (n_local * B, C, L, L) or None.
            masks: (n_global * B, N) boolean iBOT masks of the global crops (the student replaces those patches by
                the mask token; the teacher sees them and only scores them).

        Returns a dict. Student: cls_global (n_global*B, D), patch_global (n_global*B, N, D), dino_logits
        ((n_global + n_local) * B, K) with global views first, ibot_logits (P, K) for the P masked patches.
        Teacher: dino_logits (n_global*B, K) and ibot_logits (P, K).
        """
        if masks is None:
            masks = torch.zeros(global_crops.shape[0], 0, dtype=torch.bool, device=global_crops.device)
        if teacher:
            g = self.backbone.forward_features(global_crops)
            patches = g.patch_tokens[masks] if masks.numel() else g.patch_tokens[:, :0].flatten(0, 1)
            return {"dino_logits": self.dino_head(g.cls_token), "ibot_logits": self.ibot_head(patches)}
        g = self.backbone.forward_features(global_crops, masks=masks if masks.numel() else None)
        cls = [g.cls_token]
        if local_crops is not None and local_crops.shape[0]:
            cls.append(self.backbone.forward_features(local_crops).cls_token)
        patches = g.patch_tokens[masks] if masks.numel() else g.patch_tokens[:, :0].flatten(0, 1)
        return {
            "cls_global": g.cls_token,
            "patch_global": g.patch_tokens,
            "dino_logits": self.dino_head(torch.cat(cls)),
            "ibot_logits": self.ibot_head(patches),
        }


def param_groups(model: SSLModel, layer_decay: float, patch_embed_lr_mult: float) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay, the patch-embed multiplier and no decay on 1-D params.

    Layer ids: patch embed and tokens 0, block i -> i + 1, final norm and heads depth + 1; lr multiplier
    layer_decay ** (depth + 1 - id). Biases, norms, LayerScale gammas and tokens get no weight decay. The head
    prototypes form their own groups (``last_layer``) so they can be frozen.
    """
    depth = model.backbone.config.depth
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith("backbone.") and not name.startswith("backbone.norm."):
            layer = 0
        else:
            layer = depth + 1
        lr_mult = layer_decay ** (depth + 1 - layer)
        if name.startswith("backbone.patch_embed."):
            lr_mult *= patch_embed_lr_mult
        no_decay = p.ndim <= 1 or name.endswith("_token") or name.endswith("storage_tokens")
        wd_mult = 0.0 if no_decay else 1.0
        last = name.endswith("prototypes")
        key = (lr_mult, wd_mult, last)
        if key not in groups:
            groups[key] = {"params": [], "lr_mult": lr_mult, "wd_mult": wd_mult, "last_layer": last}
        groups[key]["params"].append(p)
    return list(groups.values())


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter.

    Under FSDP2 both are sharded identically; a forward-only teacher may still hold unsharded root parameters,
    so it is resharded first and the update runs on the local shards.
    """
    for m in teacher.modules():
        reshard = getattr(m, "reshard", None)
        if callable(reshard) and type(m).__name__.startswith("FSDP"):
            reshard()
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


class _Run:
    """Everything one run holds (kept together so the loop below reads top to bottom)."""

    def __init__(self, config: PretrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.rank, self.world = D.rank(), D.world_size()
        init_state, init_cfg, init_ckpt = (None, None, None)
        if config.init_from:
            init_state, init_cfg, init_ckpt = load_backbone_source(config.init_from)
        bb = init_cfg or vit_config(config.backbone)
        if config.backbone_overrides:
            bb = bb.replace(**config.backbone_overrides)
        self.backbone_config = bb
        self.student = SSLModel(bb, config.head_config())
        if init_ckpt is not None:  # stage 2 -> 3: student, teacher and heads all continue
            self.student.load_state_dict(init_ckpt["student"])
        elif init_state is not None:
            self.student.backbone.load_state_dict(init_state)
        self.teacher = SSLModel(bb, config.head_config())
        self.teacher.load_state_dict(init_ckpt["teacher"] if init_ckpt is not None else self.student.state_dict())
        self.student.to(device).train()
        self.teacher.to(device).eval().requires_grad_(False)

        self.gram_teacher: VisionTransformer | None = None
        if config.gram_weight > 0:
            gstate, gcfg, _ = load_backbone_source(config.gram_teacher or config.init_from)
            self.gram_teacher = VisionTransformer(gcfg or bb)
            self.gram_teacher.load_state_dict(gstate)
            self.gram_teacher.to(device).eval().requires_grad_(False)

        k = config.head_out_dim
        self.dino_loss = DINOLoss(k, config.student_temp, config.centering).to(device)
        self.ibot_loss = iBOTPatchLoss(k, config.student_temp, config.centering).to(device)
        self.koleo_loss = KoLeoLoss(gather=config.koleo_gather)
        self.gram_loss = GramLoss()

        self.model: nn.Module = self.student
        if config.fsdp:
            self._shard()
        elif D.is_enabled():
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            param_groups(self.student, config.layer_decay, config.patch_embed_lr_mult),
            lr=config.lr,
            betas=tuple(config.betas),
            fused=fused,
        )
        amp_dtype = autocast_dtype(device) if config.amp else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def _shard(self) -> None:
        """FSDP2: shard every block and the root of student and teacher identically (EMA then works per shard)."""
        from torch.distributed.fsdp import fully_shard

        if not D.is_enabled():
            raise ValueError("fsdp=true needs several processes: launch with torchrun --nproc-per-node N")
        for m in (self.student, self.teacher):
            for block in m.backbone.blocks:
                fully_shard(block)
            fully_shard(m)
        self.model = self.student

    # -- state for checkpoints (full, unsharded tensors; FSDP gathers them)
    def model_states(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        if self.config.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (
                get_model_state_dict(self.student, options=opts),
                get_model_state_dict(self.teacher, options=opts),
                get_optimizer_state_dict(self.student, self.optimizer, options=opts),
            )
        return self.student.state_dict(), self.teacher.state_dict(), self.optimizer.state_dict()

    def load_states(self, ckpt: dict[str, Any]) -> None:
        if self.config.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.student, ckpt["student"], options=opts)
            set_model_state_dict(self.teacher, ckpt["teacher"], options=opts)
            set_optimizer_state_dict(self.student, self.optimizer, ckpt["optimizer"], options=opts)
        else:
            self.student.load_state_dict(ckpt["student"])
            self.teacher.load_state_dict(ckpt["teacher"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.dino_loss.load_state_dict(ckpt["loss_state"]["dino"])
        self.ibot_loss.load_state_dict(ckpt["loss_state"]["ibot"])
        self.scaler.load_state_dict(ckpt["scaler"])


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


def train_step(run: _Run, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    """One optimisation step on this process's share of the global batch; returns the losses (this process)."""
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
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"pretraining loss is {loss.item()} at step {step}; lower lr= or set amp=false, then resume"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    if cfg.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(run.student.parameters(), cfg.clip_grad)
    if schedules.last_layer_frozen(step, cfg.freeze_last_layer_steps):
        for g in run.optimizer.param_groups:
            if g["last_layer"]:
                for p in g["params"]:
                    p.grad = None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    ema_update(run.teacher, run.student, momentum)
    out = {k: float(v.detach()) for k, v in losses.items()}
    out.update(total=float(loss.detach()), lr=lr, wd=wd, teacher_temp=t_temp, momentum=momentum)
    return out


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


def _prepare_slice_cache(config: PretrainConfig, cache_dir: Path, progress, cancel, poll_s: float = 2.0) -> SliceCache:
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


def run_pretraining(config: PretrainConfig, progress=None, cancel=None) -> PretrainResult:
    """Pretrain (or resume pretraining) as configured; see the module docstring for the steps.

    Works in one process and, unchanged, under torchrun (the process group is set up here from its environment).
    Only rank 0 reports progress, logs metrics (``metrics.jsonl``) and writes checkpoints
    (``checkpoints/last.pt``, atomic) and the resolved config (``config.json``) in ``output_dir``.
    """
    if not config.data:
        raise ValueError("no pretraining data: set data=[folder, ...] (CT volumes: NIfTI, NRRD, MHA, DICOM series)")
    if config.gram_weight > 0 and not (config.gram_teacher or config.init_from):
        raise ValueError("gram_weight > 0 needs gram_teacher= (an earlier pretraining checkpoint or model card)")
    device = D.local_device(select_device(config.device))
    out_dir = Path(config.output_dir).expanduser()
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    if D.rank_from_env() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / ".config.json.tmp"
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / "config.json")

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
    start = 0
    if config.resume and ckpt_path.is_file():
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
        len(dataset), config.batch_size, crops, config.seed, config.total_steps, start, rank, world
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_views,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # A private generator: creating the iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(config.seed),
    )

    # 3. the loop.
    history: list[dict[str, float]] = []
    metrics = (out_dir / "metrics.jsonl").open("a", encoding="utf-8") if D.is_main_process() else None
    t0, last_path = time.perf_counter(), None
    try:
        for step, batch in enumerate(loader, start=start):
            check_cancel(cancel)
            stats = train_step(run, batch, step)
            mean = torch.tensor([stats[k] for k in sorted(stats)], dtype=torch.float64, device=device)
            D.all_reduce_mean(mean)
            stats = dict(zip(sorted(stats), mean.tolist(), strict=True))
            stats["step"] = step
            history.append(stats)
            done = step + 1
            if metrics is not None and (done % config.log_every == 0 or done == config.total_steps):
                rate = (done - start) * config.batch_size / max(time.perf_counter() - t0, 1e-9)
                metrics.write(json.dumps({**stats, "images_per_s": rate}) + "\n")
                metrics.flush()
                log.info("step %d/%d loss %.4f (%.1f img/s)", done, config.total_steps, stats["total"], rate)
            if D.is_main_process():
                report(progress, "pretrain", done, config.total_steps, f"loss {stats['total']:.4f}")
            if done % config.checkpoint_every == 0 or done == config.total_steps:
                last_path = _save(run, ckpt_path, done)
                if config.keep_every and done % config.keep_every == 0 and D.is_main_process():
                    # A permanent copy (e.g. a Gram teacher for stage 2); last.pt keeps moving.
                    kept = ckpt_path.with_name(f"step_{done:07d}.pt")
                    tmp = kept.with_name(f".{kept.name}.tmp")
                    shutil.copyfile(ckpt_path, tmp)
                    os.replace(tmp, kept)
    finally:
        if metrics is not None:
            metrics.close()
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


def load_pretrain_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """A PretrainConfig from a YAML recipe (optional ``base: other.yaml``, relative to the recipe) plus overrides.

    Unknown keys raise, naming the valid ones.
    """
    data = read_recipe(path, "pretraining recipe") if path else {}
    data.update(overrides or {})
    if isinstance(data.get("data"), str):
        data["data"] = [data["data"]]
    return PretrainConfig.from_dict(coerce_numbers(PretrainConfig, data))

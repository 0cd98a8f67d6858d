"""The models of a pretraining run: SSLModel (backbone + DINO and iBOT heads), its parameter groups, the EMA
teacher update, and ``_Run``, which builds student, teacher, Gram teacher, losses and optimizer from a config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from MedDINOv3Core.device import autocast_dtype, compile_blocks
from MedDINOv3Core.losses import DINOLoss, GramLoss, KoLeoLoss, iBOTPatchLoss
from MedDINOv3Core.models.dino_head import DINOHead, HeadConfig
from MedDINOv3Core.models.vit import VisionTransformer, ViTConfig, vit_config
from MedDINOv3Core.train import distributed as D
from MedDINOv3Core.train.checkpoint import load_backbone_source
from MedDINOv3Core.train.pretrain_config import PretrainConfig

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
        if config.compile:  # the blocks of student and teacher; state-dict keys unchanged
            compile_blocks(self.student)
            compile_blocks(self.teacher)
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

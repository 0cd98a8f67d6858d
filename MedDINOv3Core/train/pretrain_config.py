"""The pretraining settings: PretrainConfig and its YAML recipes (training/configs/stage*.yaml, tiny_cpu.yaml)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from MedDINOv3Core.config_utils import coerce_numbers, config_from_dict, config_to_dict, read_recipe, resolve_aliases
from MedDINOv3Core.data.crops import CropConfig
from MedDINOv3Core.models.dino_head import HeadConfig

_CROP_FIELDS = {f.name for f in dataclasses.fields(CropConfig)}


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run (recipes in training/configs/*.yaml; key=value overrides).

    Crop settings (global_sizes, local_sizes, n_global, n_local, global_scale, local_scale, flip_p, brightness,
    contrast, blur_p, blur_sigma, gram_scale, hu_range, norm_mean, norm_std, in_chans) mirror CropConfig.
    ``batch_size`` is the GLOBAL batch (split evenly over processes). Step counts are iterations.
    ``checkpoints/last.pt`` is rewritten every ``checkpoint_every`` steps; ``keep_every`` > 0 also keeps a
    permanent ``checkpoints/step_NNNNNNN.pt`` at those steps (a multiple of checkpoint_every).
    ``grad_clip`` is the gradient-norm clip (0: none). ``compile`` runs the blocks of student and teacher through
    ``torch.compile`` (GPU; the first steps compile; checkpoints unchanged). The old spellings of options
    (config_utils.OPTION_ALIASES: ``output``, ``init``, ``clip_grad``) are accepted by from_dict and
    load_pretrain_config, and ``clip_grad`` remains readable as a property.
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
    grad_clip: float = 3.0
    freeze_last_layer_steps: int = 1250
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    # run
    output_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    compile: bool = False
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

    @property
    def clip_grad(self) -> float:
        """The old spelling of ``grad_clip`` (read-only)."""
        return self.grad_clip

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
        return config_from_dict(cls, resolve_aliases(data, where="pretraining config"), where="pretraining config")


def load_pretrain_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """A PretrainConfig from a YAML recipe (optional ``base: other.yaml``, relative to the recipe) plus overrides.

    Unknown keys raise, naming the valid ones. Old spellings of options (``output``, ``init``, ``clip_grad``) are
    accepted in the recipe and in the overrides.
    """
    data = resolve_aliases(read_recipe(path, "pretraining recipe") if path else {}, where="pretraining recipe")
    data.update(resolve_aliases(overrides or {}, where="pretraining overrides"))
    if isinstance(data.get("data"), str):
        data["data"] = [data["data"]]
    return PretrainConfig.from_dict(coerce_numbers(PretrainConfig, data))

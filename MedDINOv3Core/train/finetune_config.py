"""The finetuning settings: FinetuneConfig and its YAML recipes (training/configs/finetune*.yaml)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from MedDINOv3Core.config_utils import coerce_numbers, config_from_dict, config_to_dict, read_recipe, resolve_aliases
from MedDINOv3Core.data.augment import AugmentConfig

MODES = ("full", "decoder", "fewshot")
INTENSITY = ("auto", "init", "dataset", "demo", "zscore", "none")
FROZEN_MODES = ("decoder", "fewshot")  # the backbone keeps the init weights


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a finetuning run needs (YAML recipes in training/configs/finetune*.yaml).

    Args:
        mode: "full", "decoder" or "fewshot".
        data: nnU-Net v2 raw dataset folder (unused when a dataset is passed to run_finetuning).
        output_dir: output directory (old spelling: ``output``).
        init_from: where the backbone comes from (old spelling: ``init``): "random", a model-card directory, a
            registry name, a Hub repo or an upstream checkpoint file (MedDINOv3Core.hub.resolve_model). A
            segmentation card whose head matches also provides the head.
        backbone: ViT preset for init_from="random" ("vit_tiny", "vit_small", "vit_base", "vit_large").
        backbone_patch_size: patch size override for init_from="random" (0 keeps the preset's 16).
        intermediate_layers: aggregated blocks (empty: the backbone's default four).
        val_cases: names of the training cases held out for validation; empty: ``val_fraction`` of them.
        val_fraction: fraction of cases held out (seeded choice) when val_cases is empty, at least one case and
            at most all but one from 3 cases upwards; with 1 or 2 cases none is held out and the DSC is measured
            on the training cases instead (a warning, logged and in history.json); 0 disables validation (best/ is
            then the last epoch).
        epochs, iterations_per_epoch, batch_size: the schedule (paper: 1000 x 250).
        crop_size: (h, w) training patch on the model grid (also the inference tile size for full/decoder).
        spacing: model in-plane spacing (x, y) mm; empty: the init card's spacing when the preprocessing is
            inherited (see intensity), else the median of the training cases.
        intensity: "auto" (the default: "init" in the frozen-backbone modes decoder and fewshot when init_from is
            a model card with preprocessing, which the frozen backbone was trained with; "dataset" otherwise),
            "init" (the init card's preprocessing: intensity, and spacing unless ``spacing`` is set), "dataset"
            (nnU-Net CT statistics of the training foreground, stored in the card; z-score per volume for non-CT),
            "demo" (the MedDINOv3 demo constants), "zscore", "none". The card's provenance says which was used
            (``preprocessing_source``).
        lr_decoder, lr_encoder, weight_decay, betas, drop_path, grad_clip: the optimiser recipe.
        warmup_fraction: linear learning-rate warm-up from 0 over this fraction of all iterations, then the linear
            decay to 0 (the paper: no warm-up).
        dice_weight, ce_weight: loss weights.
        oversample_foreground: foreground-centred fraction of every batch.
        augment: nnU-Net augmentation switched on; ``augmentation`` overrides its probabilities/ranges.
        amp: mixed precision on GPU/MPS (always fp32 on CPU).
        compile: ``torch.compile`` the backbone's blocks (GPU; the first steps compile; checkpoints unchanged).
        fewshot_hidden, fewshot_image_sigmas, fewshot_pixels, fewshot_position: few-shot head width, image
            channel sigmas, pixels sampled per step, position channels (see FewShotHeadConfig).
        fewshot_pca_dim: the cached features are trained on in their first principal components (0: all).
        features: fewshot only: a feature cache folder (``python -m training explore --cache-dir``) of a training
            case's volume, built from the init model's backbone with the run's preprocessing: that case's labelled
            slices take their tokens from it (no backbone pass). A cache of another model, volume or preprocessing
            is an error (when no training case matches it).
        val_batch_size: slices per validation forward pass.
        seed: everything random derives from it.
        device: "auto", "cpu", "cuda[:N]", "mps".
        cache_dir: memory-map preprocessed slices from this folder (datasets larger than memory).
        name, description, license: model card metadata.
        resume: continue from ``output_dir/checkpoint.pt``.

    The old spellings (config_utils.OPTION_ALIASES) are accepted by from_dict and load_finetune_config, and
    ``output`` and ``init`` remain readable as properties.
    """

    mode: str = "full"
    data: str = ""
    output_dir: str = ""
    init_from: str = "random"
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
    intensity: str = "auto"
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
    compile: bool = False
    fewshot_hidden: int = 64
    fewshot_image_sigmas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    fewshot_pixels: int = 32768
    fewshot_position: bool = True
    fewshot_pca_dim: int = 256
    features: str = ""
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
        if self.features and self.mode != "fewshot":
            raise ValueError(
                f"features (a feature cache) serve the few-shot mode only, not mode {self.mode!r}; add --mode fewshot "
                "(or --config finetune_fewshot) or drop --features"
            )

    @property
    def output(self) -> str:
        """The old spelling of ``output_dir`` (read-only)."""
        return self.output_dir

    @property
    def init(self) -> str:
        """The old spelling of ``init_from`` (read-only)."""
        return self.init_from

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iterations_per_epoch

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return config_from_dict(cls, resolve_aliases(data, where="finetune config"), where="finetune config")


def load_finetune_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """A FinetuneConfig from a YAML recipe (optional ``base: other.yaml``, relative to it) plus overrides.

    Unknown keys raise, naming the valid ones. Old spellings of options (``output``, ``init``, ``clip_grad``) are
    accepted in the recipe and in the overrides.
    """
    data = resolve_aliases(read_recipe(path, "finetune recipe") if path else {}, where="finetune recipe")
    data.update(resolve_aliases(overrides or {}, where="finetune overrides"))
    return FinetuneConfig.from_dict(coerce_numbers(FinetuneConfig, data))

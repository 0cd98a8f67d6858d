"""Training checkpoints: atomic save, weights-only load, and RNG state capture for exact resume.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers (so it loads with
``weights_only=True``): model, teacher and head state dicts, optimizer state, the step, RNG states, the resolved
config and the git commit. It is written to a temporary name in the same directory and renamed into place, so an
interrupted save never leaves a truncated checkpoint behind.

Also here: reading a backbone from any source a run starts from (``load_backbone_source``: model card, pretraining
checkpoint, upstream DINOv3/MedDINOv3/timm/transformers checkpoint) and ``export_backbone``, which writes a
checkpoint's teacher backbone as a model card.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MedDINOv3Core.atomic import atomic_path
from MedDINOv3Core.models.vit import VisionTransformer, ViTConfig
from MedDINOv3Core.safe_load import load_weights_only

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "meddinov3-pretrain"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + os.replace); returns the path."""
    target = Path(path).expanduser()
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    log.info("saved checkpoint %s", target)
    return target


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "pretraining checkpoint"
) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint (never unpickles arbitrary objects); ``what`` names it in
    errors."""
    return load_weights_only(path, map_location, what)


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, in a weights-only-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": [int(x) for x in random.getstate()[1]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by rng_state."""
    torch.set_rng_state(state["torch"].cpu())
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_commit(directory: str | os.PathLike | None = None) -> str:
    """The current git commit of the code (``directory`` defaults to this package), or "" when unknown."""
    where = Path(directory) if directory else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_backbone_source(path: str) -> tuple[dict[str, torch.Tensor], ViTConfig | None, dict[str, Any] | None]:
    """Backbone weights from a model card directory, a pretraining checkpoint (its teacher) or an upstream checkpoint.

    Returns (backbone state dict, its ViTConfig when known, the whole pretraining checkpoint when it is one).
    """
    from MedDINOv3Core.card import load_model_card
    from MedDINOv3Core.convert import convert_checkpoint, read_checkpoint
    from MedDINOv3Core.weights import load_card_state_dict

    p = Path(path).expanduser()
    if p.is_dir():
        card = load_model_card(p)
        return load_card_state_dict(p), card.backbone, None
    if p.suffix == ".pt":
        try:
            ckpt = load_checkpoint(p)
        except ValueError:
            ckpt = None
        if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
            cfg = ViTConfig.from_dict(ckpt["backbone_config"])
            return strip_prefix(ckpt["teacher"], "backbone."), cfg, ckpt
    state, cfg, fmt = convert_checkpoint(read_checkpoint(p))
    log.info("initialising from a %s checkpoint %s", fmt, p)
    return state, cfg, None


def export_backbone(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    which: str = "teacher",
    name: str = "",
    description: str = "",
    license: str = "",
) -> Path:
    """Write the teacher (or student) backbone of a pretraining checkpoint as a model card directory.

    The card's preprocessing is the pretraining intensity path (clip to the HU range, z-score with the configured
    statistics), so finetuning and exploration feed the backbone what it was trained on. Returns the directory.
    """
    from MedDINOv3Core.card import ModelCard
    from MedDINOv3Core.weights import save_model_card

    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint} is not a MedDINOv3 pretraining checkpoint (no '{CHECKPOINT_FORMAT}' format)")
    backbone_config = ViTConfig.from_dict(ckpt["backbone_config"])
    state = strip_prefix(ckpt[which], "backbone.")
    VisionTransformer(backbone_config).load_state_dict(state)  # fails loudly on a mismatch
    step = int(ckpt["step"])
    card = ModelCard(
        task="backbone",
        backbone=backbone_config,
        name=name or f"MedDINOv3 pretrained backbone (step {step})",
        description=description or f"{which} backbone after {step} self-supervised pretraining iterations",
        license=license,
        provenance={
            "source": "MedDINOv3Core.train.pretrain",
            "checkpoint": str(Path(checkpoint).expanduser().resolve()),
            "weights": which,
            "step": step,
            "git_commit": ckpt.get("git_commit", ""),
        },
        preprocessing=dict(ckpt["preprocessing"]),
    )
    extra = {"pretrain_config.json": json.dumps(ckpt["config"], indent=2) + "\n"}
    return save_model_card(output_dir, card, state, extra_files=extra)

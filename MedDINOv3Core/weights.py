"""Model cards with their weights: saving, loading, and building the network a card describes.

A model card is a directory holding ``config.json`` (architecture, task, labels, preprocessing, inference settings,
licence, provenance; read and written by MedDINOv3Core.card, without torch) and ``model.safetensors`` (the weights,
in this project's key names, which are the DINOv3 official names for the backbone). Save and load are exact round
trips; saving is atomic (a temporary directory renamed into place), so an interrupted save never leaves a
half-written card. ``build_model`` / ``load_model`` are the one place that turns a card into a network.

The card format (ModelCard, config.json) lives in MedDINOv3Core.card and upstream checkpoint conversion in
MedDINOv3Core.convert; import those names from there.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from MedDINOv3Core.atomic import atomic_directory
from MedDINOv3Core.card import CARD_FORMAT, CONFIG_NAME, WEIGHTS_NAME, ModelCard, load_model_card, write_card_config
from MedDINOv3Core.convert import _short, load_state_dict_strict
from MedDINOv3Core.models.vit import VisionTransformer, uninitialised

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- card I/O


def save_model_card(
    directory: str | os.PathLike,
    card: ModelCard,
    state_dict: Mapping[str, torch.Tensor] | torch.nn.Module,
    extra_files: Mapping[str, str | bytes] | None = None,
    weights_from: str | os.PathLike | None = None,
) -> Path:
    """Write ``card`` and its weights to ``directory`` atomically; returns the directory.

    Args:
        directory: the card directory (created; an existing card there is replaced only once the new one is
            complete).
        card: the configuration.
        state_dict: the weights (or a module whose state_dict is taken), saved as float tensors in safetensors.
        extra_files: optional additional text/bytes files (README.md, resolved training config, ...).
        weights_from: a weights file known to hold exactly ``state_dict`` (e.g. the card just saved from the same
            model): hard-linked (else copied) instead of serialised again. Card files are never modified in place
            (a card is replaced as a whole directory), so the link stays valid.
    """
    from safetensors.torch import save_file

    target = Path(directory).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state dict entries must be tensors; not tensors: {_short(sorted(bad))}")
    with atomic_directory(target) as tmp:
        write_card_config(tmp, card)
        if weights_from is not None:
            _link_or_copy(Path(weights_from), tmp / WEIGHTS_NAME)
        else:
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "card_format": CARD_FORMAT})
        for name, content in (extra_files or {}).items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content, encoding="utf-8")
    log.debug("saved model card %s", target)
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def load_card_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a card directory (safetensors; never unpickled)."""
    from safetensors.torch import load_file

    path = Path(directory).expanduser() / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"model card {Path(directory)} has no {WEIGHTS_NAME}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; re-download or re-export the model")
    try:
        state = load_file(str(path))
    except OSError:
        raise
    except Exception as exc:  # safetensors' SafetensorError derives from Exception only
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{path} is not a complete safetensors file ({reason}); re-download or re-export the model"
        ) from None
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path} holds non-finite weights in {name}; re-download or re-export the model")
    return state


def build_model(card: ModelCard, initialise: bool = True) -> torch.nn.Module:
    """An initialised (untrained) network for a card: the one place where a card becomes a network.

    ``initialise=False`` builds it on the meta device (``models.vit.uninitialised``): for a caller that loads
    every weight next, as ``load_model`` does.

    ``task="backbone"``: the VisionTransformer. ``task="segmentation"``: ``card.head["type"]`` picks the head: absent
    or "primus" -> Segmenter (ViT + multi-scale Primus decoder), "fewshot" -> FewShotSegmenter (frozen ViT + light
    head). Every segmentation network maps (B, 1, H, W) -> (B, n_classes, H, W) and has ``features(x)`` and
    ``.backbone``. The segmentation code is imported only for segmentation cards.
    """
    if not initialise:
        return uninitialised(build_model, card)
    if card.task == "backbone":
        return VisionTransformer(card.backbone)
    if card.task != "segmentation":
        raise ValueError(
            f"model card {card.name!r}: unknown task {card.task!r}; known tasks are backbone, segmentation"
        )
    from MedDINOv3Core.models.fewshot_head import HEAD_TYPE as FEWSHOT_HEAD
    from MedDINOv3Core.models.fewshot_head import FewShotSegmenter
    from MedDINOv3Core.models.segmenter import PRIMUS_HEAD, Segmenter
    from MedDINOv3Core.segmentation_cards import fewshot_config_from_card, segmenter_config_from_card

    head_type = (card.head or {}).get("type", PRIMUS_HEAD)
    if head_type == PRIMUS_HEAD:
        return Segmenter(card.backbone, segmenter_config_from_card(card))
    if head_type == FEWSHOT_HEAD:
        return FewShotSegmenter(card.backbone, fewshot_config_from_card(card))
    raise ValueError(
        f"model card {card.name!r}: unknown segmentation head type {head_type!r}; known types are "
        f"{sorted([PRIMUS_HEAD, FEWSHOT_HEAD])}"
    )


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Build the card's network, load its weights strictly, move it to ``device`` in eval mode."""
    card = load_model_card(directory)
    state = load_card_state_dict(directory)
    try:
        model = build_model(card, initialise=False)  # every weight is loaded next
    except (TypeError, KeyError, ValueError) as exc:
        config = Path(directory).expanduser() / CONFIG_NAME
        text = str(exc)
        raise ValueError(text if text.startswith(str(config)) else f"{config}: {text}") from None
    load_state_dict_strict(model, state, source=str(directory), assign=True)  # the file's tensors, not a copy
    return model.to(device).eval(), card


# ----------------------------------------------------------------------------------------------- training domain

PHANTOM_DATASET_NAME = "MedDINOv3 synthetic CT phantom"  # the dataset.json name `python -m training phantom` writes
_PHANTOM_FILE_PREFIXES = ("phantom_", "meddinov3phantom")  # phantom_NNN_0000.nii.gz; the Slicer sample's file
_domain_warned: set[tuple[str, str]] = set()


def trained_on_phantoms(card: ModelCard) -> bool:
    """Whether the card says its weights were trained on this project's synthetic CT phantoms (its provenance's
    dataset, else its description, mentions phantoms), as the embedded demo model meddinov3-phantom-tiny is."""
    dataset = str(card.provenance.get("dataset", "")) if isinstance(card.provenance, dict) else ""
    return "phantom" in (dataset or card.description).lower()


def is_project_phantom(source: str | os.PathLike) -> bool:
    """Whether the input file or folder is recognisably a phantom made by this project: a phantom file name
    (phantom_NNN_0000.nii.gz, the Slicer sample MedDINOv3Phantom-*.nrrd), or a file of the nnU-Net dataset that
    `python -m training phantom` writes (its dataset.json named PHANTOM_DATASET_NAME, one or two folders up)."""
    import json

    path = Path(source).expanduser()
    if path.name.lower().startswith(_PHANTOM_FILE_PREFIXES):
        return True
    for folder in (path.parent, path.parent.parent):
        try:
            data = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return isinstance(data, dict) and data.get("name") == PHANTOM_DATASET_NAME
    return False


def domain_warning(card: ModelCard, source: str | os.PathLike) -> str | None:
    """One line warning that a phantom-trained card is applied to an input that is not recognisably a project
    phantom (``is_project_phantom``), logged once per card and input in a process; returns it (None: no warning)."""
    if not trained_on_phantoms(card) or is_project_phantom(source):
        return None
    message = (
        f"model {card.name or '(unnamed)'} was trained on synthetic CT phantoms only; {Path(source).name} is not a "
        "phantom made by this project, so do not trust its results there (fine-tune a model on your own data)"
    )
    key = (card.name, os.fspath(source))
    if key not in _domain_warned:
        _domain_warned.add(key)
        log.warning(message)
    return message

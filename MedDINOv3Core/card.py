"""The model card as plain data (no torch): ModelCard, its labels, preprocessing and inference settings.

A model card is a directory holding ``config.json`` (architecture, task, labels, preprocessing, inference settings,
licence, provenance) and ``model.safetensors`` (the weights). This module owns the config.json side: the frozen
dataclasses it is made of and reading / writing it. The Slicer module, the registry and the command line read cards
through it without importing torch; the weights and the networks built from a card are handled by
``MedDINOv3Core.weights`` (save_model_card, load_model).

Contents:

- ``ModelCard``: everything in config.json; ``card.head`` is the config of the network that reads it (for example
  ``MedDINOv3Core.models.segmenter.SegmenterConfig``, converted by ``MedDINOv3Core.segmentation_cards``),
  ``card.preprocessing`` is a ``PreprocessConfig`` and ``card.inference`` an ``InferenceConfig``, both stored as dicts.
- ``Label``, ``parse_labels``, ``card_labels``, ``DEFAULT_COLORS``: the foreground classes of a segmentation card.
- ``PreprocessConfig``: intensity scheme + statistics and target in-plane spacing, applied by
  ``MedDINOv3Core.data.preprocess``.
- ``InferenceConfig``: tiling, test-time augmentation and batching of ``MedDINOv3Core.inference.predict_volume``.
- ``is_model_card``, ``load_model_card``, ``card_to_json``, ``write_card_config``: config.json I/O.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MedDINOv3Core.architecture import ViTConfig
from MedDINOv3Core.config_utils import config_from_dict, config_to_dict

CARD_FORMAT = "meddinov3-model-card"
CARD_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TASKS = ("backbone", "segmentation")


# ----------------------------------------------------------------------------------------------- labels

# A distinguishable default palette (r, g, b in 0..1) for labels given without a colour.
DEFAULT_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.902, 0.098, 0.294),
    (0.235, 0.706, 0.294),
    (1.0, 0.882, 0.098),
    (0.0, 0.51, 0.784),
    (0.961, 0.51, 0.188),
    (0.569, 0.118, 0.706),
    (0.275, 0.941, 0.941),
    (0.941, 0.196, 0.902),
    (0.824, 0.961, 0.235),
    (0.98, 0.745, 0.831),
    (0.0, 0.502, 0.502),
    (0.863, 0.745, 1.0),
)


@dataclass(frozen=True)
class Label:
    """One foreground class of a segmentation model.

    Args:
        value: the voxel value written to the output labelmap (1..65535; 0 is background).
        name: human-readable segment name (e.g. "liver").
        color: (r, g, b), each in 0..1.
        terminology: optional coded meaning, e.g. ``{"category": {"scheme": "SCT", "code": "123037004",
            "meaning": "Anatomical Structure"}, "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}}``
            (free-form mapping, passed to Slicer / DICOM writers as is).
    """

    value: int
    name: str
    color: tuple[float, float, float] = (1.0, 0.0, 0.0)
    terminology: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or not 1 <= self.value <= 65535:
            raise ValueError(f"label value must be an integer in 1..65535 (0 is background), got {self.value!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"label {self.value} needs a non-empty name")
        color = tuple(float(c) for c in self.color)
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"label {self.name!r}: color must be [r, g, b] with values in 0..1, got {self.color!r}")
        object.__setattr__(self, "color", color)
        if self.terminology is not None and not isinstance(self.terminology, Mapping):
            raise ValueError(f"label {self.name!r}: terminology must be a mapping or null")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology is not None:
            out["terminology"] = dict(self.terminology)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "label") -> Label:
        return config_from_dict(cls, dict(data), where=where)


def parse_labels(labels: Sequence[Mapping[str, Any] | Label | str]) -> tuple[Label, ...]:
    """Labels from card dicts, Label objects or bare names (values 1, 2, ... and palette colours for names).

    Raises ValueError on duplicate values or names.
    """
    out: list[Label] = []
    for i, item in enumerate(labels):
        if isinstance(item, Label):
            out.append(item)
        elif isinstance(item, str):
            out.append(Label(i + 1, item, DEFAULT_COLORS[i % len(DEFAULT_COLORS)]))
        else:
            out.append(Label.from_dict(item, where=f"label #{i}"))
    values = [label.value for label in out]
    names = [label.name for label in out]
    if len(set(values)) != len(values):
        raise ValueError(f"label values must be unique, got {values}")
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique, got {names}")
    return tuple(out)


# ----------------------------------------------------------------------------------------------- preprocessing

SCHEMES = ("ct_clip_zscore", "zscore", "none")
DEMO_CT = {"clip_low": -1000.0, "clip_high": 1000.0, "mean": 65.1084, "std": 178.0166}


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings, saved in the model card (``card.preprocessing``); applied by
    ``MedDINOv3Core.data.preprocess`` (whose docstring describes the schemes).

    Args:
        scheme: intensity scheme, one of SCHEMES.
        clip_low, clip_high: clipping bounds (ct_clip_zscore).
        mean, std: normalisation statistics (ct_clip_zscore).
        zscore_nonzero: zscore over non-zero voxels only.
        spacing: target in-plane spacing (x, y) in mm of the model grid; empty = keep each volume's native spacing.
    """

    scheme: str = "ct_clip_zscore"
    clip_low: float | None = DEMO_CT["clip_low"]
    clip_high: float | None = DEMO_CT["clip_high"]
    mean: float | None = DEMO_CT["mean"]
    std: float | None = DEMO_CT["std"]
    zscore_nonzero: bool = False
    spacing: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"preprocessing scheme must be one of {SCHEMES}, got {self.scheme!r}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        if self.spacing and (len(self.spacing) != 2 or min(self.spacing) <= 0):
            raise ValueError(f"preprocessing spacing must be empty or two positive numbers (x, y), got {self.spacing}")
        if self.scheme == "ct_clip_zscore":
            missing = [k for k in ("clip_low", "clip_high", "mean", "std") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"scheme 'ct_clip_zscore' needs {missing} in the preprocessing config")
            if not self.clip_low < self.clip_high:
                raise ValueError(f"clip_low {self.clip_low} must be below clip_high {self.clip_high}")
            if not self.std > 0:
                raise ValueError(f"std must be positive, got {self.std}")

    @classmethod
    def meddinov3_demo(cls, spacing: tuple[float, ...] = ()) -> PreprocessConfig:
        """The released MedDINOv3 demo: clamp HU to [-1000, 1000], then (x - 65.1084) / 178.0166."""
        return cls("ct_clip_zscore", spacing=spacing, **DEMO_CT)

    @classmethod
    def mri_zscore(cls, nonzero: bool = False, spacing: tuple[float, ...] = ()) -> PreprocessConfig:
        return cls("zscore", None, None, None, None, nonzero, spacing)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        return config_from_dict(cls, dict(data), where="preprocessing config")


# ----------------------------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class InferenceConfig:
    """Inference settings, saved in the model card (``card.inference``); used by
    ``MedDINOv3Core.inference.predict_volume``.

    Args:
        tile_size: (H, W) of a tile on the model grid (the training patch size, e.g. (512, 512)); empty = the whole
            (padded) slice in one pass. Must be multiples of the backbone's patch size.
        step: tile stride as a fraction of the tile size (0.5: tiles overlap by half).
        gaussian_sigma: sigma of the Gaussian importance map as a fraction of the tile size.
        tta: mirroring test-time augmentation over both in-plane axes (4x cost).
        batch_size: slices per forward pass.
        pad_value: value (normalised units) used to pad slices smaller than the tile.
    """

    tile_size: tuple[int, ...] = ()
    step: float = 0.5
    gaussian_sigma: float = 0.125
    tta: bool = False
    batch_size: int = 2
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile_size", tuple(int(t) for t in self.tile_size))
        if self.tile_size and (len(self.tile_size) != 2 or min(self.tile_size) < 1):
            raise ValueError(f"tile_size must be empty or two positive integers (H, W), got {self.tile_size}")
        if not 0 < self.step <= 1:
            raise ValueError(f"step must be in (0, 1], got {self.step}")
        if not self.gaussian_sigma > 0:
            raise ValueError(f"gaussian_sigma must be positive, got {self.gaussian_sigma}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def replace(self, **changes: Any) -> InferenceConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceConfig:
        return config_from_dict(cls, dict(data), where="inference config")


# ----------------------------------------------------------------------------------------------- the card


@dataclass(frozen=True)
class ModelCard:
    """Everything in a model card's config.json.

    Args:
        task: "backbone" or "segmentation".
        backbone: the ViT architecture.
        name, description: human-readable identity.
        license: SPDX id or licence name of the weights (for example "apache-2.0", "dinov3-license").
        provenance: where the weights came from (upstream repo/revision/file, training command, git commit, ...).
        head: segmentation head configuration (owned by the network that reads it, e.g.
            MedDINOv3Core.models.segmenter.SegmenterConfig), None for backbones.
        labels: one dict per class: value, name, color [r, g, b] in 0..1, optional terminology (see Label).
        preprocessing: a PreprocessConfig as a dict.
        inference: an InferenceConfig as a dict.
    """

    task: str
    backbone: ViTConfig
    name: str = ""
    description: str = ""
    license: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] | None = None
    labels: tuple[dict[str, Any], ...] = ()
    preprocessing: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"model card task must be one of {TASKS}, got {self.task!r}")

    def to_dict(self) -> dict[str, Any]:
        data = config_to_dict(self)
        data["backbone"] = self.backbone.to_dict()
        data["labels"] = [dict(label) for label in self.labels]
        return {"format": CARD_FORMAT, "format_version": CARD_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model card") -> ModelCard:
        data = dict(data)
        fmt, version = data.pop("format", None), data.pop("format_version", None)
        if fmt != CARD_FORMAT:
            raise ValueError(f"{where}: not a MedDINOv3 model card (format {fmt!r}, expected {CARD_FORMAT!r})")
        if not isinstance(version, int) or version > CARD_VERSION:
            raise ValueError(
                f"{where}: model card format version {version!r} is newer than this library understands "
                f"({CARD_VERSION}); upgrade MedDINOv3Core"
            )
        if "backbone" not in data or "task" not in data:
            raise ValueError(f"{where}: config.json lacks the required 'task' and 'backbone' entries")
        data["backbone"] = ViTConfig.from_dict(data["backbone"])
        return config_from_dict(cls, data, where=where)


def card_labels(card: ModelCard) -> tuple[Label, ...]:
    """The card's foreground labels, in logit-channel order (channel c >= 1 is ``labels[c - 1]``)."""
    return parse_labels(card.labels)


# ----------------------------------------------------------------------------------------------- config.json I/O


# Bounds of the backbone fields a config.json may hold: beyond them a network cannot be built in any memory (ViT-7B
# has embed_dim 4096, depth 40, 32 heads).
BACKBONE_LIMITS: dict[str, tuple[float, float]] = {
    "patch_size": (1, 1024),
    "embed_dim": (4, 16384),
    "depth": (1, 256),
    "num_heads": (1, 1024),
    "mlp_ratio": (0.01, 64),
    "in_chans": (1, 64),
    "n_storage_tokens": (0, 1024),
}
INFERENCE_LIMITS: dict[str, tuple[float, float]] = {"tile_size": (1, 65536), "batch_size": (1, 65536)}
MAX_PARAMETERS = 20e9  # a backbone's parameter count beyond which a card is refused as absurd


def _type_ok(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits one field annotation of the card's dataclasses (``int``, ``float | None``,
    ``tuple[int, ...]``, ``dict[str, Any] | None``, ...)."""
    for alt in (a.strip() for a in annotation.split(" | ")):
        if alt == "Any":
            return True
        if alt == "None" and value is None:
            return True
        if alt == "bool" and isinstance(value, bool):
            return True
        if alt == "str" and isinstance(value, str):
            return True
        if alt == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if alt == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value == value and value not in (float("inf"), float("-inf"))
        if alt.startswith("dict") and isinstance(value, dict):
            return True
        if alt.startswith("tuple[") and isinstance(value, (list, tuple)):
            inner = alt[len("tuple[") : -1].split(",")[0].strip()
            inner = "dict" if inner.startswith("dict") else inner
            return all(_type_ok(v, inner) for v in value)
    return False


_TYPE_WORDS = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "true or false"}


def _describe(annotation: str) -> str:
    words = []
    for alt in (a.strip() for a in annotation.split(" | ")):
        if alt.startswith("tuple["):
            inner = alt[len("tuple[") : -1].split(",")[0].strip()
            plural = {"int": "integers", "float": "finite numbers", "str": "strings"}
            words.append("a list of " + ("objects" if inner.startswith("dict") else plural.get(inner, inner)))
        elif alt.startswith("dict"):
            words.append("an object")
        else:
            words.append("null" if alt == "None" else _TYPE_WORDS.get(alt, alt))
    return " or ".join(words)


def _known(annotation: str) -> bool:
    return all(
        a in ("Any", "None", "bool", "str", "int", "float") or a.startswith(("dict", "tuple["))
        for a in (alt.strip() for alt in annotation.split(" | "))
    )


def _check_fields(
    cls: type, data: Any, where: str, section: str, limits: Mapping[str, tuple[float, float]] | None = None
) -> None:
    """Raise a one-line ValueError naming ``where`` and ``section.field`` for a value of the wrong JSON type or
    outside ``limits``; unknown fields are left to ``config_from_dict``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {section} must be an object, got {type(data).__name__} {_short_value(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            continue
        annotation = str(fields[key].type)
        if not _known(annotation):
            continue
        name = f"{section}.{key}" if section else key
        if not _type_ok(value, annotation):
            raise ValueError(f"{where}: {name} must be {_describe(annotation)}, got {_short_value(value)}")
        if limits and key in limits:
            low, high = limits[key]
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if not low <= v <= high:
                    raise ValueError(
                        f"{where}: {name} is {_short_value(value)}, outside the sensible range {low}..{high}"
                    )


def _short_value(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or value == value else "NaN"
    return text if len(text) <= 60 else text[:57] + "..."


def check_card_data(data: Any, where: str = "config.json") -> None:
    """Check the JSON types and the sensible ranges of a config.json's fields before anything is built from them:
    a one-line ValueError naming ``where`` and the field (``backbone.embed_dim``, ``labels``, ...)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a JSON object (it holds a {type(data).__name__})")
    _check_fields(ModelCard, data, where, "")
    if "backbone" in data:
        _check_fields(ViTConfig, data["backbone"], where, "backbone", BACKBONE_LIMITS)
        b = data["backbone"]
        embed, depth, ratio = b.get("embed_dim", 768), b.get("depth", 12), b.get("mlp_ratio", 4.0)
        if embed * embed * depth * (4 + 2 * ratio) > MAX_PARAMETERS:
            raise ValueError(
                f"{where}: backbone embed_dim {embed}, depth {depth}, mlp_ratio {ratio} describe a network of over "
                f"{MAX_PARAMETERS:.0e} parameters; the file is damaged"
            )
    for i, label in enumerate(data.get("labels") or []):
        if not isinstance(label, dict):
            raise ValueError(f"{where}: labels[{i}] must be an object (value, name, color), got {_short_value(label)}")
        _check_fields(Label, label, where, f"labels[{i}]")
    if data.get("preprocessing"):
        _check_fields(PreprocessConfig, data["preprocessing"], where, "preprocessing")
    if data.get("inference"):
        _check_fields(InferenceConfig, data["inference"], where, "inference", INFERENCE_LIMITS)


def card_to_json(card: ModelCard) -> str:
    """The text of a card's config.json."""
    return json.dumps(card.to_dict(), indent=2) + "\n"


def write_card_config(directory: str | os.PathLike, card: ModelCard) -> Path:
    """Write ``card`` as ``directory/config.json`` (the directory must exist); returns the file's path.

    Not atomic on its own: ``MedDINOv3Core.weights.save_model_card`` calls it inside a temporary directory that is
    renamed into place.
    """
    path = Path(directory) / CONFIG_NAME
    path.write_text(card_to_json(card), encoding="utf-8")
    return path


def is_model_card(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a MedDINOv3 model card: its config.json says so, or it is damaged (empty, not JSON,
    not a JSON object) beside a model.safetensors, so that ``load_model_card`` names what is wrong with it."""
    d = Path(directory)
    if not (d / CONFIG_NAME).is_file():
        return False
    try:
        data = json.loads((d / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (d / WEIGHTS_NAME).is_file()
    if not isinstance(data, dict):
        return (d / WEIGHTS_NAME).is_file()
    return data.get("format") == CARD_FORMAT


def load_model_card(directory: str | os.PathLike) -> ModelCard:
    """Read a card's config.json (no weights)."""
    d = Path(directory).expanduser()
    path = d / CONFIG_NAME
    if not d.is_dir():
        raise FileNotFoundError(f"model card directory not found: {d}")
    if not path.is_file():
        raise FileNotFoundError(f"{d} is not a model card: it has no {CONFIG_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-download or re-export the model") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not a JSON object (it holds a {type(data).__name__}); re-download or re-export the model"
        )
    check_card_data(data, where=str(path))
    try:
        card = ModelCard.from_dict(data, where=str(path))
        card_labels(card)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        raise ValueError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    return card


__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "CONFIG_NAME",
    "DEFAULT_COLORS",
    "DEMO_CT",
    "SCHEMES",
    "TASKS",
    "WEIGHTS_NAME",
    "InferenceConfig",
    "Label",
    "ModelCard",
    "PreprocessConfig",
    "card_labels",
    "check_card_data",
    "card_to_json",
    "is_model_card",
    "load_model_card",
    "parse_labels",
    "write_card_config",
]

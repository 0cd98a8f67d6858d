"""Frozen-dataclass configs: strict construction from dicts (unknown keys raise), plain-dict export, YAML recipes
(with ``base:``), the numbers YAML 1.1 leaves as strings, and the old spellings of options (OPTION_ALIASES)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Old spelling -> the one spelling of an option shared by pretraining and finetuning. The old keys are still
# accepted in recipes, key=value overrides and config dicts (resolve_aliases).
OPTION_ALIASES: dict[str, str] = {"output": "output_dir", "init": "init_from", "clip_grad": "grad_clip"}

# The sensible range of the numeric options of the configs (pretraining, finetuning, crops, augmentation, cards),
# by option name; checked by config_from_dict, so a recipe, a key=value override or a config dict is refused alike.
# Tuple values are checked element-wise. NaN and infinity are refused for every numeric option.
POSITIVE_OPTIONS = frozenset(
    "epochs total_steps batch_size val_batch_size iterations_per_epoch checkpoint_every log_every "
    "slice_size student_temp teacher_temp teacher_temp_start norm_std crop_size global_sizes local_sizes "
    "fewshot_pixels fewshot_hidden fewshot_pca_dim head_out_dim head_hidden_dim head_bottleneck_dim head_layers "
    "n_global gram_scale in_chans spacing".split()
)
NON_NEGATIVE_OPTIONS = frozenset(
    "lr lr_decoder min_lr lr_encoder warmup_steps weight_decay weight_decay_start weight_decay_end grad_clip "
    "num_workers seed keep_every freeze_last_layer_steps teacher_temp_warmup_steps dino_weight ibot_weight "
    "koleo_weight gram_weight dice_weight ce_weight n_local patch_embed_lr_mult blur_sigma fewshot_image_sigmas "
    "backbone_patch_size".split()
)
FRACTION_OPTIONS = frozenset(
    "mask_probability mask_ratio flip_p blur_p momentum_start momentum_end layer_decay drop_path "
    "oversample_foreground val_fraction warmup_fraction global_scale local_scale betas".split()
)

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def resolve_aliases(
    data: Mapping[str, Any], aliases: Mapping[str, str] = OPTION_ALIASES, where: str = "config"
) -> dict[str, Any]:
    """``data`` with every old key of ``aliases`` renamed to its current spelling.

    Raises:
        ValueError: both spellings are given with different values.
    """
    out = dict(data)
    for old, new in aliases.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ValueError(f"{where}: {old!r} is the old spelling of {new!r}; give one of them, not both")
        out[new] = value
    return out


def yaml_numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (no dot) as a string: turn such numeric strings into floats, recursively in lists."""
    if isinstance(value, list):
        return [yaml_numbers(v) for v in value]
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys raise a ValueError naming them and the valid ones.

    Tuples are restored from JSON lists for fields whose default is a tuple.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown option(s) {unknown}; valid options are {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        default = fields[key].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        kwargs[key] = value
    check_option_ranges(kwargs, where or cls.__name__)
    return cls(**kwargs)


def check_option_ranges(data: Mapping[str, Any], where: str = "config") -> None:
    """Refuse NaN or infinite numbers, and numbers outside the option's range (POSITIVE_OPTIONS, NON_NEGATIVE_OPTIONS,
    FRACTION_OPTIONS), with a ValueError naming the option and its allowed range."""
    for key, value in data.items():
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                raise ValueError(f"{where}: option {key} must be a finite number, got {v}")
            if key in POSITIVE_OPTIONS and not v > 0:
                raise ValueError(f"{where}: option {key} must be greater than 0, got {v}")
            if key in NON_NEGATIVE_OPTIONS and not v >= 0:
                raise ValueError(f"{where}: option {key} must be at least 0, got {v}")
            if key in FRACTION_OPTIONS and not 0 <= v <= 1:
                raise ValueError(f"{where}: option {key} must be in [0, 1], got {v}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a dataclass config (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or 'cannot be parsed'}{where}"


def read_recipe(path: str | os.PathLike, what: str = "recipe") -> dict[str, Any]:
    """A YAML recipe as a dict; ``base: other.yaml`` (relative to the recipe) is read first and overridden."""
    import yaml

    def read(p: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
        if p in seen:
            raise ValueError(f"recipe {p} includes itself through 'base'")
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{p} is not a valid YAML {what}: {yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a recipe must be a mapping of option: value")
        base = data.pop("base", None)
        return {**read((p.parent / base).resolve(), (*seen, p)), **data} if base else data

    return read(Path(path).expanduser().resolve(), ())


def coerce_numbers(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Numeric strings (see yaml_numbers) in ``data`` turned into the number type of the field's default in ``cls``
    (element-wise for tuple fields). Non-numeric strings for numeric fields raise, naming the option."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def number(key: str, v: Any, like: Any) -> Any:
        if not isinstance(v, str) or isinstance(like, bool) or not isinstance(like, (int, float)):
            return v
        try:
            number = yaml_numbers(v) if isinstance(like, float) else int(v)
            if isinstance(number, str):
                raise ValueError(v)
        except ValueError:
            raise ValueError(f"option {key}: {v!r} is not a number") from None
        return number

    out = {}
    for key, value in data.items():
        like = defaults.get(key)
        if isinstance(value, list) and isinstance(like, tuple):
            out[key] = [number(key, v, like[0] if like else None) for v in value]
        else:
            out[key] = number(key, value, like)
    return out

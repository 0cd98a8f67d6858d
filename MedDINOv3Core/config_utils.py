"""Frozen-dataclass configs: strict construction from dicts (unknown keys raise) and plain-dict export."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a dataclass config (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def read_recipe(path: str | os.PathLike, what: str = "recipe") -> dict[str, Any]:
    """A YAML recipe as a dict; ``base: other.yaml`` (relative to the recipe) is read first and overridden."""
    import yaml

    def read(p: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
        if p in seen:
            raise ValueError(f"recipe {p} includes itself through 'base'")
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}")
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a recipe must be a mapping of option: value")
        base = data.pop("base", None)
        return {**read((p.parent / base).resolve(), (*seen, p)), **data} if base else data

    return read(Path(path).expanduser().resolve(), ())


def coerce_numbers(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-5`` (no dot) as a string: turn numeric strings into the number type of the field's
    default (element-wise for tuple fields). Non-numeric strings for numeric fields raise, naming the option."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def number(key: str, v: Any, like: Any) -> Any:
        if not isinstance(v, str) or isinstance(like, bool) or not isinstance(like, (int, float)):
            return v
        try:
            return float(v) if isinstance(like, float) else int(v)
        except ValueError:
            raise ValueError(f"option {key}: {v!r} is not a number") from None

    out = {}
    for key, value in data.items():
        like = defaults.get(key)
        if isinstance(value, list) and isinstance(like, tuple):
            out[key] = [number(key, v, like[0] if like else None) for v in value]
        else:
            out[key] = number(key, value, like)
    return out

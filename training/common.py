"""Helpers shared by the subcommands: errors, progress reporting (tqdm or JSON lines), device choice, overrides."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from MedDINOv3Core.config_utils import yaml_numbers, yaml_problem
from MedDINOv3Core.progress import write_progress_line


class CommandError(RuntimeError):
    """A failure reported to the user as one line (exit code 1)."""


class UsageError(ValueError):
    """Bad command-line usage (exit code 2)."""


def _number(text: str, kind: type, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number, 0 or more."""
    value = _number(text, float, "a number of 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of 0 or more")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number in [0, 1]")
    return value


def int_range(low: int, high: int | None = None):
    """argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""
    allowed = f"an integer of at least {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        value = _number(text, int, allowed)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {allowed}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(low: float, high: float):
    """argparse type: a finite number in [low, high]."""
    allowed = f"a number in [{low:g}, {high:g}]"

    def parse(text: str) -> float:
        value = _number(text, float, allowed)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {allowed}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "integer"


def add_progress_argument(parser) -> None:
    parser.add_argument(
        "--progress",
        choices=("bar", "json", "none"),
        default="bar",
        help="progress display: a tqdm bar (default), one JSON object per line on stdout (for the Slicer job "
        "runner), or nothing",
    )


class Progress:
    """A progress callback ``(stage, done, total, message)`` rendering as a tqdm bar or JSON lines.

    JSON lines: ``{"stage": ..., "done": n, "total": m, "message": ...}``, flushed at once.
    """

    def __init__(self, mode: str = "bar") -> None:
        self.mode = mode
        self._bar = None
        self._stage = None
        self._origins: dict[str, tuple[float, int]] = {}  # stage -> (start time, first count) of its first bar
        self._last: dict[str, int] = {}  # stage -> its count when its last bar closed

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        if self.mode == "json":
            write_progress_line(sys.stdout, stage, done, total, message)
        elif self.mode == "bar":
            from tqdm import tqdm

            if self._bar is None or stage != self._stage:
                # Stages alternate (finetune, validate, finetune, ...): a stage that goes on where it stopped keeps
                # the start and count of its first bar, so its elapsed time, rate and ETA cover the whole run, not
                # the last epoch. A stage that starts again from fewer (the next case) gets a fresh bar.
                if self._bar is not None:
                    self._last[self._stage] = int(self._bar.n)
                self.close()
                start, first = self._origins.get(stage, (None, done))
                if done < self._last.get(stage, 0):
                    start, first = None, done
                self._bar = tqdm(total=total, initial=first, desc=stage, unit="it", file=sys.stderr, dynamic_ncols=True)
                if start is None:
                    self._origins[stage] = (self._bar.start_t, first)
                else:
                    self._bar.start_t = start
                self._stage = stage
            self._bar.total = total
            self._bar.n = done
            if message:
                self._bar.set_postfix_str(message, refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_output_folder(option: str, path: Path) -> None:
    """A UsageError when an output folder option names an existing file, or a path through one."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder")
    check_output_parents(option, path)


def check_output_parents(option: str, path: str | Path) -> None:
    """A UsageError when an output's path goes through an existing file (``notes.txt/seg.nii.gz``): found before
    any work starts, not when the result is written."""
    for parent in Path(path).expanduser().absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder; choose another {option}")
            return


def check_cache_folder(option: str, path: str | None) -> None:
    """A UsageError when a cache folder option (--cache-dir, --hub-cache-dir) names an existing file."""
    if path:
        check_output_folder(option, Path(path).expanduser())


def refuse_output_over_input(
    outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None], replaces_folder: bool = False
) -> None:
    """A UsageError when an output (option -> path) is one of the inputs, also through symlinks and hard links, or
    its path goes through a file; with ``replaces_folder`` (the output folder is replaced as a whole) also when the
    output folder holds an input."""
    import os

    def resolved(p: str | Path) -> Path:
        return Path(p).expanduser().resolve()

    for out_opt, out in outputs.items():
        if not out:
            continue
        check_output_parents(out_opt, out)
        o = resolved(out)
        for in_opt, inp in inputs.items():
            if not inp:
                continue
            i = resolved(inp)
            same = o == i
            if not same and o.exists() and i.exists():
                try:
                    same = os.path.samefile(o, i)
                except OSError:
                    same = False
            if same:
                raise UsageError(f"{out_opt} {out} is the input {in_opt} {inp}; choose another {out_opt}")
            if replaces_folder and o in i.parents:
                raise UsageError(f"{out_opt} {out} would be replaced, but it holds the input {in_opt} {inp}")


RECIPES = Path(__file__).resolve().parent / "configs"


def recipe_names(kind: str | None = None) -> list[str]:
    """The recipe names in training/configs: every one, or those of ``kind``: "pretrain" (stage1, stage2, stage3,
    tiny_cpu) or "finetune" (finetune*)."""
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    if kind is None:
        return names
    if kind not in ("pretrain", "finetune"):
        raise ValueError(f"recipe kind must be 'pretrain' or 'finetune', got {kind!r}")
    return [n for n in names if n.startswith("finetune") == (kind == "finetune")]


def recipe_path(name: str, pattern: str = "*.yaml", kind: str | None = None) -> Path:
    """A recipe name in training/configs ("stage1", "finetune_fewshot") or a path to a YAML file. With ``kind``
    ("pretrain", "finetune"), a name must be a recipe of that kind (see ``recipe_names``); else of ``pattern``."""
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise UsageError(f"recipe file not found: {p}")
        return p
    candidate = RECIPES / f"{name}.yaml"
    known = recipe_names(kind) if kind else sorted(q.stem for q in RECIPES.glob(pattern))
    if not candidate.is_file() or name not in known:
        other = next((k for k in ("pretrain", "finetune") if candidate.is_file() and name in recipe_names(k)), None)
        hint = f" ({name} is a {other} recipe: `python -m training {other} --config {name}`)" if other else ""
        raise UsageError(f"unknown recipe {name!r}{hint}; choose one of {', '.join(known)} or give a YAML path")
    return candidate


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> dict; values parsed as YAML scalars/lists (``lr=1e-4``, ``sizes=[224,256]``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml_numbers(yaml.safe_load(value)) if value else ""
        except yaml.YAMLError as exc:
            raise UsageError(f"override {item!r}: the value is not valid YAML ({yaml_problem(exc)})") from None
    return out

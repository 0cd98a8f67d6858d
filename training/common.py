"""Helpers shared by the subcommands: errors, progress reporting (tqdm or JSON lines), device choice, overrides."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from MedDINOv3Core.config_utils import yaml_numbers
from MedDINOv3Core.progress import write_progress_line


class CommandError(RuntimeError):
    """A failure reported to the user as one line (exit code 1)."""


class UsageError(ValueError):
    """Bad command-line usage (exit code 2)."""


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

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        if self.mode == "json":
            write_progress_line(sys.stdout, stage, done, total, message)
        elif self.mode == "bar":
            from tqdm import tqdm

            if self._bar is None or stage != self._stage:
                self.close()
                self._bar = tqdm(total=total, desc=stage, unit="it", file=sys.stderr, dynamic_ncols=True)
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


RECIPES = Path(__file__).resolve().parent / "configs"


def recipe_path(name: str, pattern: str = "*.yaml") -> Path:
    """A recipe name in training/configs ("stage1", "finetune_fewshot") or a path to a YAML file."""
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise UsageError(f"recipe file not found: {p}")
        return p
    candidate = RECIPES / f"{name}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(q.stem for q in RECIPES.glob(pattern)))
        raise UsageError(f"unknown recipe {name!r}; choose one of {known} or give a YAML path")
    return candidate


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> dict; values parsed as YAML scalars/lists (``lr=1e-4``, ``sizes=[224,256]``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml_numbers(yaml.safe_load(value)) if value else ""
    return out

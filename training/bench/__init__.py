"""The benchmark harness behind ``python -m training bench`` (issue 19): one place for every BENCHMARKS.md figure.

A case is one measurement with a reference measured side by side in the same process: ``predict`` times the plain
and the fast mode, ``extract`` the plain and the fast feature extraction, ``decoder`` the convolution reference and
the GEMM decoder, ``backbone`` ours and transformers' ViT, and so on. The harness (``harness.run_case``) runs the
variants interleaved (A B A B ...) so that machine noise hits them alike, and reports the medians over
``--repeats``, each variant's peak memory (RSS high-water, reset before each variant where Linux allows it; CUDA
max allocated on a GPU), the ratio of every variant to the reference, the case's quality metrics and the machine
(CPU model, cores, torch version and threads, load average before and after).

Adding a case (e.g. the few-shot loop, in a file of its own): create ``training/bench/case_<name>.py`` defining
``CASES``, a tuple of ``Case``. The harness finds every ``case_*.py`` module of this package.

    def _setup(settings: BenchSettings) -> Prepared:
        data = ...                                        # build inputs once (not timed)
        return Prepared(
            variants={"plain": lambda: f(data), "fast": lambda: g(data)},   # each call is one timed run
            reference="plain",                            # the ratios are variant median / reference median
            settings={"slices": 30},                      # what was measured, as JSON values
            warmup=lambda: f(small),                      # optional, untimed (first-call allocations)
            metrics=lambda outputs, medians: {"dsc": ...}, # optional: from the last outputs and median seconds
            per_item=30,                                  # optional: items per call, for items/s
        )

    CASES = (Case("fewshot-loop", "one few-shot head step on cached features", _setup),)

``BenchSettings`` holds the common options (preset, size, slices, repeats, threads, batch size, device, model card,
toy); a case reads the ones it needs and ignores the rest. ``toy=True`` (the smoke test) must make the case run in
about a second (tiny ViT, 32 x 32 slices).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BenchSettings:
    """Common options of every case (``python -m training bench --help`` describes each)."""

    preset: str = "vit_base"
    size: int = 512
    slices: int = 8
    repeats: int = 3
    threads: int = 0
    batch_size: int = 2
    device: str = "cpu"
    model: str | None = None
    toy: bool = False
    ablations: bool = False


@dataclass
class Prepared:
    """What a case's setup returns; see the package docstring."""

    variants: Mapping[str, Callable[[], Any]]
    reference: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    warmup: Callable[[], Any] | None = None
    metrics: Callable[[dict[str, Any], dict[str, float]], dict[str, Any]] | None = None
    per_item: int = 0
    cleanup: Callable[[], None] | None = None


@dataclass(frozen=True)
class Case:
    """A named benchmark: ``setup(settings) -> Prepared``."""

    name: str
    help: str
    setup: Callable[[BenchSettings], Prepared]


def all_cases() -> dict[str, Case]:
    """Every case of every ``training/bench/case_*.py`` module, by name."""
    cases: dict[str, Case] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("case_"):
            for case in importlib.import_module(f"{__name__}.{info.name}").CASES:
                if case.name in cases:
                    raise ValueError(f"two benchmark cases are named {case.name!r}")
                cases[case.name] = case
    return cases

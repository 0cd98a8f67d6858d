"""Training schedules as pure functions of the iteration: warm-up + cosine, linear warm-up, step freezes.

Every function takes the current step and returns a number, so resuming at step s needs no schedule state.
"""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total_steps``), constant ``end`` afterwards."""
    if total_steps <= 0:
        return end
    t = min(max(step, 0), total_steps) / total_steps
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def linear(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``total_steps``, constant ``end`` afterwards."""
    if total_steps <= 0:
        return end
    t = min(max(step, 0), total_steps) / total_steps
    return start + (end - start) * t


def warmup_cosine(
    step: int, total_steps: int, peak: float, final: float, warmup_steps: int, warmup_start: float = 0.0
) -> float:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup_steps``, then cosine to ``final`` at the end.

    Used for the learning rate (peak lr -> min lr).
    """
    if step < warmup_steps:
        return linear(step, warmup_steps, warmup_start, peak)
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


def warmup_linear(step: int, total_steps: int, peak: float, final: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then linear decay to ``final`` at ``total_steps``.

    Used for the finetuning learning rate (the paper's linear decay; a short warm-up steadies runs from scratch).
    """
    if step < warmup_steps:
        return linear(step + 1, warmup_steps, 0.0, peak)
    return linear(step - warmup_steps, total_steps - warmup_steps, peak, final)


def teacher_temperature(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Teacher softmax temperature: linear warm-up ``start`` -> ``end`` (0.04 -> 0.07), then constant."""
    return linear(step, warmup_steps, start, end)


def ema_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """Teacher EMA momentum: cosine from ``start`` (0.992) to ``end`` (1.0) over training."""
    return cosine(step, total_steps, start, end)


def weight_decay(step: int, total_steps: int, start: float, end: float) -> float:
    """Weight decay: cosine from ``start`` (0.04) to ``end`` (0.4) over training."""
    return cosine(step, total_steps, start, end)


def last_layer_frozen(step: int, freeze_steps: int) -> bool:
    """Whether the prototype (last) layers of the heads are frozen at ``step`` (the first ``freeze_steps``)."""
    return step < freeze_steps

"""Per-step losses kept on the device and read back in windows (issue 19: no host-device round trips inside the
training loops).

Reading a loss on the host (``float(loss)``, ``loss.item()``, ``if not torch.isfinite(loss)``) makes the host wait
for the device to finish the step, so on a GPU it cannot queue the next step's kernels meanwhile. The training
loops therefore keep every step's losses as device tensors and read a whole window back in one transfer: when
they log, report, validate or checkpoint. A non-finite loss is found at the next read and named by its step; the
loops read before every checkpoint, so no checkpoint ever holds the weights a non-finite step produced. On the
CPU nothing changes but when the check happens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

READ_EVERY = 16  # steps between reads when nothing else asks for one


class StepLosses:
    """The losses of the steps not yet read back.

    Args:
        describe: ``(step, name, value) -> message`` of the FloatingPointError raised for a non-finite value.
    """

    def __init__(self, describe: Callable[[int, str, float], str]) -> None:
        self._describe = describe
        self._pending: list[tuple[int, dict[str, torch.Tensor], dict[str, float]]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, step: int, tensors: dict[str, torch.Tensor], extras: dict[str, float] | None = None) -> None:
        """Keep one step's loss tensors (0-d, on any device; detached here) and its host values (e.g. the lr)."""
        detached = {k: v.detach() for k, v in tensors.items()}
        if self._pending and sorted(detached) != sorted(self._pending[0][1]):
            raise ValueError(f"step {step} has the losses {sorted(detached)}, the window {sorted(self._pending[0][1])}")
        self._pending.append((step, detached, dict(extras or {})))

    def read(self, reduce: Callable[[torch.Tensor], None] | None = None) -> list[tuple[int, dict[str, float]]]:
        """Every pending step as ``(step, {name: value})``, in one device-to-host transfer; then the window is empty.

        Args:
            reduce: applied in place to the (steps, losses) float64 table before it is read, e.g. the mean over the
                processes of a distributed run (one collective per window instead of one per step).

        Raises:
            FloatingPointError: the first step with a non-finite loss (after ``reduce``).
        """
        if not self._pending:
            return []
        names = sorted(self._pending[0][1])
        table = torch.stack([torch.stack([t[k].double() for k in names]) for _, t, _ in self._pending])
        if reduce is not None:
            reduce(table)
        rows = table.cpu().tolist()
        pending, self._pending = self._pending, []
        out = []
        for (step, _, extras), row in zip(pending, rows, strict=True):
            for name, value in zip(names, row, strict=True):
                if not math.isfinite(value):
                    raise FloatingPointError(self._describe(step, name, value))
            out.append((step, {**dict(zip(names, row, strict=True)), **extras}))
        return out


__all__ = ["READ_EVERY", "StepLosses"]

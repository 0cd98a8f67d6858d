"""Gram anchoring (DINOv3): keep the patch-to-patch similarity structure of the student close to a frozen teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GramLoss(nn.Module):
    """L_Gram = 1/(B N^2) sum_b || X_s X_s^T - X_g X_g^T ||_F^2 with X the L2-normalised patch features (N, D).

    That is the mean squared difference of the two (N x N) cosine-similarity (Gram) matrices, averaged over the
    batch. The Gram teacher is frozen: no gradient flows into ``teacher``.

    Args:
        normalize: L2-normalise the patch features first (the paper's form).
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student, teacher: (B, N, D) patch features on the same grid (D may differ). Returns the scalar loss."""
        if student.ndim != 3 or teacher.ndim != 3 or student.shape[:2] != teacher.shape[:2]:
            raise ValueError(
                f"Gram loss needs student and teacher patch features (B, N, D) on the same grid, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        s, t = student.float(), teacher.detach().float()
        if self.normalize:
            s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        diff = s @ s.transpose(1, 2) - t @ t.transpose(1, 2)
        return diff.pow(2).mean()

"""KoLeo regulariser: the Kozachenko-Leonenko differential-entropy estimate, spreading features over the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.collectives import all_gather_with_grad


class KoLeoLoss(nn.Module):
    """L_KoLeo = -1/B sum_i log(min_{j != i} || x_i - x_j || + eps) over L2-normalised features.

    Low when the points are spread out; high when some are close together.

    Args:
        eps: added inside the log (and used by the normalisation) so coincident points stay finite.
        gather: compute over the batch of ALL processes (differentiable all-gather), so the loss does not depend
            on how the global batch is split. False computes it per process (DINOv2's choice).
    """

    def __init__(self, eps: float = 1e-8, gather: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.gather = gather

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, D) (e.g. the student's class tokens of one view). Returns the scalar loss."""
        if features.ndim != 2:
            raise ValueError(f"KoLeo expects features (B, D), got shape {tuple(features.shape)}")
        if self.gather:
            features = all_gather_with_grad(features)
        if features.shape[0] < 2:
            raise ValueError("KoLeo needs at least 2 samples in the batch")
        x = F.normalize(features.float(), p=2, dim=-1, eps=self.eps)
        with torch.no_grad():
            sim = x @ x.t()
            sim.fill_diagonal_(-2.0)
            nearest = sim.argmax(dim=1)
        distances = (x - x[nearest]).norm(p=2, dim=-1)
        return -torch.log(distances + self.eps).mean()

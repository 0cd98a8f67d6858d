"""DINO loss: cross-entropy between centred, sharpened teacher and student class-token distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.losses.centering import TeacherCentering


class DINOLoss(nn.Module):
    """L_DINO = 1/|P| sum_{(t, s) in P} mean_b [ - sum_k p_t[b, k] log softmax(z_s[b] / tau_s)_k ].

    P pairs every teacher (global) view t with every student view s except the same view (s == t, the global
    crops come first in the student's views). p_t are the teacher targets from ``teacher_targets``.

    Args:
        out_dim: number of prototypes K.
        student_temp: tau_s (0.1).
        centering: "sinkhorn_knopp" (default) or "softmax".
        center_momentum: softmax centering's EMA momentum.
    """

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, centering: str = "sinkhorn_knopp", center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.centering = TeacherCentering(out_dim, centering, center_momentum=center_momentum)

    @torch.no_grad()
    def teacher_targets(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(T, B, K) teacher logits of the T global views -> (T, B, K) targets (centred over all T*B rows)."""
        t, b, k = teacher_logits.shape
        return self.centering(teacher_logits.reshape(t * b, k), teacher_temp).reshape(t, b, k)

    def forward(self, student_logits: torch.Tensor, teacher_targets: torch.Tensor) -> torch.Tensor:
        """Args: student_logits (S, B, K) for S views (global first); teacher_targets (T, B, K), T <= S.

        Returns the scalar loss.
        """
        if student_logits.ndim != 3 or teacher_targets.ndim != 3:
            raise ValueError("DINOLoss expects student logits (S, B, K) and teacher targets (T, B, K)")
        n_s, n_t = student_logits.shape[0], teacher_targets.shape[0]
        if student_logits.shape[1:] != teacher_targets.shape[1:] or n_t > n_s:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher targets {tuple(teacher_targets.shape)} "
                "must share (B, K) and the teacher cannot have more views than the student"
            )
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        # ce[t, s] = mean over the batch of -sum_k p_t log q_s, for every pair at once.
        ce = -torch.einsum("tbk,sbk->ts", teacher_targets.float(), log_p) / student_logits.shape[1]
        keep = ~torch.eye(n_t, n_s, dtype=torch.bool, device=ce.device)
        n_pairs = int(keep.sum())
        if n_pairs == 0:
            raise ValueError("DINOLoss needs at least one (teacher view, different student view) pair")
        return ce[keep].sum() / n_pairs

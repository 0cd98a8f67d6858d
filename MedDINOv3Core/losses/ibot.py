"""iBOT patch loss: masked-image modelling in the prototype space, on the masked patches of the global crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from MedDINOv3Core.losses.centering import TeacherCentering


class iBOTPatchLoss(nn.Module):  # noqa: N801 (the method's name)
    """L_iBOT = 1/M sum_i 1/|M_i| sum_{p in M_i} [ - sum_k p_t[i, p, k] log softmax(z_s[i, p] / tau_s)_k ].

    M_i are the masked patches of image i (only masked patches enter; unmasked ones are ignored), M the number of
    masked images. The student sees the mask tokens, the teacher the full image.

    Args:
        out_dim: number of prototypes K of the iBOT head.
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
        """(P, K) teacher logits of the P masked patches of the batch -> (P, K) targets."""
        return self.centering(teacher_logits, teacher_temp)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_targets: torch.Tensor,
        patch_weights: torch.Tensor,
        n_masked_images: int,
    ) -> torch.Tensor:
        """Args:
            student_logits: (P, K) student logits of the masked patches only.
            teacher_targets: (P, K) teacher targets of the same patches.
            patch_weights: (P,) 1/|M_i| for each patch's image.
            n_masked_images: M, the number of images with at least one masked patch in this process's batch.

        Returns the scalar loss (0 when nothing is masked).
        """
        if student_logits.shape != teacher_targets.shape or student_logits.ndim != 2:
            raise ValueError(
                f"iBOT student logits {tuple(student_logits.shape)} and teacher targets "
                f"{tuple(teacher_targets.shape)} must both be (P, K)"
            )
        if patch_weights.shape != student_logits.shape[:1]:
            raise ValueError(
                f"patch_weights must be (P,) = ({student_logits.shape[0]},), got {tuple(patch_weights.shape)}"
            )
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        ce = -(teacher_targets.float() * log_p).sum(dim=-1)
        return (ce * patch_weights).sum() / max(int(n_masked_images), 1)


def masked_patch_weights(masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """From boolean masks (B, N): the (P,) weights 1/|M_i| of the masked patches (row-major order) and M."""
    counts = masks.sum(dim=1)
    weights = (1.0 / counts.clamp(min=1).float()).unsqueeze(1).expand_as(masks)[masks]
    return weights, int((counts > 0).sum())

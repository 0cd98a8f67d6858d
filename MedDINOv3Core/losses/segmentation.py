"""Segmentation loss: soft Dice over the foreground classes plus cross-entropy, weighted 1:1 (nnU-Net, MedDINOv3).

L = CE(logits, target) + (1 - mean_{c >= 1} DSC_c), with the soft Dice of class c

    DSC_c = (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth),

p = softmax(logits), g = one-hot(target), sums over the whole batch and all pixels ("batch Dice", nnU-Net's choice
for 2D, which keeps classes absent from one slice from producing noisy gradients). Background (class 0) is left
out of the Dice term. Pixels whose target equals ``ignore_index`` count in neither term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_per_class(
    probabilities: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, smooth: float = 1e-5
) -> torch.Tensor:
    """Batch soft Dice of every class: probabilities (B, C, H, W), target (B, H, W) int64 -> (C,).

    ``valid`` (B, H, W) bool masks pixels that count (None = all).
    """
    n_classes = probabilities.shape[1]
    onehot = F.one_hot(target.clamp(0, n_classes - 1), n_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    if valid is not None:
        w = valid[:, None].to(probabilities.dtype)
        probabilities, onehot = probabilities * w, onehot * w
    dims = (0, 2, 3)
    intersection = (probabilities * onehot).sum(dims)
    denominator = probabilities.sum(dims) + onehot.sum(dims)
    return (2.0 * intersection + smooth) / (denominator + smooth)


class DiceCELoss(nn.Module):
    """Soft Dice (no background) + cross-entropy, 1:1 (the MedDINOv3 paper, arXiv:2509.02379).

    Args:
        dice_weight, ce_weight: term weights (1 and 1 in the paper).
        smooth: added to the Dice numerator and denominator.
        ignore_index: target value excluded from both terms (nnU-Net uses -1 for "unlabelled"); None disables.
    """

    def __init__(
        self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5, ignore_index: int | None = -1
    ) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, C, H, W) (any float dtype; computed in fp32), target (B, H, W) class indices -> scalar."""
        if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"DiceCELoss expects logits (B, C, H, W) and target (B, H, W), got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        if logits.shape[1] < 2:
            raise ValueError("DiceCELoss needs at least 2 classes (background + one foreground)")
        logits = logits.float()
        target = target.long()
        valid = None if self.ignore_index is None else target != self.ignore_index
        if valid is not None and bool(valid.all()):
            valid = None
        ce = F.cross_entropy(logits, target, ignore_index=-100 if self.ignore_index is None else self.ignore_index)
        dice = soft_dice_per_class(torch.softmax(logits, dim=1), target, valid, self.smooth)[1:].mean()
        return self.ce_weight * ce + self.dice_weight * (1.0 - dice)


__all__ = ["DiceCELoss", "soft_dice_per_class"]

"""Dice + CE loss: known values, the explicit formula, background exclusion, ignore index, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from MedDINOv3Core.losses.segmentation import DiceCELoss, soft_dice_per_class


def _explicit(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """The loss written out class by class with loops (reference)."""
    p = torch.softmax(logits.double(), 1)
    dices = []
    for c in range(1, logits.shape[1]):
        g = (target == c).double()
        inter = (p[:, c] * g).sum()
        dices.append((2 * inter + smooth) / (p[:, c].sum() + g.sum() + smooth))
    ce = -torch.log(torch.gather(p, 1, target[:, None])).mean()
    return ce + 1 - torch.stack(dices).mean()


def test_matches_explicit_formula():
    logits = torch.randn(3, 4, 9, 7)
    target = torch.randint(0, 4, (3, 9, 7))
    assert torch.allclose(DiceCELoss()(logits, target).double(), _explicit(logits, target), atol=1e-5)


def test_perfect_prediction_is_near_zero_and_wrong_is_large():
    target = torch.randint(0, 3, (2, 16, 16))
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40.0
    assert DiceCELoss()(perfect, target).item() < 1e-6
    wrong = F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 40.0
    assert DiceCELoss()(wrong, target).item() > 30.0


def test_background_is_not_in_the_dice_term():
    # a batch with only background: the foreground Dice of a confident background prediction is smooth/smooth = 1
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 0] = 30.0
    dice = soft_dice_per_class(torch.softmax(logits, 1), target)
    assert torch.allclose(dice[1:], torch.ones(2), atol=1e-3)
    assert DiceCELoss()(logits, target).item() < 1e-3


def test_ignore_index_pixels_do_not_count():
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6))
    masked = target.clone()
    masked[:, :, :3] = -1
    loss = DiceCELoss()
    # changing the logits of ignored pixels does not change the loss
    other = logits.clone()
    other[:, :, :, :3] = torch.randn(2, 3, 6, 3) * 10
    assert math.isclose(loss(logits, masked).item(), loss(other, masked).item(), rel_tol=1e-6)


def test_gradients_flow_and_weights_apply():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    DiceCELoss()(logits, target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    ce_only = DiceCELoss(dice_weight=0.0)(logits, target)
    assert torch.allclose(ce_only, F.cross_entropy(logits, target))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="logits"):
        DiceCELoss()(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        DiceCELoss()(torch.randn(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))

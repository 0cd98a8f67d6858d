"""Known-value tests for the pretraining losses and the Sinkhorn-Knopp centering."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from MedDINOv3Core.losses import (
    DINOLoss,
    GramLoss,
    KoLeoLoss,
    SoftmaxCenter,
    TeacherCentering,
    iBOTPatchLoss,
    masked_patch_weights,
    sinkhorn_knopp,
)


def test_sinkhorn_knopp_marginals():
    logits = torch.randn(64, 16)
    q = sinkhorn_knopp(logits, temperature=0.5, n_iterations=100)
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-5)  # each sample a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((16,), 64 / 16), atol=1e-3)  # prototypes used equally
    q3 = sinkhorn_knopp(logits, temperature=0.04, n_iterations=3)
    assert torch.allclose(q3.sum(dim=1), torch.ones(64), atol=1e-5)  # rows exact after the last column step


def test_sinkhorn_knopp_sharp_targets_stay_finite():
    # Head logits are cosines in [-1, 1]; a very low temperature underflows exp() for whole prototypes.
    q = sinkhorn_knopp(torch.rand(8, 32) * 2 - 1, temperature=0.005)
    assert torch.isfinite(q).all()


def test_sinkhorn_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        sinkhorn_knopp(torch.randn(2, 3, 4), 0.1)


def test_softmax_center_updates_ema():
    c = SoftmaxCenter(4, momentum=0.5)
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    p = c(logits, 1.0)
    assert torch.allclose(p, torch.softmax(logits, -1))
    c.update(logits)
    assert torch.allclose(c.center, 0.5 * logits.mean(0, keepdim=True))
    with pytest.raises(ValueError, match="unknown teacher centering"):
        TeacherCentering(4, "bogus")


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "softmax"])
def test_dino_loss_equals_explicit_loop(centering):
    n_global, n_local, b, k = 2, 3, 5, 12
    student = torch.randn(n_global + n_local, b, k)
    teacher = torch.randn(n_global, b, k)
    loss_fn = DINOLoss(k, student_temp=0.1, centering=centering)
    targets = loss_fn.teacher_targets(teacher, teacher_temp=0.04)
    loss = loss_fn(student, targets)

    total, pairs = 0.0, 0
    for t in range(n_global):
        for s in range(n_global + n_local):
            if s == t:
                continue
            for i in range(b):
                log_q = torch.log_softmax(student[s, i] / 0.1, dim=-1)
                total += -(targets[t, i] * log_q).sum().item() / b
            pairs += 1
    assert loss.item() == pytest.approx(total / pairs, rel=1e-5)


def test_dino_loss_minimal_when_student_matches_teacher():
    k = 8
    targets = torch.softmax(torch.randn(2, 4, k) * 5, dim=-1)
    loss_fn = DINOLoss(k, student_temp=1.0)
    matched = torch.log(targets).flip(0)  # each student view reproduces the other teacher view
    entropy = -(targets * torch.log(targets)).sum(-1).mean()
    assert loss_fn(matched, targets).item() == pytest.approx(entropy.item(), rel=1e-5)
    assert loss_fn(torch.randn(2, 4, k), targets) > entropy


def test_dino_loss_shape_errors():
    loss_fn = DINOLoss(8)
    with pytest.raises(ValueError, match="must share"):
        loss_fn(torch.randn(3, 4, 8), torch.randn(2, 5, 8))


def test_ibot_uses_only_masked_patches():
    b, n, k = 3, 6, 10
    masks = torch.zeros(b, n, dtype=torch.bool)
    masks[0, [1, 4]] = True
    masks[2, [0]] = True
    student_all = torch.randn(b, n, k)
    teacher_all = torch.softmax(torch.randn(b, n, k), dim=-1)
    weights, n_masked = masked_patch_weights(masks)
    assert n_masked == 2
    assert torch.allclose(weights, torch.tensor([0.5, 0.5, 1.0]))
    loss_fn = iBOTPatchLoss(k, student_temp=0.1)
    loss = loss_fn(student_all[masks], teacher_all[masks], weights, n_masked)

    # Changing unmasked patches changes nothing.
    student_changed = student_all.clone()
    student_changed[~masks] = torch.randn(int((~masks).sum()), k) * 10
    assert loss_fn(student_changed[masks], teacher_all[masks], weights, n_masked).item() == pytest.approx(loss.item())

    expected = 0.0
    for i in range(b):
        idx = masks[i].nonzero().flatten()
        if len(idx) == 0:
            continue
        per = [-(teacher_all[i, p] * torch.log_softmax(student_all[i, p] / 0.1, -1)).sum() for p in idx]
        expected += torch.stack(per).mean().item()
    assert loss.item() == pytest.approx(expected / 2, rel=1e-5)


def test_ibot_empty_mask_is_zero_with_grad():
    loss_fn = iBOTPatchLoss(4)
    s = torch.zeros(0, 4, requires_grad=True)
    loss = loss_fn(s, torch.zeros(0, 4), torch.zeros(0), 0)
    assert loss.item() == 0.0
    loss.backward()


def test_koleo_prefers_spread_points():
    koleo = KoLeoLoss()
    angles = torch.linspace(0, 2 * math.pi, 9)[:-1]
    spread = torch.stack((angles.cos(), angles.sin()), dim=1)
    clustered = torch.stack((torch.ones(8), torch.linspace(0, 0.1, 8)), dim=1)
    assert koleo(spread) < koleo(clustered)
    # Known value: 8 points evenly on the circle, nearest-neighbour chord 2 sin(pi/8).
    assert koleo(spread).item() == pytest.approx(-math.log(2 * math.sin(math.pi / 8)), rel=1e-5)


def test_koleo_gradient_pushes_points_apart():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0]], requires_grad=True)
    loss = KoLeoLoss()(x)
    loss.backward()
    with torch.no_grad():
        y = x - 0.01 * x.grad
        before = (F.normalize(x[0], dim=0) - F.normalize(x[1], dim=0)).norm()
        after = (F.normalize(y[0], dim=0) - F.normalize(y[1], dim=0)).norm()
    assert after > before


def test_gram_loss_zero_for_identical_and_frobenius_form():
    gram = GramLoss()
    x = torch.randn(2, 7, 5)
    assert gram(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # Scale does not matter (features are normalised); the teacher may have another width.
    assert gram(x, 3 * x).item() == pytest.approx(0.0, abs=1e-7)
    y = torch.randn(2, 7, 9)
    expected = 0.0
    for b in range(2):
        xs, xg = F.normalize(x[b], dim=-1), F.normalize(y[b], dim=-1)
        expected += torch.linalg.matrix_norm(xs @ xs.T - xg @ xg.T, ord="fro").item() ** 2
    assert gram(x, y).item() == pytest.approx(expected / (2 * 7 * 7), rel=1e-5)


def test_gram_loss_no_teacher_gradient_and_shape_error():
    s = torch.randn(1, 4, 3, requires_grad=True)
    t = torch.randn(1, 4, 3, requires_grad=True)
    GramLoss()(s, t).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="same grid"):
        GramLoss()(torch.randn(1, 4, 3), torch.randn(1, 5, 3))

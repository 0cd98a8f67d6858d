"""Collectives (MedDINOv3Core.collectives): no-ops in one process; the multi-process runs are in test_distributed."""

from __future__ import annotations

import torch

from MedDINOv3Core.collectives import all_gather_with_grad, all_reduce_sum, world_size


def test_helpers_are_no_ops_in_one_process():
    assert world_size() == 1
    x = torch.ones(3, requires_grad=True)
    assert all_gather_with_grad(x) is x
    t = torch.tensor([2.0])
    assert all_reduce_sum(t) is t and t.item() == 2.0

"""The DINO/iBOT projection head: shapes, normalised bottleneck, weight-normalised prototypes."""

from __future__ import annotations

import pytest
import torch

from MedDINOv3Core.models.dino_head import DINOHead, HeadConfig


def test_head_shapes_and_cosine_logits():
    head = DINOHead(64, HeadConfig(out_dim=50, hidden_dim=32, bottleneck_dim=16, n_layers=3))
    x = torch.randn(2, 7, 64)
    logits = head(x)
    assert logits.shape == (2, 7, 50)
    assert logits.abs().max() <= 1.0 + 1e-5
    emb = head.embed(x)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 7), atol=1e-5)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in head.mlp)
    assert n_linear == 3


def test_prototypes_weight_normalised():
    head = DINOHead(8, HeadConfig(out_dim=5, hidden_dim=8, bottleneck_dim=4, n_layers=1))
    x = torch.randn(3, 8)
    before = head(x)
    with torch.no_grad():
        head.prototypes.mul_(7.0)  # only the direction of each prototype matters
    assert torch.allclose(head(x), before, atol=1e-6)
    assert head.last_layer_parameters()[0] is head.prototypes


def test_head_config_validation():
    with pytest.raises(ValueError, match="n_layers"):
        HeadConfig(n_layers=0)
    assert HeadConfig.from_dict({"out_dim": 10}).out_dim == 10
    with pytest.raises(ValueError, match="unknown option"):
        HeadConfig.from_dict({"bogus": 1})

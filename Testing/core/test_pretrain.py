"""Pretraining: schedules, parameter groups, checkpoints, exact resume, stages 2-3, export, a real-CT run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_fetch import DataUnavailable, fetch_cranium_ct, write_synthetic_ct  # noqa: E402

from MedDINOv3Core.train import schedules  # noqa: E402
from MedDINOv3Core.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from MedDINOv3Core.train.pretrain import (  # noqa: E402
    PretrainConfig,
    SSLModel,
    ema_update,
    export_backbone,
    load_pretrain_config,
    param_groups,
    run_pretraining,
    training_flops_per_image,
)

RECIPES = Path(__file__).resolve().parents[2] / "training" / "configs"


def tiny_config(tmp_path: Path, data: Path, **changes) -> PretrainConfig:
    base = {
        "data": [str(data)],
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "run"),
        "slice_size": 48,
        "head_out_dim": 64,
        "head_hidden_dim": 32,
        "head_bottleneck_dim": 16,
        "n_local": 2,
        "batch_size": 4,
        "total_steps": 6,
        "warmup_steps": 2,
        "freeze_last_layer_steps": 1,
        "teacher_temp_warmup_steps": 3,
        "checkpoint_every": 100,
        "log_every": 1,
    }
    base.update(changes)
    return load_pretrain_config(RECIPES / "tiny_cpu.yaml", base)


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny models here are overhead-bound: on a shared 2-core machine one thread is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    return write_synthetic_ct(tmp_path_factory.mktemp("ct"), n_volumes=2)


# ------------------------------------------------------------------------------------------------ schedules


def test_schedules_known_values():
    assert schedules.cosine(0, 100, 1.0, 0.0) == 1.0
    assert schedules.cosine(50, 100, 1.0, 0.0) == pytest.approx(0.5)
    assert schedules.cosine(100, 100, 1.0, 0.0) == 0.0
    assert schedules.cosine(500, 100, 1.0, 0.0) == 0.0
    assert schedules.warmup_cosine(0, 110, 1.0, 0.1, 10) == 0.0
    assert schedules.warmup_cosine(5, 110, 1.0, 0.1, 10) == pytest.approx(0.5)
    assert schedules.warmup_cosine(10, 110, 1.0, 0.1, 10) == pytest.approx(1.0)
    assert schedules.warmup_cosine(110, 110, 1.0, 0.1, 10) == pytest.approx(0.1)
    assert [schedules.warmup_linear(s, 12, 1.0, 0.0, 2) for s in (0, 1, 2, 7, 12, 20)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    )
    assert schedules.warmup_linear(3, 10, 2.0, 0.0, 0) == pytest.approx(1.4)  # no warm-up: the plain linear decay
    assert schedules.teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert schedules.teacher_temperature(99, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert schedules.ema_momentum(0, 10, 0.992) == pytest.approx(0.992)
    assert schedules.ema_momentum(10, 10, 0.992) == pytest.approx(1.0)
    assert schedules.weight_decay(5, 10, 0.04, 0.4) == pytest.approx(0.22)
    assert schedules.last_layer_frozen(0, 1) and not schedules.last_layer_frozen(1, 1)


def test_param_groups_layer_decay_patch_embed_and_no_decay(tiny_vit_config):
    from MedDINOv3Core.models.dino_head import HeadConfig

    model = SSLModel(tiny_vit_config, HeadConfig(16, 8, 4, 2))
    groups = param_groups(model, layer_decay=0.5, patch_embed_lr_mult=0.2)
    where = {id(p): g for g in groups for p in g["params"]}
    depth = tiny_vit_config.depth
    assert where[id(model.backbone.patch_embed.proj.weight)]["lr_mult"] == pytest.approx(0.2 * 0.5 ** (depth + 1))
    assert where[id(model.backbone.blocks[0].attn.qkv.weight)]["lr_mult"] == pytest.approx(0.5**depth)
    assert where[id(model.backbone.blocks[-1].mlp.fc1.weight)]["lr_mult"] == pytest.approx(0.5)
    assert where[id(model.dino_head.mlp[0].weight)]["lr_mult"] == 1.0
    assert where[id(model.backbone.blocks[0].norm1.weight)]["wd_mult"] == 0.0
    assert where[id(model.backbone.blocks[0].attn.qkv.bias)]["wd_mult"] == 0.0
    assert where[id(model.backbone.cls_token)]["wd_mult"] == 0.0
    assert where[id(model.backbone.blocks[0].mlp.fc1.weight)]["wd_mult"] == 1.0
    assert where[id(model.ibot_head.prototypes)]["last_layer"]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_ema_update():
    t, s = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * t.weight.detach() + 0.1 * s.weight.detach()
    ema_update(t, s, 0.9)
    assert torch.allclose(t.weight, expected)


def test_checkpoint_atomic_and_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "c" / "x.pt", {"a": torch.ones(2), "step": 3})
    assert load_checkpoint(path)["step"] == 3
    assert not [p for p in path.parent.iterdir() if p.name != "x.pt"]  # no temporary left over
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable pretraining checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        PretrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="gram_teacher"):
        run_pretraining(PretrainConfig(gram_weight=2.0, data=("x",), output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="no pretraining data"):
        run_pretraining(PretrainConfig(output_dir=str(tmp_path), device="cpu"))
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_pretrain_config(tmp_path / "nope.yaml")


def test_flops_count_matches_published_vit_b():
    from MedDINOv3Core.models.vit import vit_config

    # ViT-B/16 at 224 px: ~17.6 GMACs = 35.1 GFLOPs per forward (197 tokens; ours has 4 registers more).
    # One global crop, no local crops: student forward + backward (3x) + teacher forward = 4 forwards.
    cfg = PretrainConfig(n_global=1, n_local=0)
    assert training_flops_per_image(cfg, vit_config("vit_base"), 224, 96) == pytest.approx(4 * 35.1e9, rel=0.04)


# ------------------------------------------------------------------------------------------------ training


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    return {**{f"s.{k}": v for k, v in ckpt["student"].items()}, **{f"t.{k}": v for k, v in ckpt["teacher"].items()}}


def test_resume_is_exact(tmp_path, synthetic_data):
    straight = run_pretraining(tiny_config(tmp_path / "a", synthetic_data))
    assert straight.step == 6 and len(straight.history) == 6
    # The same run, interrupted after 3 steps (a cancel token set by the progress callback), then resumed.
    from MedDINOv3Core.progress import Cancelled, CancelToken

    token = CancelToken()

    def stop_after_3(stage, done, total, message=""):
        if stage == "pretrain" and done == 3:
            token.set()

    cfg = tiny_config(tmp_path / "c", synthetic_data, checkpoint_every=3, keep_every=3)
    with pytest.raises(Cancelled):
        run_pretraining(cfg, progress=stop_after_3, cancel=token)
    assert load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "last.pt")["step"] == 3
    assert load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "step_0000003.pt")["step"] == 3
    resumed = run_pretraining(cfg)
    assert [h["step"] for h in resumed.history] == [3, 4, 5]
    a = _weights(straight.checkpoint)
    c = _weights(resumed.checkpoint)
    assert a.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], c[k]), k
    assert [h["total"] for h in straight.history[3:]] == [h["total"] for h in resumed.history]
    # Optimizer state and loss history match too; metrics were logged as JSON lines.
    lines = (Path(cfg.output_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2, 3, 4, 5]


def test_stage2_gram_and_stage3_from_stage2_and_export(tmp_path, synthetic_data):
    from MedDINOv3Core.weights import load_model

    s1 = run_pretraining(tiny_config(tmp_path / "s1", synthetic_data, total_steps=2))
    s2_cfg = tiny_config(
        tmp_path / "s2",
        synthetic_data,
        total_steps=2,
        gram_weight=2.0,
        init_from=str(s1.checkpoint),
        gram_teacher=str(s1.checkpoint),
    )
    s2 = run_pretraining(s2_cfg)
    assert all("gram" in h and math.isfinite(h["gram"]) for h in s2.history)
    for h in s2.history:  # L = L_DINO + L_iBOT + 0.1 L_KoLeo + 2 L_Gram
        assert h["total"] == pytest.approx(h["dino"] + h["ibot"] + 0.1 * h["koleo"] + 2.0 * h["gram"], rel=1e-5)
    assert "gram" not in s1.history[0]
    # Stage 3 starts student AND teacher from stage 2, with mixed crop resolutions.
    s3_cfg = tiny_config(
        tmp_path / "s3",
        synthetic_data,
        total_steps=1,
        lr=0.0,
        min_lr=0.0,
        momentum_start=1.0,
        global_sizes=[32, 48],
        local_sizes=[16, 32],
        gram_weight=2.0,
        init_from=str(s2.checkpoint),
        gram_teacher=str(s1.checkpoint),
    )
    s3 = run_pretraining(s3_cfg)
    before, after = load_checkpoint(s2.checkpoint), load_checkpoint(s3.checkpoint)
    for k, v in before["teacher"].items():
        assert torch.equal(v, after["teacher"][k]), k  # momentum 1: the teacher is exactly stage 2's
    card_dir = export_backbone(s3.checkpoint, tmp_path / "card", name="tiny")
    model, card = load_model(card_dir)
    assert card.task == "backbone" and card.provenance["step"] == 1
    assert card.preprocessing["scheme"] == "ct_clip_zscore" and card.preprocessing["clip_low"] == -1000.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, after["teacher"][f"backbone.{k}"])
    with pytest.raises(ValueError, match="not a MedDINOv3 pretraining checkpoint"):
        save_checkpoint(tmp_path / "other.pt", {"x": torch.zeros(1)})
        export_backbone(tmp_path / "other.pt", tmp_path / "card2")


@pytest.mark.slow
def test_30_steps_on_real_ct_lower_the_loss(tmp_path):
    try:
        ct = fetch_cranium_ct()
    except DataUnavailable as exc:
        pytest.skip(f"real head CT unavailable (needs apt-get download invesalius-examples): {exc}")
    cfg = load_pretrain_config(
        RECIPES / "tiny_cpu.yaml",
        {"data": [str(ct)], "output_dir": str(tmp_path / "run"), "checkpoint_every": 1000, "log_every": 10},
    )
    assert cfg.total_steps == 30
    result = run_pretraining(cfg)
    totals = [h["total"] for h in result.history]
    assert len(totals) == 30 and all(math.isfinite(t) for t in totals)
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < first - 0.1, totals


def test_init_from_upstream_checkpoint_and_model_card(tmp_path, tiny_vit_config):
    from MedDINOv3Core.card import ModelCard
    from MedDINOv3Core.models.vit import VisionTransformer
    from MedDINOv3Core.train.pretrain import _Run
    from MedDINOv3Core.weights import save_model_card

    source = VisionTransformer(tiny_vit_config)
    torch.save(source.state_dict(), tmp_path / "dinov3_tiny.pth")  # DINOv3 official flat key names
    save_model_card(tmp_path / "card", ModelCard(task="backbone", backbone=tiny_vit_config), source)
    for init in (tmp_path / "dinov3_tiny.pth", tmp_path / "card"):
        cfg = PretrainConfig(init_from=str(init), head_out_dim=16, head_hidden_dim=8, head_bottleneck_dim=4)
        run = _Run(cfg, torch.device("cpu"))
        assert run.backbone_config.embed_dim == tiny_vit_config.embed_dim
        for k, v in source.state_dict().items():
            assert torch.equal(run.student.backbone.state_dict()[k], v), k
            assert torch.equal(run.teacher.backbone.state_dict()[k], v), k

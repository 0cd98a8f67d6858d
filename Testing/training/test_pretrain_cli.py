"""`python -m training pretrain` and `export-backbone`: JSON progress, outputs, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_fetch import write_synthetic_ct  # noqa: E402

from training.cli import main  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_pretrain_then_export_backbone(tmp_path, capsys):
    data = write_synthetic_ct(tmp_path / "ct", n_volumes=1)
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--config",
        "tiny_cpu",
        "--progress",
        "json",
        f"data={data}",
        f"output_dir={out}",
        "total_steps=2",
        "batch_size=2",
        "n_local=1",
        "slice_size=32",
        "head_out_dim=32",
    ]
    assert main(args) == 0
    lines = _json_lines(capsys.readouterr().out)
    stages = {line["stage"] for line in lines}
    assert {"slice cache", "pretrain", "done"} <= stages
    steps = [line["done"] for line in lines if line["stage"] == "pretrain"]
    assert steps == [1, 2] and lines[-1]["total"] == 2
    ckpt = Path(lines[-1]["checkpoint"])
    assert ckpt == out / "checkpoints" / "last.pt" and ckpt.is_file()
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert saved["total_steps"] == 2 and saved["backbone"] == "vit_tiny"

    card = tmp_path / "card"
    assert main(["export-backbone", str(ckpt), "--output", str(card), "--name", "tiny", "--progress", "json"]) == 0
    done = _json_lines(capsys.readouterr().out)[-1]
    assert done["path"] == str(card.resolve())
    config = json.loads((card / "config.json").read_text(encoding="utf-8"))
    assert config["task"] == "backbone" and config["name"] == "tiny"
    assert (card / "model.safetensors").is_file() and (card / "pretrain_config.json").is_file()


def test_print_config_applies_overrides(capsys):
    assert main(["pretrain", "--config", "stage3", "--print-config", "lr=1e-5", "global_sizes=[512,640]"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["lr"] == 1e-5 and cfg["global_sizes"] == [512, 640] and cfg["gram_weight"] == 2.0


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--config", "tiny_cpu", "learning_rate=1"])
    assert exc.value.code == 2 and "unknown option" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--config", "nope"])
    assert exc.value.code == 2 and "unknown recipe" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--config", "tiny_cpu"])
    assert exc.value.code == 2 and "data=" in capsys.readouterr().err


def test_failures_exit_1(tmp_path, capsys):
    assert main(["pretrain", "--config", "tiny_cpu", f"data={tmp_path / 'missing'}", f"output_dir={tmp_path}"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["export-backbone", str(tmp_path / "none.pt"), "--output", str(tmp_path / "c")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err

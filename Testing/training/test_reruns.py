"""The rerun rule of every command that writes output (training/outputs.py, OUTPUT_RULE): an existing output file, or
an output folder that already holds files, is refused with one line unless --overwrite or --resume (finetune,
pretrain); --overwrite replaces only the command's own earlier output; each command's --help states the rule. Here:
the help of every writer, demo, finetune, pretrain; the other commands in test_reruns_outputs.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.common import CommandError, UsageError
from training.outputs import prepare_output_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_fetch import write_synthetic_ct  # noqa: E402
from test_finetune_cli import SMALL, TINY, write_phantom_dataset  # noqa: E402

DEMO = ["demo", "--shape", "16", "64", "64", "--device", "cpu", "--progress", "none"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


WRITERS = ["demo", "phantom", "predict", "explore", "evaluate", "export-rtstruct", "export-backbone", "bench"]


@pytest.mark.parametrize(
    "command,flags", [(c, "--overwrite") for c in WRITERS] + [("finetune", "--resume"), ("pretrain", "--resume")]
)
def test_every_help_states_the_rule(command, flags, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "never silently replaced" in text and flags in text and "--overwrite" in text
    assert "--overwrite replace this command's earlier output" in text  # the option exists


def test_demo_rerun_is_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main([*DEMO, "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    capsys.readouterr()
    assert main([*DEMO, "--out", str(out)]) == 1
    assert "already holds a demo output; add --overwrite" in _error(capsys)
    (out / ".summary.json.tmp-x").write_text("a leftover of an interrupted atomic write")
    assert main([*DEMO, "--out", str(out), "--overwrite", "--seed", "7"]) == 0
    second = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert second["click"] != first["click"] or second["dice"] != first["dice"]  # a new phantom, not the old files
    assert not (out / ".summary.json.tmp-x").exists()


def test_demo_keeps_user_files_safe(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for flag in ([], ["--overwrite"]):
        assert main([*DEMO, "--out", str(mine), *flag]) == 1
        assert "not a demo output" in _error(capsys)
    # a demo folder where the user added a file: --overwrite refuses to delete it
    out = tmp_path / "demo"
    assert main([*DEMO, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*DEMO, "--out", str(out), "--overwrite"]) == 1
    assert "also holds files demo did not write (notes.txt)" in _error(capsys)
    assert (mine / "notes.txt").read_text() == "mine" and (out / "notes.txt").read_text() == "mine"
    assert (out / "summary.json").is_file()
    # an empty existing folder is fine
    (tmp_path / "empty").mkdir()
    assert main([*DEMO, "--out", str(tmp_path / "empty")]) == 0


def test_finetune_rerun_refused_resumed_overwritten(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "ds", (0, 1), **SMALL)
    out = tmp_path / "run"
    args = ["finetune", "--config", "finetune_tiny_cpu", "--data", str(data), "--out", str(out), "--progress", "none"]
    tiny = [t for t in TINY if not t.startswith("epochs=")] + ["iterations_per_epoch=1", "device=cpu"]
    assert main([*args, *tiny, "epochs=1"]) == 0
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, *tiny, "epochs=1"]) == 1  # before: silently trained over the run
    assert "already holds a finetune output; add --resume to continue it or --overwrite" in _error(capsys)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == before
    assert main([*args, *tiny, "epochs=2", "--resume"]) == 0
    assert len(json.loads((out / "history.json").read_text(encoding="utf-8"))) == 2
    assert main([*args, *tiny, "epochs=1", "--overwrite"]) == 0
    assert len(json.loads((out / "history.json").read_text(encoding="utf-8"))) == 1
    with pytest.raises(SystemExit) as exc:
        main([*args, *tiny, "--resume", "--overwrite"])
    assert exc.value.code == 2


def test_pretrain_rerun_refused_resumed_overwritten(tmp_path, capsys, monkeypatch):
    data = write_synthetic_ct(tmp_path / "ct", n_volumes=1)
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny_cpu", "--progress", "json", f"data={data}", f"output_dir={out}"]
    args += ["batch_size=2", "n_local=1", "slice_size=32", "head_out_dim=32", "device=cpu"]

    def steps() -> list[int]:
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
        return [x["done"] for x in lines if x["stage"] == "pretrain"]

    assert main([*args, "total_steps=1"]) == 0
    assert steps() == [1]
    assert main([*args, "total_steps=2"]) == 1  # before: resumed without being asked
    assert "already holds a pretrain output; add --resume to continue it or --overwrite" in _error(capsys)
    assert main([*args, "total_steps=2", "--resume"]) == 0
    assert steps() == [2]  # continued from step 1
    assert main([*args, "total_steps=1", "--overwrite"]) == 0
    assert steps() == [1]
    # torchrun's restart of a failed worker group resumes without --resume
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main([*args, "total_steps=2"]) == 0
    assert steps() == [2]


def test_prepare_output_folder_rules(tmp_path):
    kw = {"command": "x", "owned": ("a.txt", "d"), "markers": ("a.txt",)}
    assert prepare_output_folder(tmp_path / "new", **kw) == "new"
    with pytest.raises(CommandError, match="holds no x run"):
        prepare_output_folder(tmp_path / "new", resume=True, resumable=True, **kw)
    with pytest.raises(UsageError):
        prepare_output_folder(tmp_path, resume=True, overwrite=True, resumable=True, **kw)
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is a file; give a folder"):
        prepare_output_folder(tmp_path / "f", **kw)
    run = tmp_path / "run"
    (run / "d").mkdir(parents=True)
    (run / "a.txt").write_text("")
    with pytest.raises(CommandError, match="add --overwrite to replace it"):
        prepare_output_folder(run, **kw)
    assert prepare_output_folder(run, resume=True, resumable=True, **kw) == "resume"
    assert prepare_output_folder(run, overwrite=True, **kw) == "overwrite"
    assert not any(run.iterdir())

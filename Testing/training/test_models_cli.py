"""`python -m training models` and `python -m training download`: offline in-process against a hand-made cache, and
one real download from the loopback Hub in a subprocess (progress as JSON lines)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

from fake_hub import FakeHub, FakeRepo, hand_made_cache, hub_env, run_client, teacher_checkpoint_bytes  # noqa: E402

from training.cli import main  # noqa: E402

COMMIT = "b" * 40


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> bytes:
    return teacher_checkpoint_bytes(tmp_path_factory.mktemp("teacher"))


@pytest.fixture
def registry(tmp_path) -> Path:
    common = {"files": ["model.pth"], "weights": "model.pth", "format": "meddinov3_teacher", "task": "backbone"}
    models = {
        "tiny": {**common, "repo_id": "test/tiny", "license": "apache-2.0", "description": "tiny teacher",
                 "architecture": {"num_heads": 2}},
        "locked": {**common, "repo_id": "test/locked", "license": "dinov3-license", "gated": True,
                   "description": "gated teacher"},
    }  # fmt: skip
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"format_version": 1, "models": models}))
    return path


def test_models_lists_licence_gated_and_cache_state(tmp_path, registry, teacher, capsys):
    cache = tmp_path / "hub"
    assert main(["models", "--registry", str(registry), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("tiny", "locked"))}
    assert lines["tiny"].split()[1:4] == ["backbone", "apache-2.0", "no"]
    assert "dinov3-license (gated)" in lines["locked"] and "test/locked@main" in lines["locked"]
    assert "accept the licence" in out

    hand_made_cache(cache, "test/tiny", {"model.pth": teacher}, COMMIT)
    assert main(["models", "--registry", str(registry), "--cache-dir", str(cache), "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["tiny"]["cached"] is True and rows["tiny"]["card"] is None and rows["locked"]["cached"] is False
    assert rows["locked"]["gated"] is True and rows["locked"]["license"] == "dinov3-license"

    assert main(["download", "tiny", "--registry", str(registry), "--cache-dir", str(cache), "--offline",
                 "--progress", "json"]) == 0  # fmt: skip
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    stages = [e["stage"] for e in events]
    assert "verify model.pth" in stages and "convert" in stages and stages[-1] == "done"
    card = Path(events[-1]["path"])
    assert (card / "config.json").is_file() and (card / "model.safetensors").is_file()
    assert main(["models", "--registry", str(registry), "--cache-dir", str(cache), "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["tiny"]["card"] == str(card)


def test_models_command_lists_the_bundled_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "meddinov3-phantom-tiny" in out and "bundled" in out


def test_download_failure_is_one_line_with_exit_code_1(tmp_path, registry, capsys):
    code = main(["download", "tiny", "--registry", str(registry), "--cache-dir", str(tmp_path), "--offline"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: model.pth of test/tiny@main is not in the Hugging Face cache")
    # advice that holds for every command (some have no --cache-dir or --model: issue 17's audit)
    assert "then set HF_HUB_CACHE=DIR" in err and "give that folder instead of the model name" in err
    assert "pass --cache-dir" not in err and "pass --model" not in err
    assert main(["download", "nothing-like-this", "--registry", str(registry), "--cache-dir", str(tmp_path)]) == 1
    assert "not a registry name (locked, tiny)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["download"])
    assert exc.value.code == 2


def test_download_from_the_loopback_hub_with_json_progress(tmp_path, registry, teacher):
    with FakeHub({"test/tiny": FakeRepo({"model.pth": teacher}, commit=COMMIT)}) as hub:
        proc = run_client(
            "from training.cli import main; raise SystemExit(main())",
            hub_env(hub, tmp_path, registry),
            args=("download", "tiny", "--progress", "json"),
        )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    downloads = [e for e in events if e["stage"] == "download model.pth"]
    assert downloads[-1]["done"] == downloads[-1]["total"] == len(teacher)
    assert events[-1]["stage"] == "done" and Path(events[-1]["path"]).is_dir()
    assert [r[1] for r in hub.requests] == ["HEAD", "GET"]

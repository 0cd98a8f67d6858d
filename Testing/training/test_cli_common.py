"""The CLI's shared pieces: key=value overrides, progress lines, exit codes."""

from __future__ import annotations

import json

import pytest

from training.cli import main
from training.common import Progress, UsageError, parse_overrides


def test_overrides_parse_yaml_scalars_and_numeric_strings():
    got = parse_overrides(["lr=1e-5", "sizes=[224,256]", "name=nan", "x=[1e-3, a]", "flag=true", "empty="])
    assert got == {"lr": 1e-5, "sizes": [224, 256], "name": "nan", "x": [0.001, "a"], "flag": True, "empty": ""}
    with pytest.raises(UsageError, match="not of the form key=value"):
        parse_overrides(["lr"])


def test_json_progress_lines(capsys):
    with Progress("json") as progress:
        progress("predict", 1, 4, "slice 1")
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == {"stage": "predict", "done": 1, "total": 4, "message": "slice 1"}


def test_exit_codes(capsys):
    assert main([]) == 2  # no command: help, bad usage
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("predict", "finetune", "pretrain", "explore", "export-rtstruct", "evaluate", "demo", "models"):
        assert command in out


def test_every_command_has_help_with_examples(capsys):
    from training.cli import _command_modules

    for module in _command_modules():
        assert module.HELP and "python -m training" in (module.EXAMPLES or ""), module.NAME
        with pytest.raises(SystemExit) as exc:
            main([module.NAME, "--help"])
        assert exc.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_progress_bar_keeps_a_stage_clock_across_alternating_stages(monkeypatch, capsys):
    """finetune and validate alternate every epoch: the finetune bar's rate and ETA cover the whole run, not the time
    since the last validation (before: 788 steps done '3 s' ago at 253 it/s, ETA 20 s with 40 minutes left)."""
    import tqdm.std

    clock = [100.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    with Progress("bar") as progress:
        progress("finetune", 0, 100)
        clock[0] += 10.0
        progress("finetune", 50, 100)
        progress("validate", 1, 1)
        clock[0] += 2.0
        progress("finetune", 60, 100)
        meter = progress._bar.format_dict
        assert meter["elapsed"] == pytest.approx(12.0)
        assert (meter["n"] - meter["initial"]) / meter["elapsed"] == pytest.approx(5.0)  # 60 steps in 12 s
        progress("write", 1, 1)
        clock[0] += 3.0
        progress("finetune", 0, 100)  # the same stage again from the start (e.g. the next case): a fresh clock
        assert progress._bar.format_dict["elapsed"] == pytest.approx(0.0)
    assert "finetune" in capsys.readouterr().err


def test_overrides_after_options_are_overrides_and_unknown_options_still_refused(capsys):
    """`finetune --config R epochs=1 --data D --out O batch_size=3`: argparse ends the override list at --data, so
    batch_size=3 came back as an unrecognised argument; now it is an override like the others, in order."""
    argv = ["finetune", "--config", "finetune_tiny_cpu", "epochs=1", "--data", "d", "--out", "o", "batch_size=3"]
    assert main([*argv, "epochs=2", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["batch_size"] == 3 and config["epochs"] == 2  # the last one of a key wins
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["models", "a=1"])  # a command without overrides
    assert exc.value.code == 2 and "unrecognized arguments: a=1" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`python -m training models | head -1`: the reader goes away; no 'error: [Errno 32] Broken pipe'."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "training", "models"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command writes its table
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("override", ["output_dir=runs/a", "output=runs/a"])
def test_an_option_wins_over_an_override_of_its_key_in_either_spelling(override, capsys):
    """`finetune --out runs/b output_dir=runs/a` was refused ("'output' is the old spelling of 'output_dir'; give one
    of them, not both"): --out was stored under the old key."""
    argv = ["finetune", "--config", "finetune_tiny_cpu", override, "init=random", "--out", "runs/b"]
    assert main([*argv, "--init", "meddinov3-phantom-tiny", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["output_dir"] == "runs/b" and config["init_from"] == "meddinov3-phantom-tiny"

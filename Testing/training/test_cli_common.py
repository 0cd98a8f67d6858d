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

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

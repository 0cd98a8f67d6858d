"""Entry point of `python -m training`: one subcommand per module in training/commands/.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Exit codes:
0 success, 2 bad usage (argparse), 1 a failure, reported as one line naming what to do (the traceback only with
``--debug``), 130 Ctrl+C, 141 when stdout's reader went away (``| head``), 143 SIGTERM (raised as
KeyboardInterrupt, so both clean up the same way).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import signal
import sys
import threading
from collections.abc import Sequence

import training.commands as commands_pkg
from training.common import CommandError, UsageError

log = logging.getLogger("training")


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"training.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="MedDINOv3 command line: pretraining, finetuning, evaluation, prediction, exploration, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `python -m training COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            epilog=getattr(module, "EXAMPLES", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _is_override(token: str) -> bool:
    return "=" in token and not token.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if isinstance(getattr(args, "overrides", None), list):  # KEY=VALUE after an option (argparse ends the list there)
        args.overrides += [t for t in extra if _is_override(t)]
        extra = [t for t in extra if not _is_override(t)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    progress = getattr(args, "progress", None)
    # --progress none: only the result and the problems (warnings, errors); --debug: everything
    level = logging.DEBUG if args.debug else logging.WARNING if progress == "none" else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(level)  # also when logging was configured before (in-process calls)
    if not getattr(args, "_run", None):
        root.setLevel(previous_level)
        parser.print_help()
        return 2
    previous = _install_sigterm()
    try:
        with _console(progress):
            return int(args._run(args) or 0)
    except UsageError as exc:
        parser.exit(2, f"error: {exc}\n")
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (`... | head`): stop quietly, as shell tools do
        return 141
    except (CommandError, OSError, ValueError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        root.setLevel(previous_level)
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of it raises no second BrokenPipeError."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's captured stdout)
        pass


def _console(progress: str | None):
    """Around a command that shows a tqdm bar: log lines are written through tqdm, so they never break the bar."""
    import contextlib

    if progress != "bar":
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger()])


class Terminated(KeyboardInterrupt):
    """SIGTERM (the Slicer job runner's Cancel, ``kill``): raised like Ctrl+C, so the same cleanup runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _install_sigterm():
    """Make SIGTERM raise Terminated in the main thread; returns the previous handler (None: not installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)
